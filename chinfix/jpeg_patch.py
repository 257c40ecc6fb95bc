"""JPEG in, JPEG out, with every DCT block the edit did not touch kept as it was.

A JPEG is a grid of MCUs (minimum coded units: 8x8 luma blocks times the largest sampling factor, with their
chroma blocks). Decoding, editing and encoding the whole photo again would requantise every block; instead the
input's quantised coefficients are kept and only the MCUs holding a changed pixel are replaced, by those of the
edited pixels encoded with the input's own quantisation tables and sampling factors. libjpeg does all the coding
(through `jpeglib`): reading and writing coefficients, and the forward DCT of the edited pixels.

Torch-free: the worker calls it while encoding a result.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import jpeglib
import numpy as np

STRIPPED_MARKERS = {"JPEG_APP1", "JPEG_APP13"}
"""APP1 holds EXIF and XMP, APP13 Photoshop's IPTC block: what `strip_metadata` drops. APP2 (ICC) stays."""
WRITER_OWN_MARKERS = {"JPEG_APP0"}
"""libjpeg writes its own JFIF header; the input's is dropped so the file has one."""


class NotPatchable(Exception):
    """The input cannot be patched block-wise (not a 3-channel YCbCr JPEG); the caller encodes it whole."""


@dataclass(frozen=True)
class PatchedJpeg:
    data: bytes
    changed_mcus: int
    total_mcus: int
    mcu_size: tuple[int, int]
    """(height, width) of one MCU in stored pixels."""


def patch_jpeg(
    original: bytes, before_stored_rgb: np.ndarray, edited_stored_rgb: np.ndarray, strip_metadata: bool = False
) -> PatchedJpeg:
    """The `original` JPEG file with the MCUs where `edited_stored_rgb` differs from `before_stored_rgb` (the
    decode the edit started from) replaced. Both HxWx3 uint8 RGB in the file's stored pixel layout, i.e. before
    any EXIF orientation. The decode must be the edit's own: decoders differ by a level here and there.

    The original's quantisation tables, sampling factors and markers (EXIF with its orientation, ICC profile)
    are kept; with `strip_metadata` the EXIF/XMP/IPTC markers are dropped."""
    with tempfile.TemporaryDirectory(prefix="chinfix-jpeg-") as scratch:
        folder = Path(scratch)
        (folder / "original.jpg").write_bytes(original)
        source = jpeglib.read_dct(str(folder / "original.jpg"))
        _require_patchable(source, edited_stored_rgb)
        changed_mcus = changed_mcu_grid(before_stored_rgb, edited_stored_rgb, mcu_size_of(source))

        reencoded = jpeglib.from_spatial(np.ascontiguousarray(edited_stored_rgb))
        reencoded.samp_factor = source.samp_factor
        reencoded.write_spatial(str(folder / "edited.jpg"), qt=source.qt, quant_tbl_no=source.quant_tbl_no)
        edited = jpeglib.read_dct(str(folder / "edited.jpg"))

        for component, (vertical, horizontal) in zip(("Y", "Cb", "Cr"), source.samp_factor, strict=True):
            kept = getattr(source, component)
            replaced = blocks_of_mcus(changed_mcus, int(vertical), int(horizontal), kept.shape[:2])
            kept[replaced] = getattr(edited, component)[replaced]
        source.markers = [marker for marker in source.markers if _keeps(marker, strip_metadata)]
        source.write_dct(str(folder / "patched.jpg"))
        return PatchedJpeg(
            data=(folder / "patched.jpg").read_bytes(),
            changed_mcus=int(changed_mcus.sum()),
            total_mcus=int(changed_mcus.size),
            mcu_size=mcu_size_of(source),
        )


def mcu_size_of(jpeg: jpeglib.DCTJPEG) -> tuple[int, int]:
    """(height, width) of one MCU in pixels: 8 times the largest vertical and horizontal sampling factors."""
    factors = np.asarray(jpeg.samp_factor)
    return 8 * int(factors[:, 0].max()), 8 * int(factors[:, 1].max())


def changed_mcu_grid(before_rgb: np.ndarray, after_rgb: np.ndarray, mcu_size: tuple[int, int]) -> np.ndarray:
    """RxC bool: the MCUs (rows x columns, covering the image) holding a pixel that differs."""
    changed = (before_rgb != after_rgb).any(axis=2)
    mcu_height, mcu_width = mcu_size
    rows, cols = -(-changed.shape[0] // mcu_height), -(-changed.shape[1] // mcu_width)
    padded = np.zeros((rows * mcu_height, cols * mcu_width), bool)
    padded[: changed.shape[0], : changed.shape[1]] = changed
    return padded.reshape(rows, mcu_height, cols, mcu_width).any(axis=(1, 3))


def blocks_of_mcus(mcus: np.ndarray, vertical: int, horizontal: int, block_grid: tuple[int, int]) -> np.ndarray:
    """BrxBc bool: a component's 8x8 blocks inside the marked MCUs (it has vertical x horizontal blocks per MCU;
    its block grid stops at the image's edge, so the last MCU row/column may hold fewer)."""
    blocks = np.repeat(np.repeat(mcus, vertical, axis=0), horizontal, axis=1)
    return blocks[: block_grid[0], : block_grid[1]]


def _require_patchable(jpeg: jpeglib.DCTJPEG, edited_stored_rgb: np.ndarray) -> None:
    if jpeg.num_components != 3 or str(jpeg.jpeg_color_space) != "JCS_YCbCr":
        raise NotPatchable(f"a {jpeg.num_components}-component {jpeg.jpeg_color_space} JPEG")
    if edited_stored_rgb.shape != (jpeg.height, jpeg.width, 3):
        raise NotPatchable(f"the edit is {edited_stored_rgb.shape}, the JPEG {jpeg.height}x{jpeg.width}")


def _keeps(marker: jpeglib.Marker, strip_metadata: bool) -> bool:
    kind = str(marker.type)
    if kind in WRITER_OWN_MARKERS:
        return False
    return not (strip_metadata and kind in STRIPPED_MARKERS)

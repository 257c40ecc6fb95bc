"""Ready-made latent codes: what `read_code` accepts and refuses, and how `fit_code` matches a generator."""

from __future__ import annotations

import io
import pickle
import zipfile
import numpy as np
import pytest

from chinfix.codes import MAX_CODE_BYTES, fit_code, read_code
from chinfix.errors import ChinfixError
from tests.service_harness import SEED_DATA

SEED_LATENTS = SEED_DATA / "latents"


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.skipif(not SEED_LATENTS.is_dir(), reason="the seed latents are not beside the checkout")
def test_the_seeds_projector_codes_are_accepted_as_they_are():
    for path in sorted(SEED_LATENTS.glob("*_wp.npy")):
        code = read_code(path.read_bytes())
        assert code.shape == (1, 18, 512) and code.dtype == np.float32
        np.testing.assert_array_equal(code, np.load(path))


def test_w_and_wplus_codes_of_any_float_type_become_float32():
    w = np.random.default_rng(0).standard_normal((1, 512))
    assert read_code(npy_bytes(w)).dtype == np.float32
    np.testing.assert_allclose(read_code(npy_bytes(w)), w.astype(np.float32))
    assert read_code(npy_bytes(np.zeros((1, 7, 32), np.float16))).shape == (1, 7, 32)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "not a readable .npy"),
        (b"definitely not numpy", "not a readable .npy"),
        (npy_bytes(np.zeros((18, 512), np.float32)), "1 x num_ws x w_dim"),
        (npy_bytes(np.zeros((2, 512), np.float32)), "not 2x512"),
        (npy_bytes(np.zeros((1, 18, 512, 1), np.float32)), "1 x num_ws x w_dim"),
        (npy_bytes(np.zeros((1, 0), np.float32)), "1 x num_ws x w_dim"),
        (npy_bytes(np.zeros((1, 512), np.int64)), "floating-point"),
        (npy_bytes(np.full((1, 512), np.nan, np.float32)), "not finite"),
        (npy_bytes(np.array([[np.inf] + [0.0] * 511])), "not finite"),
        (npy_bytes(np.full((1, 512), 1e300)), "not finite"),
        (b"\x00" * (MAX_CODE_BYTES + 1), "larger than"),
    ],
    ids=["empty", "garbage", "no-batch-axis", "two-codes", "four-axes", "empty-code", "integers", "nan", "inf",
         "beyond-float32", "too-large"],
)  # fmt: skip
def test_bad_codes_are_invalid_code_with_a_reason(data: bytes, words: str):
    with pytest.raises(ChinfixError) as raised:
        read_code(data)
    assert raised.value.code == "invalid_code" and words in raised.value.message


def test_pickled_objects_are_never_loaded():
    class Exploit:
        def __reduce__(self):
            return (print, ("pickle code ran",))

    objects = np.empty((1, 1), dtype=object)
    objects[0, 0] = Exploit()
    buffer = io.BytesIO()
    np.save(buffer, objects, allow_pickle=True)
    for data in (buffer.getvalue(), pickle.dumps(np.zeros((1, 512), np.float32))):
        with pytest.raises(ChinfixError, match="not a readable .npy"):
            read_code(data)


def test_an_npz_archive_is_refused():
    buffer = io.BytesIO()
    np.savez(buffer, code=np.zeros((1, 512), np.float32))
    assert zipfile.is_zipfile(io.BytesIO(buffer.getvalue()))
    with pytest.raises(ChinfixError, match="npz"):
        read_code(buffer.getvalue())


def test_fit_code_tiles_a_w_code_and_checks_the_generators_shape():
    w = np.arange(32, dtype=np.float32).reshape(1, 32)
    tiled = fit_code(w, num_ws=10, w_dim=32)
    assert tiled.shape == (1, 10, 32) and (tiled == w[:, None, :]).all()
    wplus = np.ones((1, 10, 32), np.float32)
    assert fit_code(wplus, num_ws=10, w_dim=32) is wplus
    with pytest.raises(ChinfixError) as raised:
        fit_code(np.zeros((1, 18, 512), np.float32), num_ws=10, w_dim=32)
    assert raised.value.code == "invalid_code" and "1x18x512" in raised.value.message and "1x10x32" in raised.value.message

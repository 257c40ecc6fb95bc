"""What a photo app gets back, through the real API and a real worker: JPEG blocks, profile and EXIF kept, HEIC in,
patch and mask outputs (a stub pipeline that edits a known box), and every face / sideways photos (the real
pipeline with tiny models)."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image

from chinfix.imaging import EXIF_ORIENTATION_TAG, ImageLimits, decode_image, stored_from_upright
from tests.photo_files import EXIF_MAKE_TAG, display_p3_like_profile, heic_bytes, phone_jpeg, smooth_rgb
from tests.service_harness import PORTRAITS, api_and_worker, start_worker, wait_for_job
from tests.service_inputs import png_bytes
from tests.stub_pipeline import neck_box_pixels
from tests.test_jpeg_patch import assert_blocks_kept
from tests.test_pipeline_service import FEW_STEPS
from tests.tiny_models import TINY_RESOLUTION, build_tiny_model_store

LIMITS = ImageLimits(max_pixels=10**9, min_side=1)
STUB = {"CHINFIX_PIPELINE": "tests.stub_pipeline:darken_neck_box"}


def submit_bytes(base_url: str, data: bytes, **options: str) -> str:
    response = httpx.post(f"{base_url}/edit", files={"image": ("photo", data)}, data=options, timeout=60)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def finished(base_url: str, job_id: str, worker) -> tuple[dict, httpx.Response]:
    job = wait_for_job(base_url, job_id, {"succeeded", "failed"})
    assert job["status"] == "succeeded", (job, worker.output())
    return job, httpx.get(job["result"]["url"], timeout=10)


def test_jpeg_heic_patch_and_mask_outputs(isolated_env: dict[str, str], tmp_path: Path) -> None:
    profile = display_p3_like_profile()
    upright = smooth_rgb(360, 272)
    original = phone_jpeg(upright, 6, profile)
    heic = heic_bytes(smooth_rgb(200, 240), profile)
    with api_and_worker({**isolated_env, **STUB}, tmp_path) as (base_url, worker):
        jobs = {
            "auto": submit_bytes(base_url, original),
            "stripped": submit_bytes(base_url, original, strip_metadata="true"),
            "patch": submit_bytes(base_url, original, **{"return": "patch"}),
            "mask": submit_bytes(base_url, original, **{"return": "mask"}),
            "heic": submit_bytes(base_url, heic),
            "heic_out": submit_bytes(base_url, heic, output="heic"),
        }

        job, result = finished(base_url, jobs["auto"], worker)
        assert result.headers["content-type"] == "image/jpeg" and job["options"]["output"] == "auto"
        assert job["report"]["output"]["jpeg"]["blocks_kept"] is True
        changed = np.zeros(upright.shape[:2], bool)
        changed[neck_box_pixels(upright.shape)] = True
        assert_blocks_kept(original, result.content, stored_from_upright(changed, 6))
        output = Image.open(io.BytesIO(result.content))
        assert output.info["icc_profile"] == profile
        assert output.getexif()[EXIF_ORIENTATION_TAG] == 6 and output.getexif()[EXIF_MAKE_TAG] == "chinfix-test-phone"
        edited = decode_image(result.content, LIMITS).rgb

        _, stripped = finished(base_url, jobs["stripped"], worker)
        stripped_image = Image.open(io.BytesIO(stripped.content))
        assert stripped_image.info["icc_profile"] == profile and not stripped_image.getexif()
        # Without its orientation tag the stored pixels show sideways; that is what stripping EXIF means.
        assert np.array_equal(np.asarray(stripped_image), np.asarray(output))

        job, patch = finished(base_url, jobs["patch"], worker)
        assert patch.headers["content-type"] == "image/png"
        offset = job["result"]["offset"]
        assert patch.headers["Chinfix-Patch-Offset"] == f"{offset['left']},{offset['top']}"
        rgba = np.asarray(Image.open(io.BytesIO(patch.content)))
        assert rgba.shape[2] == 4 and set(np.unique(rgba[..., 3])) <= {0, 255}
        rows, cols = neck_box_pixels(upright.shape)
        assert (offset["top"], offset["left"]) == (rows.start, cols.start)
        photo = decode_image(original, LIMITS).rgb
        composed = photo.copy()
        region = composed[offset["top"] : offset["top"] + rgba.shape[0], offset["left"] : offset["left"] + rgba.shape[1]]
        region[rgba[..., 3] == 255] = rgba[..., :3][rgba[..., 3] == 255]
        assert np.array_equal(composed[rows, cols], (photo[rows, cols] * 0.6).astype(np.uint8))
        assert np.abs(composed.astype(int) - edited.astype(int)).mean() < 1.0

        _, mask = finished(base_url, jobs["mask"], worker)
        mask_pixels = np.asarray(Image.open(io.BytesIO(mask.content)))
        assert mask_pixels.dtype == np.uint8 and mask_pixels.shape == upright.shape[:2]
        assert (mask_pixels[rows, cols] == 255).all() and mask_pixels.sum() == 255 * changed.sum()

        job, heic_result = finished(base_url, jobs["heic"], worker)
        assert heic_result.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(heic_result.content)).info["icc_profile"] == profile
        _, heic_out = finished(base_url, jobs["heic_out"], worker)
        assert heic_out.headers["content-type"] == "image/heic"
        assert decode_image(heic_out.content, LIMITS).rgb.shape == (200, 240, 3)


def test_a_heic_goes_through_the_same_header_checks(api_server: str) -> None:
    small = heic_bytes(smooth_rgb(40, 48))
    response = httpx.post(f"{api_server}/edit", files={"image": ("photo.heic", small)}, timeout=30)
    assert response.status_code == 422 and response.json()["error"]["code"] == "image_too_small"


@pytest.mark.skipif(len(PORTRAITS) < 6, reason="the seed portraits are not beside the checkout")
def test_every_face_and_a_sideways_photo_through_the_real_pipeline(
    isolated_env: dict[str, str], api_server: str, tmp_path: Path
) -> None:
    build_tiny_model_store(Path(isolated_env["CHINFIX_MODEL_DIR"]), with_classifier=True)
    worker = start_worker({**isolated_env, **FEW_STEPS}, tmp_path)
    portraits = [decode_image(PORTRAITS[index].read_bytes(), LIMITS).rgb for index in (4, 5)]
    halves = [cv2.resize(portrait, (512, 512), interpolation=cv2.INTER_AREA) for portrait in portraits]
    tiny = cv2.resize(portraits[0], (96, 96), interpolation=cv2.INTER_AREA)
    scene = np.full((620, 1180, 3), 235, np.uint8)
    scene[60:572, 20:532], scene[60:572, 640:1152] = halves
    scene[10:106, 550:646] = tiny
    sideways = np.ascontiguousarray(np.rot90(halves[1], 1))  # lying on its side, no EXIF to say so
    try:
        all_faces = submit_bytes(api_server, png_bytes(scene), face="all", refine="warp")
        turned = submit_bytes(api_server, png_bytes(sideways), refine="warp")

        job, result = finished(api_server, all_faces, worker)
        report = job["report"]
        edited_faces = [face for face in report["faces"] if not face["skipped"]]
        assert len(edited_faces) == 2, report["faces"]
        assert all(face["alpha"] < 0 and "inversion" in face for face in edited_faces)
        # Each face has its own quality facts, the classifier's probabilities among them.
        for face in edited_faces:
            probability = face["quality"]["double_chin_probability"]
            assert set(probability) == {"before", "after"} and all(0.0 <= value <= 1.0 for value in probability.values())
        skipped = [face for face in report["faces"] if face["skipped"]]
        assert len(skipped) == 1 and "too small" in skipped[0]["reason"], report["faces"]  # the 96-px face
        edited = np.asarray(Image.open(io.BytesIO(result.content)).convert("RGB"))
        changed = (edited != scene).any(axis=2)
        assert changed[:, :586].any() and changed[:, 586:].any(), "both faces must be edited"
        crops = np.zeros(scene.shape[:2], np.uint8)
        for face in edited_faces:
            quad = np.asarray(face["quad"])
            # paste_back's interpolation reaches one aligned pixel past the crop: many photo pixels at tiny size.
            reach = int(np.ceil(np.hypot(*(quad[3] - quad[0])) / TINY_RESOLUTION)) + 2
            face_crop = np.zeros_like(crops)
            cv2.fillPoly(face_crop, [np.round(quad).astype(np.int32)], 1)
            crops |= cv2.dilate(face_crop, np.ones((2 * reach + 1, 2 * reach + 1), np.uint8))
        assert not (changed & ~crops.astype(bool)).any(), "nothing outside the edited faces' crops changes"

        job, result = finished(api_server, turned, worker)
        assert job["report"]["rotation"] == 90 and job["report"]["faces_found"] == 1
        turned_result = np.asarray(Image.open(io.BytesIO(result.content)).convert("RGB"))
        assert turned_result.shape == sideways.shape
        assert (turned_result != sideways).any()
    finally:
        worker.stop()

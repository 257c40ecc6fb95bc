"""A ready-made latent code instead of the inversion: `code` on POST /edit through the real API and worker, and
`chinfix edit --code`, with the tiny model store."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
import torch
from PIL import Image
from rq import Queue

from chinfix.cli import main
from model_store.store import ModelStore
from tests.service_harness import PORTRAITS, start_worker, wait_for_job
from tests.test_edit_command import model_dir  # noqa: F401 (fixture)
from tests.test_pipeline_service import FEW_STEPS
from tests.test_service import decode
from tests.tiny_models import build_tiny_model_store
from worker.models.checkpoints import load_generator
from worker.pipeline.invert import rgb_from_images
from worker.registry import GENERATOR

pytestmark = pytest.mark.skipif(not PORTRAITS, reason="the seed portraits are not beside the checkout")


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def post_edit(base_url: str, photo: Path, code: object, **options: str) -> httpx.Response:
    files = {"image": (photo.name, photo.read_bytes(), "image/jpeg")}
    if isinstance(code, bytes):
        files["code"] = ("code.npy", code, "application/octet-stream")
    else:
        options["code"] = code
    return httpx.post(f"{base_url}/edit", files=files, data=options, timeout=60)


def code_for(store: ModelStore, seed: int, layers: bool = True) -> np.ndarray:
    """A mapped random code of the store's generator: 1 x num_ws x w_dim, or 1 x w_dim with layers=False."""
    G = load_generator(store.path(GENERATOR))
    with torch.no_grad():
        wp = G.mapping(torch.randn((1, G.z_dim), generator=torch.Generator().manual_seed(seed)))
    return wp.numpy() if layers else wp[:, 0].numpy()


def reconstruction_of(store: ModelStore, code: np.ndarray) -> np.ndarray:
    """SxSx3 uint8: the image of a code, with the generator's constant noise (a given code has no optimised noise)."""
    G = load_generator(store.path(GENERATOR))
    wp = np.array(np.broadcast_to(code.reshape(1, -1, G.w_dim), (1, G.num_ws, G.w_dim)))
    with torch.no_grad():
        return rgb_from_images(G.synthesis(torch.from_numpy(wp)))[0]


def assert_same_image(actual: np.ndarray, expected: np.ndarray) -> None:
    """Equal up to a rounding flip: the worker's thread count may round a float differently."""
    assert actual.shape == expected.shape
    assert np.abs(actual.astype(int) - expected.astype(int)).max() <= 1


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (b"not a numpy file", "not a readable .npy"),
        (npy_bytes(np.zeros((18, 512), np.float32)), "1 x num_ws x w_dim"),
        (npy_bytes(np.full((1, 18, 512), np.nan, np.float32)), "not finite"),
        (npy_bytes(np.zeros((1, 512), np.int32)), "floating-point"),
        ("1,2,3", "file field"),
    ],
    ids=["garbage", "no-batch-axis", "nan", "integers", "text-field"],
)
def test_a_bad_code_is_422_invalid_code_and_queues_nothing(
    isolated_env: dict[str, str], api_server: str, code: object, words: str
) -> None:
    response = post_edit(api_server, PORTRAITS[0], code)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_code" and words in error["message"]
    connection = redis.Redis.from_url(isolated_env["CHINFIX_REDIS_URL"])
    assert Queue(isolated_env["CHINFIX_QUEUE_NAME"], connection=connection).count == 0


def test_a_given_code_replaces_the_inversion_through_the_api_and_worker(
    isolated_env: dict[str, str], api_server: str, tmp_path: Path
) -> None:
    store = build_tiny_model_store(Path(isolated_env["CHINFIX_MODEL_DIR"]), with_parser=False)
    wplus, w = code_for(store, seed=1), code_for(store, seed=2, layers=False)
    worker = start_worker({**isolated_env, **FEW_STEPS}, tmp_path)
    try:
        submitted = {
            "wplus": post_edit(api_server, PORTRAITS[2], npy_bytes(wplus), refine="warp", debug="true"),
            "w": post_edit(api_server, PORTRAITS[2], npy_bytes(w), refine="none", debug="true"),
            # A well-formed code for another generator: only the worker can tell.
            "ffhq-shaped": post_edit(api_server, PORTRAITS[2], npy_bytes(np.zeros((1, 18, 512), np.float32))),
        }
        assert all(response.status_code == 202 for response in submitted.values()), submitted
        jobs = {name: wait_for_job(api_server, response.json()["id"], {"succeeded", "failed"})
                for name, response in submitted.items()}  # fmt: skip
        for name, code in {"wplus": wplus, "w": w}.items():
            job = jobs[name]
            assert job["status"] == "succeeded", (job, worker.output())
            assert job["report"]["code"] == "given" and "inversion" not in job["report"]
            reconstruction = decode(httpx.get(job["links"]["debug"]["reconstruction"], timeout=10).content)
            assert_same_image(reconstruction, reconstruction_of(store, code))
        failed = jobs["ffhq-shaped"]
        assert failed["status"] == "failed" and failed["error"]["code"] == "invalid_code", failed
        assert "1x18x512" in failed["error"]["message"] and "1x10x32" in failed["error"]["message"]
    finally:
        worker.stop()


def test_chinfix_edit_takes_a_code(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    store = build_tiny_model_store(model_dir, with_parser=False)
    code = code_for(store, seed=3)
    code_path, debug_dir = tmp_path / "code.npy", tmp_path / "debug"
    np.save(code_path, code)
    argv = ["edit", str(PORTRAITS[1]), "-o", str(tmp_path / "edited.png"), "--refine", "warp", "--json"]
    assert main([*argv, "--code", str(code_path), "--debug-dir", str(debug_dir)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["code"] == "given" and "inversion" not in report
    assert_same_image(np.asarray(Image.open(debug_dir / "reconstruction.png")), reconstruction_of(store, code))

    np.save(code_path, np.zeros((1, 18, 512), np.float32))
    assert main([*argv, "--code", str(code_path)]) == 2
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["code"] == "invalid_code" and "1x10x32" in error["message"]


@pytest.mark.parametrize(("content", "words"), [(None, "cannot read"), (b"\x93NUMPY garbage", "not a readable .npy")])
def test_chinfix_edit_refuses_a_bad_code_before_loading_models(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None, words: str  # noqa: F811
) -> None:
    code_path = tmp_path / "code.npy"
    if content is not None:
        code_path.write_bytes(content)
    assert main(["edit", str(PORTRAITS[1]), "-o", str(tmp_path / "edited.png"), "--code", str(code_path)]) == 2
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["code"] == "invalid_code" and words in error["message"]

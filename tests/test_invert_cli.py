"""`chinfix invert` end to end on a tiny generator and LPIPS files in their published layouts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from chinfix.cli import main
from tests.generator_fixtures import save_tiny_generator
from tests.lpips_fixtures import save_random_lpips_checkpoints
from worker.models.checkpoints import load_generator
from worker.pipeline.invert import rgb_from_images


@pytest.fixture
def models(tmp_path, monkeypatch):
    """Generator and LPIPS files given on the command line; an empty store and default settings otherwise."""
    monkeypatch.setenv("CHINFIX_MODEL_DIR", str(tmp_path / "empty-store"))
    for name in ("INVERT_PRESET", "INVERT_STEPS", "INVERT_SPACE"):
        monkeypatch.delenv(f"CHINFIX_{name}", raising=False)
    generator_path = save_tiny_generator(tmp_path / "g.safetensors", resolution=32, seed=0)
    vgg_path, lin_path = tmp_path / "vgg16.pth", tmp_path / "vgg.pth"
    save_random_lpips_checkpoints(vgg_path, lin_path, seed=3)
    model_args = ["--generator", str(generator_path), "--vgg16", str(vgg_path), "--lpips-lin", str(lin_path), "--device", "cpu"]
    return load_generator(generator_path), model_args


@pytest.fixture
def crop_path(tmp_path, models):
    G, _ = models
    with torch.no_grad():
        target = G.synthesis(G.mapping(torch.randn((1, G.z_dim), generator=torch.Generator().manual_seed(9))))
    path = tmp_path / "crop.png"
    Image.fromarray(rgb_from_images(target.clamp(-1, 1))[0]).save(path)
    return path


def test_paper_preset_json_reports_a_w_code_with_identical_rows(tmp_path, models, crop_path, capsys):
    G, model_args = models
    code_path, recon_path = tmp_path / "out" / "code.npy", tmp_path / "recon.png"
    argv = ["invert", str(crop_path), "-o", str(code_path), "--preset", "paper", "--steps", "6", "--json",
            "--reconstruction", str(recon_path), *model_args]  # fmt: skip
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    printed = json.loads(lines[0])
    assert set(printed) == {"space", "steps", "final_loss"}
    assert printed["space"] == "w" and printed["steps"] == 6 and np.isfinite(printed["final_loss"])

    code = np.load(code_path)
    assert code.shape == (1, G.num_ws, G.w_dim) and code.dtype == np.float32
    np.testing.assert_array_equal(code[0], np.broadcast_to(code[0, :1], code[0].shape))
    assert not np.allclose(code[0, 0], G.w_avg.numpy())
    assert Image.open(recon_path).size == (32, 32)


def test_wplus_space_and_seed_options(tmp_path, models, crop_path, capsys):
    G, model_args = models
    codes = {}
    for name, extra in {"wplus": ["--space", "wplus"], "seed": ["--seed", "1"], "default": []}.items():
        path = tmp_path / f"{name}.npy"
        assert main(["invert", str(crop_path), "-o", str(path), "--steps", "4", "--json", *extra, *model_args]) == 0
        codes[name] = np.load(path)
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["space"] for line in printed] == ["wplus", "w", "w"]
    assert not np.allclose(codes["wplus"][0, 0], codes["wplus"][0, -1])
    assert not np.allclose(codes["seed"], codes["default"])


def test_settings_choose_the_defaults(tmp_path, models, crop_path, capsys, monkeypatch):
    _, model_args = models
    monkeypatch.setenv("CHINFIX_INVERT_STEPS", "3")
    monkeypatch.setenv("CHINFIX_INVERT_SPACE", "wplus")
    assert main(["invert", str(crop_path), "-o", str(tmp_path / "code.npy"), "--json", *model_args]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["space"], printed["steps"]) == ("wplus", 3)


@pytest.mark.parametrize(
    ("arguments", "words"),
    [
        (["{missing}"], "cannot read the crop"),
        (["{not_an_image}"], "cannot read the crop"),
        (["{crop}", "--steps", "0"], "--steps must be at least 1"),
        (["{crop}", "--init", "{missing}"], "cannot read the starting code"),
        (["{crop}", "--init", "{bad_init}"], "init_wp must be"),
        (["{crop}", "--init", "{layered_init}"], "identical rows"),
    ],
    ids=["missing-crop", "not-an-image", "zero-steps", "missing-init", "init-shape", "init-not-w"],
)
def test_bad_inputs_are_one_line_errors_with_exit_2(tmp_path, models, crop_path, capsys, arguments, words):
    G, model_args = models
    (tmp_path / "notes.png").write_text("not an image")
    np.save(tmp_path / "bad.npy", np.zeros((1, 3, 7), np.float32))
    np.save(tmp_path / "layered.npy", np.arange(G.num_ws * G.w_dim, dtype=np.float32).reshape(1, G.num_ws, G.w_dim))
    values = {"missing": str(tmp_path / "absent.png"), "not_an_image": str(tmp_path / "notes.png"), "crop": str(crop_path),
              "bad_init": str(tmp_path / "bad.npy"), "layered_init": str(tmp_path / "layered.npy")}  # fmt: skip
    argv = ["invert", *(argument.format(**values) for argument in arguments), "-o", str(tmp_path / "code.npy"), "--json"]
    assert main([*argv, *model_args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], captured.err
    assert not (tmp_path / "code.npy").exists()


def test_invert_command_names_the_missing_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CHINFIX_MODEL_DIR", str(tmp_path / "empty-store"))
    crop_path = tmp_path / "crop.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(crop_path)
    assert main(["invert", str(crop_path), "-o", str(tmp_path / "code.npy"), "--device", "cpu"]) == 2
    error = capsys.readouterr().err
    assert "stylegan2_ffhq" in error and "chinfix models pull stylegan2_ffhq" in error

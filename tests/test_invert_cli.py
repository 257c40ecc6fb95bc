"""`chinfix invert` end to end on a tiny generator and LPIPS files in their published layouts."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from chinfix.cli import main
from tests.generator_fixtures import save_tiny_generator
from worker.models.checkpoints import load_generator
from worker.models.lpips import build_random_lpips
from worker.pipeline.invert import rgb_from_images


def _write_lpips_files(tmp_path):
    metric = build_random_lpips(seed=3)
    vgg_path, lin_path = tmp_path / "vgg16.pth", tmp_path / "vgg.pth"
    torch.save(metric.vgg.state_dict(), vgg_path)
    lin_state = {
        f"lin{stage}.model.1.weight": weights.detach().view(1, -1, 1, 1).clone()
        for stage, weights in enumerate(metric.channel_weights)
    }
    torch.save(lin_state, lin_path)
    return vgg_path, lin_path


def test_invert_command_writes_a_code_and_its_reconstruction(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CHINFIX_MODEL_DIR", str(tmp_path / "empty-store"))
    generator_path = save_tiny_generator(tmp_path / "g.safetensors", resolution=32, seed=0)
    vgg_path, lin_path = _write_lpips_files(tmp_path)
    G = load_generator(generator_path)
    with torch.no_grad():
        target = G.synthesis(G.mapping(torch.randn((1, G.z_dim), generator=torch.Generator().manual_seed(9))))
    crop_path = tmp_path / "crop.png"
    Image.fromarray(rgb_from_images(target.clamp(-1, 1))[0]).save(crop_path)

    code_path, recon_path = tmp_path / "out" / "code.npy", tmp_path / "recon.png"
    argv = [
        "invert", str(crop_path), "-o", str(code_path), "--generator", str(generator_path),
        "--vgg16", str(vgg_path), "--lpips-lin", str(lin_path), "--steps", "8",
        "--device", "cpu", "--reconstruction", str(recon_path),
    ]  # fmt: skip
    assert main(argv) == 0
    code = np.load(code_path)
    assert code.shape == (1, G.num_ws, G.w_dim) and code.dtype == np.float32
    assert not np.allclose(code[0], G.w_avg.numpy())
    assert Image.open(recon_path).size == (32, 32)
    assert "after 8 steps" in capsys.readouterr().out


def test_invert_command_names_the_missing_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CHINFIX_MODEL_DIR", str(tmp_path / "empty-store"))
    crop_path = tmp_path / "crop.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(crop_path)
    assert main(["invert", str(crop_path), "-o", str(tmp_path / "code.npy"), "--device", "cpu"]) == 2
    error = capsys.readouterr().err
    assert "stylegan2_ffhq" in error and "chinfix models pull stylegan2_ffhq" in error

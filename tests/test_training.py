"""The training half end to end on a tiny generator with a planted attribute (tests.planted_attribute).

sample → score → coarse must find the hidden direction; pairs (short diffuse) → fine must separate held-out pairs;
the fine boundary must load through the worker's registry (CHINFIX_FINE_BOUNDARY) and edit a code. Commands run
through `chinfix.cli.main` with the model store of a tiny generator in CHINFIX_MODEL_DIR.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from chinfix.cli import main
from chinfix.settings import Settings
from model_store.store import ModelStore
from tests.generator_fixtures import build_tiny_generator, single_threaded_torch, write_nvidia_pickle  # noqa: F401
from tests.lpips_fixtures import save_random_lpips_checkpoints
from tests.perceptual_fixtures import save_random_seed_vgg16
from tests.planted_attribute import hidden_direction
from worker.pipeline.edit import EditConfig, double_chin_score, edited_layers, remove_double_chin
from worker.registry import GENERATOR, ModelRegistry
from worker.training.directory import TrainingDir

pytestmark = pytest.mark.usefixtures("single_threaded_torch")

RESOLUTION = 32
NUM_SAMPLES = 600
PAIRS_WANTED = 24
SHORT_DIFFUSE = ["--diffuse-steps", "5", "--diffuse-lr", "0.1"]
"""5 steps instead of the seed's 100, so a larger step; the perceptual weight stays the seed's 5e-5."""
PLANTED = ["--region", "tests.planted_attribute:lower_band"]


def build_training_store(model_dir: Path) -> ModelStore:
    """The models the training stages use: a 32 px generator, the seed's VGG16 and LPIPS (random weights, official
    formats)."""
    store = ModelStore(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    write_nvidia_pickle(build_tiny_generator(RESOLUTION, seed=0), store.path(GENERATOR))
    save_random_lpips_checkpoints(store.path("vgg16_imagenet"), store.path("lpips_vgg_lin"), seed=0)
    save_random_seed_vgg16(store.path("vgg16_perceptual"), seed=0)
    return store


def run_command(capsys: pytest.CaptureFixture, *argv: str) -> dict:
    """Run `chinfix ARGV` in this process; its last stdout line parsed as JSON."""
    capsys.readouterr()
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("models")
    build_training_store(directory)
    return directory


@pytest.fixture
def training_env(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CHINFIX_MODEL_DIR", str(model_dir))
    monkeypatch.setenv("CHINFIX_DEVICE", "cpu")
    return model_dir


def pair_threshold(directory: TrainingDir, count: int) -> float:
    """The score above which `count` samples lie (the seed's 0.95 would pair a third of these)."""
    return float(np.sort(directory.load_scores())[-count - 1])


def test_planted_attribute_sample_score_coarse_pairs_fine(
    training_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = tmp_path / "run"
    directory = TrainingDir(root)
    assert run_command(capsys, "train", "sample", str(root), "--num", str(NUM_SAMPLES), "--chunk", "250") == {
        "samples": NUM_SAMPLES, "chunks": 3
    }  # fmt: skip
    run_command(capsys, "train", "score", str(root), "--scorer", "tests.planted_attribute:planted_scorer")
    assert directory.load_scores().shape == (NUM_SAMPLES,)

    coarse = run_command(capsys, "train", "coarse", str(root), "-o", str(tmp_path / "coarse.npy"))
    assert coarse["train_samples"] == 2 * int(int(NUM_SAMPLES * 0.1) * 0.9)
    assert coarse["validation_accuracy"] >= 0.9
    normal = np.load(tmp_path / "coarse.npy")
    assert normal.shape == (1, 32) and normal.dtype == np.float32
    assert np.load(tmp_path / "coarse_intercept.npy").shape == (1, 1)
    G = build_tiny_generator(RESOLUTION, seed=0)
    assert float(normal[0] @ hidden_direction(G)) >= 0.9

    threshold = pair_threshold(directory, PAIRS_WANTED)
    pairs_args = ["train", "pairs", str(root), "--coarse", str(tmp_path / "coarse.npy"), "--threshold", str(threshold),
                  "--shard-size", "8", *SHORT_DIFFUSE, *PLANTED]  # fmt: skip
    assert run_command(capsys, *pairs_args) == {"shards": 3, "samples": PAIRS_WANTED}
    with_codes = np.concatenate([np.load(directory.pair_path(shard, "with")) for shard in range(3)])
    without_codes = np.concatenate([np.load(directory.pair_path(shard, "without")) for shard in range(3)])
    assert with_codes.shape == without_codes.shape == (PAIRS_WANTED, G.num_ws, G.w_dim)
    assert np.array_equal(with_codes, directory.load_wp(np.concatenate(
        [np.load(directory.pair_path(shard, "index")) for shard in range(3)])))  # fmt: skip
    assert not np.allclose(with_codes, without_codes)

    # resumable: a re-run redoes only the shard that is missing, and gets the same pairs
    kept = directory.pair_path(0, "without").stat().st_mtime_ns
    redone = np.load(directory.pair_path(2, "without"))
    directory.pair_path(2, "without").unlink()
    run_command(capsys, *pairs_args)
    assert directory.pair_path(0, "without").stat().st_mtime_ns == kept
    assert np.allclose(np.load(directory.pair_path(2, "without")), redone, atol=1e-6)

    fine_dir = tmp_path / "fine"
    # half of the pairs held out, so the accuracy is measured on 24 codes per layer
    accuracies = run_command(capsys, "train", "fine", str(root), "-o", str(fine_dir), "--split", "0.5")[
        "validation_accuracy"
    ]
    assert len(accuracies) == G.num_ws and np.mean(accuracies) >= 0.9, accuracies
    assert np.load(fine_dir / "boundary.npy").shape == (1, G.num_ws, G.w_dim)
    assert np.load(fine_dir / "intercept.npy").shape == (G.num_ws, 1)

    # the service's loader reads the files, and the edit moves a double-chin code to the other side
    registry = ModelRegistry.load(Settings(fine_boundary=fine_dir / "boundary.npy",
                                           fine_intercept=fine_dir / "intercept.npy"))  # fmt: skip
    boundary = registry.fine_boundary
    assert boundary.normals.shape == (G.num_ws, G.w_dim)
    layers = edited_layers(G.num_ws, ())
    code = with_codes[:1]
    _, before = double_chin_score(code, boundary, layers)
    edit = remove_double_chin(code, boundary, EditConfig(keep_layers=()))
    assert before > 0 and edit.score_after < 0 and not edit.skipped
    held_out = without_codes[-4:]
    assert all(double_chin_score(c[None], boundary, layers)[1] < before for c in held_out)


def test_coarse_from_files_with_a_condition(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rng = np.random.default_rng(0)
    codes = rng.standard_normal((400, 8)).astype(np.float32)
    truth = np.array([1, 1, 0, 0, 0, 0, 0, 0], np.float64) / np.sqrt(2)
    np.save(tmp_path / "codes.npy", codes)
    np.save(tmp_path / "scores.npy", (codes @ truth)[:, None])
    np.save(tmp_path / "pose.npy", np.eye(8, dtype=np.float32)[:1])
    result = run_command(capsys, "train", "coarse", "--codes", str(tmp_path / "codes.npy"), "--scores",
                         str(tmp_path / "scores.npy"), "--condition", str(tmp_path / "pose.npy"),
                         "-o", str(tmp_path / "c.npy"))  # fmt: skip
    assert result["validation_accuracy"] == 1.0
    normal = np.load(tmp_path / "c.npy")[0]
    assert abs(normal[0]) < 1e-6 and normal[1] > 0.95


def test_fine_from_pair_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rng = np.random.default_rng(1)
    with_codes = rng.standard_normal((60, 3, 6)).astype(np.float32)
    shift = np.zeros((3, 6), np.float32)
    shift[:, 2] = 6.0
    np.save(tmp_path / "with.npy", with_codes)
    np.save(tmp_path / "without.npy", with_codes - shift)
    accuracies = run_command(capsys, "train", "fine", "--pairs", str(tmp_path / "with.npy"),
                             str(tmp_path / "without.npy"), "-o", str(tmp_path / "out"))["validation_accuracy"]  # fmt: skip
    assert len(accuracies) == 3 and min(accuracies) >= 0.9
    normals = np.load(tmp_path / "out" / "boundary.npy")[0]
    assert (normals[:, 2] > 0.8).all()
    intercepts = np.load(tmp_path / "out" / "intercept.npy")
    assert intercepts.dtype == np.float64
    # the intercept is a distance in code units: the midpoint of a pair lies near the hyperplane
    midpoints = with_codes - shift / 2
    distances = np.einsum("pkd,kd->pk", midpoints, normals) + intercepts[:, 0]
    assert np.abs(distances).mean() < 1.0  # the two sides lie 3 units away from it


def test_stage_errors_are_one_line(training_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "score", str(tmp_path / "none"), "--scorer", "tests.planted_attribute:planted_scorer"]) == 2
    assert capsys.readouterr().out.strip() == f"chinfix train score: {tmp_path / 'none'} holds no samples yet: run " \
        f"`chinfix train sample {tmp_path / 'none'}` first"  # fmt: skip
    assert main(["train", "coarse", "-o", str(tmp_path / "c.npy")]) == 2
    assert "give a training directory" in capsys.readouterr().out


def test_a_worker_refuses_a_boundary_of_another_generator(training_env: Path, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from tests.service_harness import REPO_ROOT

    normals = np.random.default_rng(0).standard_normal((1, 18, 512)).astype(np.float32)
    np.save(tmp_path / "boundary.npy", normals / np.linalg.norm(normals, axis=2, keepdims=True))
    np.save(tmp_path / "intercept.npy", np.zeros((18, 1)))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "CHINFIX_FINE_BOUNDARY": str(tmp_path / "boundary.npy"),
           "CHINFIX_FINE_INTERCEPT": str(tmp_path / "intercept.npy")}  # fmt: skip
    finished = subprocess.run([sys.executable, "-m", "chinfix.cli", "worker", "--burst"], env=env, cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
    assert finished.returncode == 2, finished.stderr
    assert finished.stdout.strip() == (
        f"chinfix worker: the fine boundary ({tmp_path / 'boundary.npy'}) has 18 layers of 512, but the generator "
        "has 8 x 32: use the boundary trained for this generator"
    )


def test_sample_images_labels_and_settings_that_do_not_match(
    training_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = tmp_path / "small"
    assert run_command(capsys, "train", "sample", str(root), "--num", "5", "--chunk", "2", "--images") == {
        "samples": 5, "chunks": 3
    }  # fmt: skip
    directory = TrainingDir(root)
    assert sorted(path.name for path in (root / "images").iterdir()) == [f"{i:06d}.jpg" for i in range(5)]
    assert directory.load_codes("wp").shape == (5, 8, 32)
    assert np.array_equal(directory.load_wp(np.array([4, 0])), directory.load_codes("wp")[[4, 0]])
    (root / "labels.csv").write_text("sample,label\n" + "".join(f"{i:06d}.jpg,{i % 2}\n" for i in range(5)))
    run_command(capsys, "train", "score", str(root), "--labels", str(root / "labels.csv"))
    assert np.array_equal(np.load(root / "scores.npy"), np.array([[0], [1], [0], [1], [0]], np.float32))

    assert main(["train", "sample", str(root), "--num", "5", "--chunk", "2", "--seed", "1"]) == 2
    assert "sampled with other settings" in capsys.readouterr().out


def test_the_classifier_scores_synthesised_faces() -> None:
    from tests.parsing_fixtures import random_bisenet_state_dict
    from worker.models.bisenet import BiSeNet
    from worker.training.classifier import DoubleChinClassifier, classifier_scorer
    from worker.training.score import SampleBatch

    parser = BiSeNet()
    parser.load_state_dict(random_bisenet_state_dict(seed=0))
    G = build_tiny_generator(RESOLUTION, seed=0)
    wp = G.mapping(torch.randn(3, G.z_dim), truncation_psi=0.8).numpy()
    scorer = classifier_scorer(DoubleChinClassifier(blocks=(1, 1, 1, 1), input_size=64).eval(), parser.eval())
    scores = scorer(SampleBatch(np.arange(3), wp[:, 0], wp, G))
    assert scores.shape == (3,) and ((scores > 0) & (scores < 1)).all()

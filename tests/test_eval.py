"""`chinfix eval` on seed portraits with the tiny model store: the report, the metrics, the resumption."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from chinfix.cli import main
from tests.service_harness import PORTRAITS
from tests.test_pipeline_service import FEW_STEPS
from tests.tiny_models import build_tiny_model_store
from worker.evaluation import COLUMNS, IMAGE_NAMES, append_metrics, read_metrics

pytestmark = pytest.mark.skipif(not PORTRAITS, reason="the seed portraits are not beside the checkout")


@pytest.fixture
def photos_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A seed portrait and a photo without a face, with the tiny model store (and its classifier) configured."""
    model_dir = tmp_path / "models"
    build_tiny_model_store(model_dir, with_classifier=True)
    monkeypatch.setenv("CHINFIX_MODEL_DIR", str(model_dir))
    monkeypatch.setenv("CHINFIX_DEVICE", "cpu")
    for name, value in FEW_STEPS.items():
        monkeypatch.setenv(name, value)
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / PORTRAITS[4].name).symlink_to(PORTRAITS[4])
    Image.fromarray(np.full((256, 256, 3), 128, np.uint8)).save(folder / "blank.png")
    (folder / "notes.txt").write_text("not a photo")
    return folder


def read_rows(report_dir: Path) -> list[dict[str, str]]:
    with (report_dir / "metrics.csv").open(newline="") as file:
        return list(csv.DictReader(file))


def test_eval_writes_a_report_and_resumes(photos_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report_dir = tmp_path / "report"
    assert main(["eval", str(photos_dir), "-o", str(report_dir), "--refine", "warp", "--strength", "0.5,1"]) == 0
    assert "4 edits in" in capsys.readouterr().out

    rows = read_rows(report_dir)
    assert list(rows[0]) == COLUMNS
    assert {(row["photo"], row["strength"]) for row in rows} == {
        (name, strength) for name in ("blank.png", PORTRAITS[4].name) for strength in ("0.5", "1")
    }
    failed = [row for row in rows if row["status"] == "failed"]
    assert {row["photo"] for row in failed} == {"blank.png"} and {row["error_code"] for row in failed} == {"no_face"}
    edited = [row for row in rows if row["status"] == "succeeded"]
    for row in edited:
        assert 0.0 < float(row["identity_similarity"]) <= 1.0
        assert float(row["neck_lpips"]) > 0 and float(row["neck_psnr_db"]) > 0
        assert int(row["changed_pixels"]) > 0 and row["quality_passed"] in {"True", "False"}
        assert float(row["total_ms"]) >= float(row["invert_ms"]) > 0
        assert all(0.0 <= float(row[f"double_chin_probability_{when}"]) <= 1.0 for when in ("before", "after"))
    assert float(edited[0]["alpha"]) != float(edited[1]["alpha"]), "the two strengths are two different edits"

    index = (report_dir / "index.html").read_text()
    assert "4 rows, 2 failed" in index and "no_face" in index
    assert "median double_chin_probability_after" in index and f"<td>{edited[0]['double_chin_probability_before']}</td>" in index
    linked = re.findall(r'href="(rows/[^"]+)"', index) + re.findall(r'src="(rows/[^"]+)"', index)
    assert len(linked) == 2 * 2 * len(IMAGE_NAMES), "every image of both edits, full size and thumbnail"
    assert all((report_dir / path).is_file() for path in linked)

    # A second run finds every row done; a new strength adds only its own rows.
    assert main(["eval", str(photos_dir), "-o", str(report_dir), "--refine", "warp", "--strength", "0.5,1"]) == 0
    assert "0 edits in" in capsys.readouterr().out and read_rows(report_dir) == rows
    assert main(["eval", str(photos_dir), "-o", str(report_dir), "--refine", "warp", "--strength", "0"]) == 0
    assert "2 edits in" in capsys.readouterr().out
    added = read_rows(report_dir)[len(rows):]
    assert [(row["photo"], row["strength"]) for row in added] == [(PORTRAITS[4].name, "0"), ("blank.png", "0")]
    assert added[0]["changed_pixels"] == "0", "strength 0 leaves the photo as it came"


@pytest.mark.parametrize(
    ("arguments", "words"),
    [(["--strength", "2"], "strengths in 0..1"), (["--refine", "blur"], "refine methods")],
    ids=["strength", "refine"],
)
def test_eval_refuses_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], words: str) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["eval", str(tmp_path), "-o", str(tmp_path / "report"), *arguments])
    assert exited.value.code == 2 and words in capsys.readouterr().err


def test_eval_of_a_folder_without_photos_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(tmp_path), "-o", str(tmp_path / "report")]) == 2
    assert "holds no .jpg" in capsys.readouterr().out


def test_a_report_begun_before_a_column_existed_takes_it_on(tmp_path: Path) -> None:
    older_columns = [column for column in COLUMNS if not column.startswith("double_chin_probability")]
    with (tmp_path / "metrics.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=older_columns)
        writer.writeheader()
        writer.writerow({"photo": "a.png", "refine": "warp", "strength": "1", "status": "succeeded", "neck_lpips": "0.3"})
    assert read_metrics(tmp_path)[0]["double_chin_probability_after"] == ""
    append_metrics(tmp_path, {"photo": "b.png", "refine": "warp", "strength": "1", "status": "succeeded",
                              "double_chin_probability_after": 0.25})  # fmt: skip
    assert list(read_rows(tmp_path)[0]) == COLUMNS
    rows = read_metrics(tmp_path)
    assert [(row["photo"], row["neck_lpips"], row["double_chin_probability_after"]) for row in rows] == [
        ("a.png", "0.3", ""), ("b.png", "", "0.25")
    ]

"""`chinfix eval`: the pipeline over a folder of photos for every (refine, strength), written up as a report.

REPORT_DIR/metrics.csv holds one row per (photo, refine, strength), appended as each finishes, so a run that
stops resumes where it left off; REPORT_DIR/index.html is rebuilt from it after every row. Images of a row are in
REPORT_DIR/rows/<row key>/, each with a thumbnail beside it.
"""

from __future__ import annotations

import csv
import html
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from chinfix.contract import EditOptions, OutputFormat, RefineMethod, Stage
from chinfix.errors import ChinfixError
from chinfix.imaging import ImageLimits, decode_image, encode_image

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
THUMBNAIL_SIDE = 192
HEAT_GAIN = 4
"""The heat map shows the largest channel difference times this: 64 grey levels of change saturate it."""
STAGE_COLUMNS = [f"{stage.value}_ms" for stage in Stage]
COLUMNS = [
    "photo", "refine", "strength", "status", "error_code", "error_message",
    "quality_passed", "quality_reasons", "identity_similarity", "neck_lpips", "neck_psnr_db",
    "changed_pixels", "changed_share", "mask_box", "score_before", "score_after", "alpha",
    "double_chin_probability_before", "double_chin_probability_after", "mask_source",
    *STAGE_COLUMNS, "quality_ms", "total_ms",
]  # fmt: skip
SUMMARY_FACTS = (
    "identity_similarity", "neck_lpips", "neck_psnr_db", "changed_share",
    "double_chin_probability_before", "double_chin_probability_after", "total_ms",
)  # fmt: skip
IMAGE_NAMES = ("original", "edited", "soft_mask", "difference")

EditFunction = Callable[[np.ndarray, EditOptions], Any]
"""(HxWx3 uint8 RGB photo, options) → worker.pipeline.portrait.EditResult."""


@dataclass(frozen=True)
class EvalCase:
    photo: Path
    refine: RefineMethod
    strength: float

    @property
    def key(self) -> str:
        return f"{self.photo.stem}__{self.refine.value}__{self.strength:g}"


def photos_in(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.suffix.lower() in PHOTO_SUFFIXES and path.is_file())


def eval_cases(photos: Iterable[Path], refines: Iterable[RefineMethod], strengths: Iterable[float]) -> list[EvalCase]:
    return [EvalCase(photo, refine, strength) for photo in photos for refine in refines for strength in strengths]


def row_key(row: dict[str, str]) -> str:
    return f"{Path(row['photo']).stem}__{row['refine']}__{float(row['strength']):g}"


def read_metrics(report_dir: Path) -> list[dict[str, str]]:
    """The rows of REPORT_DIR/metrics.csv, each with every column of COLUMNS (a report begun by an older chinfix
    lacks the newer columns: they read as empty)."""
    path = report_dir / "metrics.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as file:
        return [{column: row.get(column) or "" for column in COLUMNS} for row in csv.DictReader(file)]


def metrics_header(path: Path) -> list[str]:
    with path.open(newline="") as file:
        return next(csv.reader(file), [])


def append_metrics(report_dir: Path, row: dict[str, Any]) -> None:
    """Append a row; a file with other columns (an older chinfix's) is first rewritten with today's."""
    path = report_dir / "metrics.csv"
    if path.is_file() and metrics_header(path) == COLUMNS:
        with path.open("a", newline="") as file:
            csv.DictWriter(file, fieldnames=COLUMNS).writerow(row)
        return
    rows = [*read_metrics(report_dir), row]
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def evaluate_case(case: EvalCase, edit: EditFunction, limits: ImageLimits, report_dir: Path) -> dict[str, Any]:
    """Run one case, write its images, return its metrics row (a failure is a row too)."""
    row: dict[str, Any] = {"photo": case.photo.name, "refine": case.refine.value, "strength": f"{case.strength:g}"}
    options = EditOptions(refine=case.refine, strength=case.strength, output=OutputFormat.PNG, debug=True)
    started = time.perf_counter()
    try:
        photo = decode_image(case.photo.read_bytes(), limits).rgb
        result = edit(photo, options)
    except ChinfixError as error:
        return {**row, "status": "failed", "error_code": str(error.code), "error_message": error.message}
    except OSError as error:
        return {**row, "status": "failed", "error_code": "image_unreadable", "error_message": str(error)}
    except Exception as error:  # one photo's bug is a row of the report, not the end of the run
        return {**row, "status": "failed", "error_code": "internal_error", "error_message": repr(error)}
    row_dir = report_dir / "rows" / case.key
    write_row_images(row_dir, photo, result.image, result.debug_images.get("soft_mask"))
    return {**row, **report_columns(result.report), "total_ms": round((time.perf_counter() - started) * 1000.0, 1)}


def report_columns(report: dict[str, Any]) -> dict[str, Any]:
    """The metrics columns of a successful edit's report."""
    quality = report.get("quality") or {}
    neck = quality.get("neck_fit") or {}
    probability = quality.get("double_chin_probability") or {}
    area = quality.get("changed_area") or {}
    timings = report.get("timings_ms", {})
    return {
        "status": "succeeded",
        "quality_passed": quality.get("passed"),
        "quality_reasons": " | ".join(quality.get("reasons", [])),
        "identity_similarity": quality.get("identity_similarity"),
        "neck_lpips": neck.get("lpips"),
        "neck_psnr_db": neck.get("psnr_db"),
        "changed_pixels": area.get("pixels"),
        "changed_share": area.get("share"),
        "mask_box": " ".join(map(str, area["mask_box"])) if area.get("mask_box") else "",
        "score_before": report.get("score_before"),
        "score_after": report.get("score_after"),
        "alpha": report.get("alpha"),
        "double_chin_probability_before": probability.get("before"),
        "double_chin_probability_after": probability.get("after"),
        "mask_source": report.get("mask_source", ""),
        **{f"{stage}_ms": timings.get(stage) for stage in (stage.value for stage in Stage)},
        "quality_ms": quality.get("ms"),
    }


def write_row_images(row_dir: Path, photo: np.ndarray, edited: np.ndarray, soft_mask: np.ndarray | None) -> None:
    """Full-size images of a row and their thumbnails (all HxWx3 uint8 RGB; soft_mask SxS uint8 or None)."""
    row_dir.mkdir(parents=True, exist_ok=True)
    difference = np.abs(edited.astype(np.int16) - photo.astype(np.int16)).max(axis=2)
    heat = cv2.applyColorMap(np.clip(difference * HEAT_GAIN, 0, 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
    images = {"original": photo, "edited": edited, "difference": cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)}
    if soft_mask is not None:
        images["soft_mask"] = np.repeat(soft_mask[:, :, None], 3, axis=2)
    for name, image in images.items():
        (row_dir / f"{name}.png").write_bytes(encode_image(image, OutputFormat.PNG))
        (row_dir / f"{name}.thumb.jpg").write_bytes(encode_image(thumbnail(image), OutputFormat.JPEG, 90))


def thumbnail(image: np.ndarray) -> np.ndarray:
    scale = THUMBNAIL_SIDE / max(image.shape[:2])
    if scale >= 1.0:
        return image
    size = (max(round(image.shape[1] * scale), 1), max(round(image.shape[0] * scale), 1))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def pending_cases(cases: list[EvalCase], report_dir: Path) -> list[EvalCase]:
    """The cases metrics.csv has no row for yet."""
    finished = {row_key(row) for row in read_metrics(report_dir)}
    return [case for case in cases if case.key not in finished]


def run_case(case: EvalCase, edit: EditFunction, limits: ImageLimits, report_dir: Path) -> dict[str, Any]:
    """Evaluate one case, append its row to metrics.csv and rebuild index.html; returns the row."""
    report_dir.mkdir(parents=True, exist_ok=True)
    row = evaluate_case(case, edit, limits, report_dir)
    append_metrics(report_dir, row)
    write_index(report_dir)
    return row


def number(value: str) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def summary_rows(rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Per (refine, strength): counts and the median of each summary fact over the succeeded rows."""
    groups: dict[tuple[str, str], list[dict[str, str]]] = {}
    for row in rows:
        groups.setdefault((row["refine"], row["strength"]), []).append(row)
    summary = []
    for (refine, strength), group in sorted(groups.items()):
        succeeded = [row for row in group if row["status"] == "succeeded"]
        medians = {}
        for fact in SUMMARY_FACTS:
            values = [value for value in (number(row[fact]) for row in succeeded) if value is not None]
            medians[fact] = round(statistics.median(values), 4) if values else None
        summary.append({
            "refine": refine, "strength": strength, "rows": len(group), "failed": len(group) - len(succeeded),
            "gate_refused": sum(row["quality_passed"] == "False" for row in succeeded), **medians,
        })  # fmt: skip
    return summary


def write_index(report_dir: Path) -> None:
    rows = read_metrics(report_dir)
    (report_dir / "index.html").write_text(render_index(rows, report_dir), encoding="utf-8")


def _cell(value: Any) -> str:
    return "—" if value in (None, "") else html.escape(str(value))


def _image_cell(report_dir: Path, key: str, name: str) -> str:
    full = Path("rows") / key / f"{name}.png"
    if not (report_dir / full).is_file():
        return "<td class=img>—</td>"
    thumb = Path("rows") / key / f"{name}.thumb.jpg"
    return f'<td class=img><a href="{html.escape(full.as_posix())}"><img src="{html.escape(thumb.as_posix())}" alt="{name}" loading=lazy></a></td>'


def render_index(rows: list[dict[str, str]], report_dir: Path) -> str:
    summary = summary_rows(rows)
    summary_header = "".join(f"<th>{html.escape(name)}</th>" for name in ("refine", "strength", "rows", "failed", "gate refused", *(f"median {fact}" for fact in SUMMARY_FACTS)))
    summary_body = "".join(
        "<tr>" + "".join(f"<td>{_cell(entry[column])}</td>" for column in ("refine", "strength", "rows", "failed", "gate_refused", *SUMMARY_FACTS)) + "</tr>"
        for entry in summary
    )  # fmt: skip
    failures = [row for row in rows if row["status"] != "succeeded"]
    failure_items = "".join(
        f"<li>{_cell(row['photo'])} ({_cell(row['refine'])}, {_cell(row['strength'])}): <code>{_cell(row['error_code'])}</code> {_cell(row['error_message'])}</li>"
        for row in failures
    ) or "<li>none</li>"  # fmt: skip
    fact_columns = ("quality_passed", "identity_similarity", "neck_lpips", "neck_psnr_db", "changed_pixels", "changed_share", "score_before", "score_after", "alpha", "double_chin_probability_before", "double_chin_probability_after")
    timing_columns = (*STAGE_COLUMNS, "quality_ms", "total_ms")
    body = []
    for row in rows:
        key = row_key(row)
        images = "".join(_image_cell(report_dir, key, name) for name in IMAGE_NAMES)
        facts = "".join(f"<tr><th>{name}</th><td>{_cell(row[name])}</td></tr>" for name in fact_columns)
        if row["status"] != "succeeded":
            facts = f"<tr><th>error</th><td><code>{_cell(row['error_code'])}</code> {_cell(row['error_message'])}</td></tr>"
        elif row["quality_reasons"]:
            facts += f"<tr><th>reasons</th><td>{_cell(row['quality_reasons'])}</td></tr>"
        timings = "".join(f"<tr><th>{name}</th><td>{_cell(row[name])}</td></tr>" for name in timing_columns)
        body.append(
            f"<tr class={html.escape(row['status'])}><td>{_cell(row['photo'])}<br>{_cell(row['refine'])}, strength {_cell(row['strength'])}</td>"
            f"{images}<td><table class=facts>{facts}</table></td><td><table class=facts>{timings}</table></td></tr>"
        )  # fmt: skip
    return INDEX_TEMPLATE.format(
        rows=len(rows), failed=len(failures), heat_gain=HEAT_GAIN, thumb=THUMBNAIL_SIDE, summary_header=summary_header,
        summary_body=summary_body, failure_items=failure_items, body="".join(body),
    )  # fmt: skip


INDEX_TEMPLATE = """<!doctype html>
<html lang=en>
<head>
<meta charset=utf-8>
<title>chinfix eval</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }}
td.img img {{ display: block; max-width: {thumb}px; max-height: {thumb}px; }}
table.facts th, table.facts td {{ border: none; padding: 1px 6px; font-size: 12px; }}
tr.failed {{ background: #fdecea; }}
code {{ background: #f3f3f3; padding: 0 3px; }}
</style>
</head>
<body>
<h1>chinfix eval</h1>
<p>{rows} rows, {failed} failed. The difference map shows the largest channel change per pixel, times {heat_gain}.
Facts are those of the job report (<code>quality</code>); the gate's verdict is shown, the edit always kept.</p>
<h2>Summary (medians over succeeded rows)</h2>
<table><tr>{summary_header}</tr>{summary_body}</table>
<h2>Failures</h2>
<ul>{failure_items}</ul>
<h2>Rows</h2>
<table>
<tr><th>photo</th><th>original</th><th>edited</th><th>soft mask</th><th>difference</th><th>quality</th><th>timings (ms)</th></tr>
{body}
</table>
</body>
</html>
"""

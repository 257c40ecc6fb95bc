"""Real portraits and synthetic scenes with a known answer, for the align and compose tests."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import cv2
import numpy as np

from tests.seed_data import SEED_DATA
from worker.models.landmarks import DlibLandmarker, load_dlib_landmarker


def seed_portrait_paths() -> list[Path]:
    paths = sorted((SEED_DATA / "portraits").glob("*.jpg"))
    assert len(paths) == 7, f"expected the 7 seed portraits, found {len(paths)}"
    return paths


@functools.cache
def seed_portrait(name: str) -> np.ndarray:
    """1024x1024x3 uint8 RGB seed portrait by file stem (e.g. '00016')."""
    bgr = cv2.imread(str(SEED_DATA / "portraits" / f"{name}.jpg"), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@functools.cache
def dlib_landmarker() -> DlibLandmarker:
    return load_dlib_landmarker()


def busy_background(height: int, width: int, seed: int) -> np.ndarray:
    """HxWx3 uint8 RGB clutter: overlapping coloured rectangles, discs and lines over noise."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    image = cv2.GaussianBlur(image, (0, 0), 3.0)
    for _ in range(120):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        extent = int(rng.integers(20, max(height, width) // 6))
        kind = rng.integers(0, 3)
        if kind == 0:
            cv2.rectangle(image, (x, y), (x + extent, y + extent // 2), colour, -1)
        elif kind == 1:
            cv2.circle(image, (x, y), extent // 2, colour, -1)
        else:
            end = (x + int(rng.integers(-extent, extent)), y + int(rng.integers(-extent, extent)))
            cv2.line(image, (x, y), end, colour, int(rng.integers(2, 12)))
    return image


def noise_landscape(height: int, width: int, seed: int) -> np.ndarray:
    """HxWx3 uint8 RGB faceless scene: sky gradient, noisy mountain ridges, a sun, grass texture."""
    rng = np.random.default_rng(seed)
    rows = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    image = (np.array([70, 130, 220], np.float32) * (1 - rows) + np.array([200, 220, 240], np.float32) * rows)
    image = np.broadcast_to(image, (height, width, 3)).copy()
    cv2.circle(image, (int(width * 0.8), int(height * 0.2)), height // 12, (255, 230, 120), -1)
    for layer, colour in enumerate([(110, 110, 130), (70, 100, 70), (40, 80, 40)]):
        ridge = np.cumsum(rng.normal(0.0, 4.0, width)) + height * (0.45 + 0.15 * layer)
        polygon = np.array([[x, ridge[x]] for x in range(0, width, 8)] + [[width, height], [0, height]], np.int32)
        cv2.fillPoly(image, [polygon], colour)
    image += rng.normal(0.0, 12.0, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def similarity(angle_degrees: float, scale: float, translation: tuple[float, float]) -> np.ndarray:
    """3x3 float64: rotate (counter-clockwise on screen) and scale about the origin, then translate."""
    radians = math.radians(angle_degrees)
    cos, sin = scale * math.cos(radians), scale * math.sin(radians)
    return np.array([[cos, sin, translation[0]], [-sin, cos, translation[1]], [0.0, 0.0, 1.0]])


def paste_transformed(canvas: np.ndarray, portrait: np.ndarray, angle_degrees: float, scale: float,
                      centre: tuple[float, float]) -> np.ndarray:
    """3x3 float64 T (portrait pixels → canvas pixels) after pasting the portrait into `canvas` in place:
    rotated by `angle_degrees`, scaled by `scale`, its centre at `centre`."""
    side = portrait.shape[1]
    reduced_side = round(side * scale)
    # Reduce first (box filter) so a small paste does not alias; then rotate and place.
    reduced = cv2.resize(portrait, (reduced_side, reduced_side), interpolation=cv2.INTER_AREA)
    exact_scale = reduced_side / side
    portrait_to_reduced = np.array(
        [[exact_scale, 0.0, 0.5 * exact_scale - 0.5], [0.0, exact_scale, 0.5 * exact_scale - 0.5], [0.0, 0.0, 1.0]]
    )
    half = (reduced_side - 1) / 2.0
    about_centre = similarity(angle_degrees, 1.0, (0.0, 0.0))
    reduced_to_canvas = (
        np.array([[1.0, 0.0, centre[0]], [0.0, 1.0, centre[1]], [0.0, 0.0, 1.0]])
        @ about_centre
        @ np.array([[1.0, 0.0, -half], [0.0, 1.0, -half], [0.0, 0.0, 1.0]])
    )
    cv2.warpAffine(
        reduced, reduced_to_canvas[:2], (canvas.shape[1], canvas.shape[0]), dst=canvas,
        flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_TRANSPARENT,
    )
    return reduced_to_canvas @ portrait_to_reduced


def psnr(first: np.ndarray, second: np.ndarray) -> float:
    error = np.mean((first.astype(np.float64) - second.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else 10.0 * math.log10(255.0**2 / error)


def portrait_in_busy_scene(
    name: str, angle_degrees: float, scale: float, centre: tuple[float, float],
    height: int = 2000, width: int = 3000, background_seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """An HxWx3 uint8 RGB busy scene with a seed portrait pasted in (see `paste_transformed`), and the
    3x3 float64 T from portrait pixels to scene pixels."""
    scene = busy_background(height, width, background_seed)
    return scene, paste_transformed(scene, seed_portrait(name), angle_degrees, scale, centre)

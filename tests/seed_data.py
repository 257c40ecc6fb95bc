"""The one place tests find the seed's published artifacts: `../shared/seed-data` beside the checkout (as in CI), else
`$CHINFIX_SHARED_DIR/seed-data` (a git worktree elsewhere). Tests that need them skip when neither exists."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def _seed_data_dir() -> Path:
    beside_checkout = Path(__file__).resolve().parents[2] / "shared" / "seed-data"
    if beside_checkout.is_dir() or "CHINFIX_SHARED_DIR" not in os.environ:
        return beside_checkout
    return Path(os.environ["CHINFIX_SHARED_DIR"]) / "seed-data"


SEED_DATA = _seed_data_dir()
FINE_BOUNDARY = SEED_DATA / "boundaries/fine/double_chin_wp.npy"
FINE_INTERCEPT = SEED_DATA / "boundaries/fine/double_chin_wp_intercept.npy"
COARSE_BOUNDARY = SEED_DATA / "boundaries/coarse/double_chin_w_psi0.8.npy"
YAW_BOUNDARY = SEED_DATA / "boundaries/coarse/pose_yaw_w_psi0.5.npy"

needs_seed_data = pytest.mark.skipif(not SEED_DATA.is_dir(), reason=f"seed data not found at {SEED_DATA}")

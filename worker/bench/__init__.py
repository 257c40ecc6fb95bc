"""`chinfix bench` targets: one module each, with `configure(parser)` and `run(args)`."""

from pathlib import Path

SEED_PORTRAITS = Path(__file__).resolve().parents[3] / "shared" / "seed-data" / "portraits"
"""The seed portraits in `../shared` beside the checkout, where CI and the developers have them."""

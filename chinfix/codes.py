"""A ready-made latent code sent with an edit (`code` on POST /edit, `chinfix edit --code`), which skips the inversion.

It is a `.npy` of 1 x num_ws x w_dim (W+, e.g. the official projector's 1x18x512) or 1 x w_dim (W) floats: the
seed's own flow, an aligned photo plus its projector code. Torch-free, so the API checks a code before queueing
it; the worker checks its shape against the loaded generator.
"""

from __future__ import annotations

import io

import numpy as np

from chinfix.contract import ErrorCode
from chinfix.errors import ChinfixError

MAX_CODE_BYTES = 1_000_000
"""Far above any StyleGAN2 code (1x18x512 float64 is 74 kB)."""


def read_code(data: bytes) -> np.ndarray:
    """The bytes of a .npy file -> its code, 1 x K x D or 1 x D float32, every value finite.

    Raises ChinfixError(invalid_code) for anything else; nothing pickled is ever loaded.
    """
    if len(data) > MAX_CODE_BYTES:
        raise _invalid(f"The code file is larger than {MAX_CODE_BYTES / 1e6:g} MB; a latent code is tens of kB.")
    try:
        code = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise _invalid(f"The code is not a readable .npy file: {error}.") from None
    if not isinstance(code, np.ndarray):
        raise _invalid("The code must be one array in a .npy file, not an .npz archive.")
    if code.dtype.kind != "f":
        raise _invalid(f"The code must hold floating-point numbers, not {code.dtype}.")
    if code.ndim not in (2, 3) or code.shape[0] != 1 or code.size == 0:
        raise _invalid(f"The code must be 1 x num_ws x w_dim (such as 1x18x512) or 1 x w_dim, not {_shape(code.shape)}.")
    with np.errstate(over="ignore"):  # a value beyond float32 becomes infinite, refused just below
        code = code.astype(np.float32)
    if not np.isfinite(code).all():
        raise _invalid("The code holds values that are not finite (NaN or infinity, or too large for float32).")
    return code


def fit_code(code: np.ndarray, num_ws: int, w_dim: int) -> np.ndarray:
    """A `read_code` result -> 1 x num_ws x w_dim float32 for a generator; a W code is tiled over the layers."""
    if code.shape == (1, w_dim):
        return np.repeat(code[:, None, :], num_ws, axis=1)
    if code.shape == (1, num_ws, w_dim):
        return code
    raise _invalid(
        f"The code is {_shape(code.shape)}, but this worker's generator takes 1x{num_ws}x{w_dim} (or 1x{w_dim})."
    )


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(side) for side in shape)


def _invalid(message: str) -> ChinfixError:
    return ChinfixError(ErrorCode.INVALID_CODE, message)

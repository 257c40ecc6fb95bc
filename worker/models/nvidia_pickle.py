"""Read NVIDIA network pickles (stylegan2-ada-pytorch, stylegan3) without executing anything in them.

NVIDIA pickles store every network module through `torch_utils.persistence`: a module is pickled as a
call `_reconstruct_persistent_obj(meta)`, with meta = {type: 'class', version, module_src (the Python
source of the defining module, which NVIDIA's loader exec()s), class_name, state (the module's
__dict__: _parameters, _buffers, _modules, _init_kwargs, ...)}. Tensors are pickled as
`torch._utils._rebuild_tensor_v2(storage, ...)` over `torch.storage._load_from_bytes(bytes)`, where the
bytes are a `torch.save` of the storage.

`RestrictedNvidiaUnpickler` resolves only the globals such a pickle needs, each to a function here that
builds plain data: persistent-class records become `PersistentRecord` (module_src is kept as text, never
run), storages are read with `torch.load(weights_only=True)`. Any other global — `os.system`,
`builtins.eval`, a torch module class, ... — is refused before it could be called.
"""

from __future__ import annotations

import collections
import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle references something outside the known NVIDIA network-pickle vocabulary."""


@dataclass
class PersistentRecord:
    """One `torch_utils.persistence` object: its class name and pickled __dict__ (never instantiated)."""

    class_name: str
    state: dict
    module_src: str

    @property
    def init_kwargs(self) -> dict:
        return dict(self.state.get("_init_kwargs") or {})

    @property
    def children(self) -> dict[str, PersistentRecord]:
        """Submodule records by attribute name ('mapping', 'synthesis', 'b8', 'conv0', 'fc0', ...)."""
        modules = self.state.get("_modules") or {}
        return {name: child for name, child in modules.items() if isinstance(child, PersistentRecord)}

    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Parameters and persistent buffers of this module and its children, by state-dict name."""
        tensors: dict[str, torch.Tensor] = {}
        non_persistent = set(self.state.get("_non_persistent_buffers_set") or ())
        for name, tensor in (self.state.get("_parameters") or {}).items():
            if tensor is not None:
                tensors[prefix + name] = tensor
        for name, tensor in (self.state.get("_buffers") or {}).items():
            if tensor is not None and name not in non_persistent:
                tensors[prefix + name] = tensor
        for name, child in (self.state.get("_modules") or {}).items():
            if child is None:
                continue
            if not isinstance(child, PersistentRecord):
                raise UnsafePickleError(f"submodule {prefix + name!r} is not a persistent-class record")
            tensors.update(child.tensors(f"{prefix}{name}."))
        return tensors


class EasyDictStandIn(dict):
    """Stands in for `dnnlib.util.EasyDict` (a dict subclass); only its items matter."""


def _persistent_record(meta: Any) -> PersistentRecord:
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise UnsafePickleError("malformed torch_utils.persistence record (expected meta with type='class')")
    class_name, state, module_src = meta.get("class_name"), meta.get("state"), meta.get("module_src")
    if not isinstance(class_name, str) or not isinstance(state, dict) or not isinstance(module_src, str):
        raise UnsafePickleError("malformed torch_utils.persistence record (class_name, state, module_src)")
    return PersistentRecord(class_name=class_name, state=dict(state), module_src=module_src)


def _storage_from_bytes(data: Any) -> torch.TypedStorage:
    if not isinstance(data, (bytes, bytearray)):
        raise UnsafePickleError("torch storage record does not hold bytes")
    storage = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise UnsafePickleError(f"storage bytes decode to {type(storage).__name__}, not a storage")
    return storage


def _rebuild_tensor(storage: Any, storage_offset: int, size: tuple, stride: tuple, *_flags: Any) -> torch.Tensor:
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise UnsafePickleError("tensor record does not reference a storage")
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, False, collections.OrderedDict())


def _rebuild_parameter(data: Any, *_flags: Any) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise UnsafePickleError("parameter record does not hold a tensor")
    return data


def _numpy_dtype(spec: Any, align: bool = False, copy: bool = False) -> np.dtype:
    if not isinstance(spec, str):
        raise UnsafePickleError("numpy dtype record is not a type string")
    return np.dtype(spec, align=bool(align), copy=bool(copy))


def _numpy_scalar(dtype: Any, data: Any = None) -> np.generic:
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biufc" or not isinstance(data, bytes):
        raise UnsafePickleError("only numeric numpy scalars are accepted")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _numpy_array_shell(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise UnsafePickleError("only plain numpy arrays are accepted")
    # BUILD then fills it via ndarray.__setstate__, which only copies the pickled raw bytes.
    return np.ndarray.__new__(np.ndarray, shape, _numpy_dtype(dtype) if isinstance(dtype, str) else dtype)


_NUMPY_GLOBALS = {
    "dtype": _numpy_dtype,
    "scalar": _numpy_scalar,
    "_reconstruct": _numpy_array_shell,
    "ndarray": np.ndarray,
}

ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent_record,
    ("dnnlib.util", "EasyDict"): EasyDictStandIn,
    ("dnnlib", "EasyDict"): EasyDictStandIn,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("numpy", "dtype"): _NUMPY_GLOBALS["dtype"],
    ("numpy", "ndarray"): np.ndarray,
    **{
        (module, name): function
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name, function in _NUMPY_GLOBALS.items()
        if name != "dtype"
    },
}


class RestrictedNvidiaUnpickler(pickle.Unpickler):
    """Unpickler that resolves only `ALLOWED_GLOBALS` and refuses persistent ids."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load {module}.{name}: not part of an NVIDIA network pickle "
                "(this loader never runs code from a checkpoint)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refusing a pickle with persistent ids: not an NVIDIA network pickle")


def load_nvidia_pickle(path: Path) -> dict:
    """The top-level dict of an NVIDIA network pickle ({'G', 'D', 'G_ema', ...}) with networks as records."""
    with open(path, "rb") as stream:
        data = RestrictedNvidiaUnpickler(stream).load()
    if not isinstance(data, dict):
        raise UnsafePickleError(f"{path}: top level is {type(data).__name__}, not an NVIDIA network dict")
    return data


def nvidia_pickle_generator(path: Path) -> PersistentRecord:
    """The `G_ema` record of an NVIDIA network pickle (the generator NVIDIA's own tools use)."""
    record = load_nvidia_pickle(path).get("G_ema")
    if not isinstance(record, PersistentRecord):
        raise UnsafePickleError(f"{path}: no G_ema network record in the pickle")
    return record

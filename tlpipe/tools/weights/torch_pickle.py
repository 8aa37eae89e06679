"""Read a legacy (pre-zip) `torch.save` state dict with numpy alone, through a restricted unpickler.

The legacy stream is five pickles and raw data, one after another:
magic number, protocol version, system info, the state dict (tensors refer to storages through
`persistent_load` ids), the list of storage keys; then, per listed key, an 8-byte little-endian element
count and the storage's raw little-endian bytes.

The unpickler resolves no global except `collections.OrderedDict`, torch's tensor/parameter rebuild
functions and torch's storage type names, each mapped to a harmless stand-in here; anything else
(`os.system`, `builtins.eval`, …) raises `UnsafePickleError`, so reading a file cannot run code.
"""

from __future__ import annotations

import collections
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
ZIP_MAGIC = b"PK\x03\x04"

# torch storage type name -> little-endian numpy dtype
STORAGE_DTYPES = {
    "DoubleStorage": "<f8",
    "FloatStorage": "<f4",
    "HalfStorage": "<f2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


class TorchPickleError(ValueError):
    """The file is not a well-formed legacy torch.save stream."""


class UnsafePickleError(TorchPickleError):
    """The pickle asks for a global outside the allow-list (it could run code)."""


@dataclass(frozen=True)
class _StorageType:
    name: str
    dtype: np.dtype


@dataclass
class _Storage:
    """A placeholder for a storage whose bytes follow the pickles; filled in by `_read_storages`."""

    key: str
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None


@dataclass(frozen=True)
class _LazyTensor:
    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def materialize(self, name: str) -> np.ndarray:
        """A contiguous numpy copy of the tensor's view into its storage (bounds-checked)."""
        if len(self.size) != len(self.stride) or any(d < 0 for d in self.size) or any(s < 0 for s in self.stride):
            raise TorchPickleError(f"tensor {name!r}: bad size {self.size} / stride {self.stride}")
        if 0 in self.size:
            return np.zeros(self.size, dtype=self.storage.dtype.newbyteorder("="))
        last = self.offset + sum((d - 1) * s for d, s in zip(self.size, self.stride, strict=True))
        if self.offset < 0 or last >= self.storage.numel:
            raise TorchPickleError(
                f"tensor {name!r} reaches element {last} of storage {self.storage.key!r} "
                f"which holds {self.storage.numel}"
            )
        data = self.storage.data
        item = data.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :], shape=self.size, strides=tuple(s * item for s in self.stride), writeable=False
        )
        return np.ascontiguousarray(view).astype(data.dtype.newbyteorder("="), copy=False)


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored) -> _LazyTensor:
    """Stand-in for torch._utils._rebuild_tensor(_v2): requires_grad, hooks and metadata do not matter here."""
    if not isinstance(storage, _Storage):
        raise TorchPickleError(f"tensor rebuilt from {type(storage).__name__}, expected a storage reference")
    return _LazyTensor(storage, int(storage_offset), tuple(int(d) for d in size), tuple(int(s) for s in stride))


def _rebuild_parameter(data, *_ignored) -> _LazyTensor:
    """Stand-in for torch._utils._rebuild_parameter: a parameter is its tensor."""
    if not isinstance(data, _LazyTensor):
        raise TorchPickleError(f"parameter rebuilt from {type(data).__name__}, expected a tensor")
    return data


ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name, np.dtype(dtype)) for name, dtype in STORAGE_DTYPES.items()},
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only ALLOWED_GLOBALS and turns storage references into placeholders."""

    def __init__(self, file, storages: dict[str, _Storage] | None = None):
        super().__init__(file)
        self.storages = storages if storages is not None else {}

    def find_class(self, module: str, name: str):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load global {module}.{name}: only OrderedDict, torch's tensor rebuild "
                f"functions and storage types are allowed in a weights file"
            ) from None

    def persistent_load(self, pid):
        # ("storage", storage type, key, device, element count, view metadata (None: a whole storage))
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise TorchPickleError(f"unsupported persistent id {pid!r:.80}")
        if len(pid) == 6 and pid[5] is not None:
            raise TorchPickleError(f"storage views are not supported: {pid!r:.80}")
        _, storage_type, key, _device, numel = pid[:5]
        if not isinstance(storage_type, _StorageType):
            raise TorchPickleError(f"storage {key!r} has type {storage_type!r:.80}, expected a torch storage type")
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise TorchPickleError(f"malformed storage reference {pid!r:.80}")
        storage = self.storages.get(key)
        if storage is None:
            storage = self.storages[key] = _Storage(key, storage_type.dtype, numel)
        elif storage.dtype != storage_type.dtype or storage.numel != numel:
            raise TorchPickleError(f"storage {key!r} referenced with two different types or sizes")
        return storage


def _read_storages(stream: BinaryIO, storages: dict[str, _Storage], keys: list[str]) -> None:
    if not isinstance(keys, list) or sorted(keys) != sorted(storages):
        raise TorchPickleError("storage key list does not match the storages the tensors refer to")
    for key in keys:
        storage = storages[key]
        header = stream.read(8)
        if len(header) != 8:
            raise TorchPickleError(f"file ends before storage {key!r}")
        (count,) = struct.unpack("<q", header)
        if count != storage.numel:
            raise TorchPickleError(f"storage {key!r} holds {count} elements, the pickle said {storage.numel}")
        nbytes = count * storage.dtype.itemsize
        raw = stream.read(nbytes)
        if len(raw) != nbytes:
            raise TorchPickleError(f"file ends inside storage {key!r} ({len(raw)} of {nbytes} bytes)")
        storage.data = np.frombuffer(raw, dtype=storage.dtype)


def load_state_dict(source: str | Path | BinaryIO) -> collections.OrderedDict[str, np.ndarray]:
    """The tensors of a legacy `torch.save(state_dict)` file (path or binary stream) as numpy arrays, in order."""
    if isinstance(source, str | Path):
        with Path(source).open("rb") as stream:
            return _load(stream, str(source))
    return _load(source, "checkpoint")


def _load(stream: BinaryIO, name: str) -> collections.OrderedDict[str, np.ndarray]:
    if stream.read(4) == ZIP_MAGIC:
        raise TorchPickleError(f"{name} is a zip-format torch checkpoint; only the legacy format is supported")
    stream.seek(0)
    try:
        if RestrictedUnpickler(stream).load() != MAGIC_NUMBER:
            raise TorchPickleError(f"{name} is not a torch.save file (wrong magic number)")
        if (version := RestrictedUnpickler(stream).load()) != PROTOCOL_VERSION:
            raise TorchPickleError(f"{name}: unsupported torch.save protocol {version!r}")
        sys_info = RestrictedUnpickler(stream).load()
        if not (isinstance(sys_info, dict) and sys_info.get("little_endian")):
            raise TorchPickleError(f"{name} was written on a big-endian machine; not supported")
        storages: dict[str, _Storage] = {}
        state = RestrictedUnpickler(stream, storages).load()
        keys = RestrictedUnpickler(stream).load()
    except TorchPickleError:
        raise
    except Exception as exc:  # a malformed stream fails in many ways (EOFError, TypeError from a bad REDUCE, …)
        raise TorchPickleError(f"{name}: corrupt pickle stream ({type(exc).__name__}: {exc})") from exc
    _read_storages(stream, storages, keys)
    if not isinstance(state, dict):
        raise TorchPickleError(f"{name} holds a {type(state).__name__}, expected a state dict")
    tensors: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
    for key, value in state.items():
        if not isinstance(value, _LazyTensor):
            raise TorchPickleError(f"state dict entry {key!r} is a {type(value).__name__}, not a tensor")
        tensors[key] = value.materialize(key)
    return tensors

"""Saving analysis results without pickle: loading a results folder can never run code.

A part is one safetensors file: its tensors, and in the header's metadata the JSON structure
that refers to them.  What can be stored:

- None, bool, int, float (NaN and ±inf included), str;
- lists, tuples and dicts (any JSON-able keys: str, int, float, bool, None; tuples of them);
- torch tensors (any dtype safetensors holds; stored contiguous on the CPU) and numpy arrays;
- dataclass instances of the project's own result classes (modules under ``analyses.``,
  ``interp.`` and ``probes.``), rebuilt field by field without running a constructor.

Anything else is refused when saving (a clear TypeError), and a file naming any other class, or
malformed in any way, is refused when loading (:class:`UnsafePart`): no pickle, no import outside
the project's packages, no constructor other than the dataclass's own.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import math
from typing import Any

import torch

ALLOWED_MODULES = ("analyses.", "interp.", "probes.")

#: Modules of result classes before analyses/ became subpackages by hypothesis: parts saved then
#: (a resumable run started before the move) still load.
MOVED = {f"analyses.{old}": f"analyses.{new}" for old, new in {
    "kernel_regression": "kernel.reconstruction", "kernel_similarity": "kernel.similarity", "kv_probes": "kernel.kv_probes",
    "anchors": "kernel.anchors", "icl_vs_gd": "gd.icl_vs_gd", "order_sensitivity": "gd.order_sensitivity",
    "head_attribution": "heads.attribution", "function_vectors": "heads.function_vectors", "task_vectors": "heads.task_vectors",
    "induction": "heads.induction", "heads_report": "heads.atlas", "linreg_algorithms": "linreg.algorithms",
    "linreg_gd_check": "linreg.gd_check", "linreg_kernel": "linreg.kernel", "linreg_probes": "linreg.probes"}.items()}


class UnsafePart(ValueError):
    """A saved part that is not what this module writes (tampered, foreign or corrupt)."""


def _qualname(cls) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-able structure of ``value``; tensors go into ``tensors`` under generated names."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = value.detach().cpu().contiguous().clone()
        return {"__tensor__": name}
    if type(value).__module__ == "numpy" and hasattr(value, "dtype"):
        if getattr(value, "ndim", 0) == 0:  # a numpy scalar
            return encode(value.item(), tensors)
        name = f"t{len(tensors)}"
        tensors[name] = torch.from_numpy(value.copy())
        return {"__ndarray__": name}
    if isinstance(value, tuple):
        return {"__tuple__": [encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [encode(v, tensors) for v in value]
    if isinstance(value, dict):
        return {"__dict__": [[encode(k, tensors), encode(v, tensors)] for k, v in value.items()]}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        if not cls.__module__.startswith(ALLOWED_MODULES):
            raise TypeError(f"cannot save a {_qualname(cls)} safely: only the project's own result classes are stored")
        return {"__dataclass__": _qualname(cls),
                "fields": {f.name: encode(getattr(value, f.name), tensors) for f in dataclasses.fields(value)}}
    raise TypeError(f"cannot save a {type(value).__name__} as an analysis part: return tensors, numbers, strings, lists, dicts "
                    "or the project's result dataclasses")


def _dataclass(qualname: str):
    if not isinstance(qualname, str) or ":" not in qualname:
        raise UnsafePart(f"malformed class name {qualname!r}")
    module, name = qualname.split(":", 1)
    if not module.startswith(ALLOWED_MODULES) or "." in name or not name.isidentifier():
        raise UnsafePart(f"refusing to load class {qualname!r}: only the project's own result classes are loaded")
    try:
        cls = getattr(importlib.import_module(MOVED.get(module, module)), name, None)
    except ImportError:
        cls = None
    if cls is None or not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise UnsafePart(f"{qualname!r} is not one of the project's result dataclasses")
    return cls


def decode(data: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`encode`; :class:`UnsafePart` for anything it would not have written."""
    if data is None or isinstance(data, (bool, int, float, str)):
        return data
    if isinstance(data, list):
        return [decode(v, tensors) for v in data]
    if not isinstance(data, dict) or len(data) not in (1, 2):
        raise UnsafePart(f"unexpected entry {str(data)[:80]!r}")
    if set(data) == {"__float__"}:
        if data["__float__"] not in ("nan", "inf", "-inf"):
            raise UnsafePart(f"bad float {data['__float__']!r}")
        return float(data["__float__"])
    if set(data) in ({"__tensor__"}, {"__ndarray__"}):
        key = data.get("__tensor__", data.get("__ndarray__"))
        if key not in tensors:
            raise UnsafePart(f"tensor {key!r} is missing from the part's safetensors file")
        return tensors[key] if "__tensor__" in data else tensors[key].numpy()
    if set(data) == {"__tuple__"}:
        return tuple(decode(v, tensors) for v in _list(data["__tuple__"]))
    if set(data) == {"__dict__"}:
        out = {}
        for pair in _list(data["__dict__"]):
            if not isinstance(pair, list) or len(pair) != 2:
                raise UnsafePart("malformed dict entry")
            key = decode(pair[0], tensors)
            try:
                hash(key)
            except TypeError as err:
                raise UnsafePart("unhashable dict key") from err
            out[key] = decode(pair[1], tensors)
        return out
    if set(data) == {"__dataclass__", "fields"}:
        cls = _dataclass(data["__dataclass__"])
        fields = data["fields"]
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(fields, dict) or set(fields) != names:
            raise UnsafePart(f"{data['__dataclass__']}: the saved fields do not match the class (saved by another version?)")
        obj = object.__new__(cls)  # the saved state as it was; no constructor runs
        for k, v in fields.items():
            object.__setattr__(obj, k, decode(v, tensors))
        return obj
    raise UnsafePart(f"unexpected entry {str(data)[:80]!r}")


def _list(value) -> list:
    if not isinstance(value, list):
        raise UnsafePart("malformed entry: expected a list")
    return value


FORMAT = "icl-interp part 1"


def dumps(value: Any) -> bytes:
    """``value`` as the bytes of one safetensors file (structure in the header's metadata)."""
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    structure = json.dumps(encode(value, tensors), allow_nan=False)
    return save(tensors, metadata={"format": FORMAT, "value": structure})


def loads(blob: bytes) -> Any:
    """Inverse of :func:`dumps`; :class:`UnsafePart` for anything else."""
    import struct

    from safetensors.torch import load

    try:
        (n,) = struct.unpack("<Q", blob[:8])
        header = json.loads(blob[8:8 + n])
        meta = header["__metadata__"]
        if meta.get("format") != FORMAT:
            raise KeyError("format")
        structure = json.loads(meta["value"])
        tensors = load(blob)
    except Exception as err:  # noqa: BLE001 - any malformed file: refuse it, naming why
        raise UnsafePart(f"not a part saved by icl-interp ({type(err).__name__}: {err})") from err
    return decode(structure, tensors)

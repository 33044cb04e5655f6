"""Input conversion shared by the probes: tensors or arrays in, float64 torch / numpy labels out."""
from __future__ import annotations

from typing import Any, Union

import numpy as np
import torch
from jaxtyping import Float

ArrayLike = Union[torch.Tensor, np.ndarray, "list[Any]"]
Features = Union[Float[torch.Tensor, "n d"], Float[np.ndarray, "n d"]]
Targets = Union[Float[torch.Tensor, "n *k"], Float[np.ndarray, "n *k"]]


def as_float64(x: ArrayLike, device: torch.device | str | None = None) -> torch.Tensor:
    """``x`` as a float64 torch tensor (on ``device``, or on its own device when it is a tensor)."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
        if device is not None:
            t = t.to(device)
        return t.to(torch.float64)
    return torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=torch.float64, device=device)


def as_features(X: ArrayLike, device: torch.device | str | None = None) -> torch.Tensor:
    """A 2-D float64 feature matrix [n, d]; a 1-D input is one feature per row."""
    t = as_float64(X, device)
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2:
        raise ValueError(f"features must be [n, d], got shape {tuple(t.shape)}")
    return t


def as_numpy(x: ArrayLike) -> np.ndarray:
    """``x`` as a numpy array (tensors are detached and moved to the CPU)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def as_labels(y: ArrayLike) -> np.ndarray:
    """Class labels as a 1-D numpy array (any dtype numpy can sort: ints, strings, ...)."""
    a = as_numpy(y)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise ValueError(f"class labels must be 1-D, got shape {a.shape}")
    return a


def index(x: Any, idx: np.ndarray) -> Any:
    """Rows ``idx`` of a tensor or array (the index moves to the tensor's device)."""
    if isinstance(x, torch.Tensor):
        return x[torch.as_tensor(idx, dtype=torch.long, device=x.device)]
    return np.asarray(x)[idx]


def n_rows(x: Any) -> int:
    return int(x.shape[0]) if hasattr(x, "shape") else len(x)

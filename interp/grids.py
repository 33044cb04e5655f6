"""Helpers for per-(layer, head) grids."""
from __future__ import annotations

import torch


def top_cells(grid: torch.Tensor, k: int = 5, key: torch.Tensor | None = None) -> list[tuple[int, int, float]]:
    """The ``k`` cells of a 2-D ``grid`` ranked by ``key`` (default: the grid itself), largest
    first, as (row, col, grid value).  Ties keep the lower flat index first."""
    key = grid if key is None else key
    order = torch.sort(key.flatten(), descending=True, stable=True).indices[:k]
    cols = grid.shape[1]
    return [(int(i) // cols, int(i) % cols, float(grid.flatten()[i])) for i in order]

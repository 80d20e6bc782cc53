"""Morphological thinning as MATLAB's ``bwmorph(bw, 'thin', Inf)``, which the BSDS and SEISM
boundary benchmarks apply to every thresholded prediction and ground-truth map.

MATLAB documents its 'thin' operation as the two-subiteration parallel algorithm of
Guo & Hall (1989) in the form given by Lam, Lee & Suen, "Thinning Methodologies - A
Comprehensive Survey", IEEE TPAMI 14(9), 1992, p. 879. With the eight neighbours of a pixel
numbered counter-clockwise from the east, x1 = E, x2 = NE, x3 = N, x4 = NW, x5 = W, x6 = SW,
x7 = S, x8 = SE (north = the previous row), a foreground pixel is deleted

- in the first subiteration when G1, G2 and G3 hold,
- in the second subiteration when G1, G2 and G3' hold,

  G1: the Hilditch crossing number X_H = sum_{i=1..4} [x_{2i-1} = 0 and (x_{2i} or x_{2i+1})]
      equals 1 (x9 = x1);
  G2: 2 <= min(n1, n2) <= 3 with n1 = sum_k (x_{2k-1} or x_{2k}),
      n2 = sum_k (x_{2k} or x_{2k+1});
  G3: (x2 or x3 or not x8) and x1 is false;   G3': (x6 or x7 or not x4) and x5 is false.

Deletions within a subiteration are simultaneous; the two subiterations repeat until an
iteration changes nothing. Pixels outside the image count as background.

The implementation evaluates the rule only on pixels whose neighbourhood changed since that
subiteration last looked at them (an exact shortcut: a pixel's decision depends on its 3x3
neighbourhood alone), so thinning a map with a few thousand edge pixels costs about as much
as those pixels, not the whole image.
"""

from __future__ import annotations

import numpy as np

# bit k of a neighbourhood code is neighbour x_{k+1}: E, NE, N, NW, W, SW, S, SE
_DIRECTIONS = ((0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1))


def _deletion_tables() -> tuple[np.ndarray, np.ndarray]:
    """Boolean tables over the 256 neighbourhood codes: delete in subiteration 1 / 2."""
    codes = np.arange(256)
    x = [None] + [((codes >> k) & 1).astype(bool) for k in range(8)]  # x[1..8]
    x.append(x[1])  # x9 = x1
    crossing = sum((~x[2 * i - 1] & (x[2 * i] | x[2 * i + 1])).astype(int) for i in range(1, 5))
    n1 = sum((x[2 * k - 1] | x[2 * k]).astype(int) for k in range(1, 5))
    n2 = sum((x[2 * k] | x[2 * k + 1]).astype(int) for k in range(1, 5))
    low = np.minimum(n1, n2)
    g12 = (crossing == 1) & (low >= 2) & (low <= 3)
    g3 = ~((x[2] | x[3] | ~x[8]) & x[1])
    g3p = ~((x[6] | x[7] | ~x[4]) & x[5])
    return g12 & g3, g12 & g3p


DELETE_FIRST, DELETE_SECOND = _deletion_tables()


def thin(mask: np.ndarray) -> np.ndarray:
    """Thin binary maps to one-pixel-wide, 8-connected strokes (``bwmorph(.,'thin',Inf)``).

    Args:
        mask: ``[H, W]`` or ``[N, H, W]`` array, nonzero = foreground; the ``N`` maps are
            thinned independently (in one pass, which amortises the per-step overhead when
            thinning one prediction at many thresholds).

    Returns:
        bool array of the shape of ``mask``, a subset of it.
    """
    mask = np.asarray(mask)
    if mask.ndim not in (2, 3):
        raise ValueError(f"thin expects [H, W] or [N, H, W] maps, got shape {mask.shape}")
    stack = mask[None] if mask.ndim == 2 else mask
    count, height, width = stack.shape
    stride = width + 2
    # a zero frame around every map: the outside is background, and no neighbour offset
    # of an inner pixel reaches into the next map of the stack
    padded = np.zeros((count, height + 2, width + 2), dtype=bool)
    padded[:, 1:-1, 1:-1] = stack
    flat = padded.ravel()
    offsets = np.array([dy * stride + dx for dy, dx in _DIRECTIONS], dtype=np.int64)
    stamp = np.zeros(flat.size, dtype=np.int32)

    def unique(indices: np.ndarray) -> np.ndarray:
        # O(n) de-duplication: with repeated indices the last assignment wins
        positions = np.arange(indices.size, dtype=np.int32)
        stamp[indices] = positions
        return indices[stamp[indices] == positions]

    def neighbours_in_foreground(deleted: np.ndarray) -> np.ndarray:
        touched = unique((deleted[:, None] + offsets[None, :]).ravel())
        return touched[flat[touched]]

    # First iteration on every pixel at once (array slices: cheap per pixel); afterwards a
    # pixel's decision can only change when a neighbour was deleted (it depends on its 3x3
    # neighbourhood alone), so subiteration s re-decides just dirty[s], the foreground
    # neighbours of the pixels deleted since it last ran.
    tables = (DELETE_FIRST, DELETE_SECOND)
    dirty: list[np.ndarray] = []
    for s in (0, 1):
        codes = np.zeros((count, height, width), dtype=np.uint8)
        for k, (dy, dx) in enumerate(_DIRECTIONS):
            codes |= padded[:, 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width].astype(
                np.uint8
            ) << np.uint8(k)
        delete = tables[s][codes] & padded[:, 1:-1, 1:-1]
        n, y, x = np.nonzero(delete)
        deleted = (n * (height + 2) + y + 1) * stride + x + 1
        flat[deleted] = False
        touched = neighbours_in_foreground(deleted)
        if s == 0:
            dirty.append(touched)
        else:
            dirty[0] = unique(np.concatenate([dirty[0], touched]))
            dirty[0] = dirty[0][flat[dirty[0]]]
            dirty.append(touched)
    while dirty[0].size or dirty[1].size:
        for s in (0, 1):
            candidates = dirty[s]
            if candidates.size == 0:
                continue
            codes = np.zeros(candidates.size, dtype=np.uint8)
            for k, offset in enumerate(offsets.tolist()):
                codes |= flat[candidates + offset].view(np.uint8) << np.uint8(k)
            deleted = candidates[tables[s][codes]]
            if deleted.size == 0:
                dirty[s] = deleted
                continue
            flat[deleted] = False
            touched = neighbours_in_foreground(deleted)
            dirty[s] = touched
            merged = unique(np.concatenate([dirty[1 - s], touched]))
            dirty[1 - s] = merged[flat[merged]]
    out = padded[:, 1:-1, 1:-1]
    return out[0].copy() if mask.ndim == 2 else out.copy()

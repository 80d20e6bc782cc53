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

The implementation keeps every pixel's neighbourhood code up to date as pixels are deleted
and re-decides only pixels whose code changed to a deletable one (an exact shortcut: a
pixel's decision depends on its 3x3 neighbourhood alone), so after one pass over the image
the cost follows the deleted pixels, not the image size. :func:`thin_levels` thins the
nested maps ``levels >= start`` of one prediction and carries that pass from one map to the
next.
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


class _Frame:
    """Maps in a zero frame (the outside is background; no neighbour offset of an inner
    pixel reaches the next map of a stack), flattened, with every pixel's neighbourhood code.
    """

    def __init__(self, stack: np.ndarray) -> None:
        count, height, width = stack.shape
        self.shape = (count, height + 2, width + 2)
        padded = np.zeros(self.shape, dtype=bool)
        padded[:, 1:-1, 1:-1] = stack
        codes = np.zeros(self.shape, dtype=np.uint8)
        inner = codes[:, 1:-1, 1:-1]
        shifted = np.empty(inner.shape, dtype=np.uint8)
        for k, (dy, dx) in enumerate(_DIRECTIONS):
            neighbour = padded[:, 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]
            np.left_shift(neighbour.view(np.uint8), np.uint8(k), out=shifted)
            np.bitwise_or(inner, shifted, out=inner)
        self.flat = padded.ravel()
        self.codes = codes.ravel()
        stride = width + 2
        self.offsets = [dy * stride + dx for dy, dx in _DIRECTIONS]

    def delete(self, pixels: np.ndarray) -> np.ndarray:
        return _delete(self.flat, self.codes, self.offsets, pixels)


# the neighbour in direction k sees a deleted pixel in the opposite direction k + 4
_CLEAR_BIT = [np.uint8(0xFF ^ (1 << ((k + 4) % 8))) for k in range(8)]


def _delete(
    flat: np.ndarray, codes: np.ndarray, offsets: list[int], pixels: np.ndarray
) -> np.ndarray:
    """Clear the distinct flat ``pixels`` and their bits in their neighbours' codes; returns
    the neighbours, ``[8 * n]`` (with repeats)."""
    flat[pixels] = False
    touched = np.empty((8, pixels.size), dtype=np.intp)
    for k in range(8):
        neighbour = np.add(pixels, offsets[k], out=touched[k])
        codes[neighbour] &= _CLEAR_BIT[k]  # distinct indices within one direction
    return touched.ravel()


def _thin_frame(flat: np.ndarray, codes: np.ndarray, offsets: list[int]) -> None:
    """Thin the framed maps ``flat`` (bool) in place; ``codes`` are their current
    neighbourhood codes and are kept up to date."""
    stamp = np.empty(flat.size, dtype=np.int32)  # written before it is read

    def unique(indices: np.ndarray) -> np.ndarray:
        # O(n) de-duplication: with repeated indices the last assignment wins
        positions = np.arange(indices.size, dtype=np.int32)
        stamp[indices] = positions
        return indices[stamp[indices] == positions]

    # Subiteration s deletes exactly the foreground pixels whose current code is in
    # tables[s]. A pixel whose code did not change since s last ran was not deleted then and
    # is not now, so pending[s] only needs the pixels whose code changed to one in tables[s]
    # (a superset is fine: the code is looked up again when s runs). Interior pixels (code
    # 255) are never deletable, so the first candidates are the border pixels.
    tables = (DELETE_FIRST, DELETE_SECOND)
    border = np.flatnonzero(flat & (codes != 255))
    border_codes = codes[border]
    pending = [border[np.take(tables[s], border_codes)] for s in (0, 1)]
    s = 0
    while pending[0].size or pending[1].size:
        candidates = pending[s]
        deleted = candidates[flat[candidates] & np.take(tables[s], codes[candidates])]
        if deleted.size == 0:
            pending[s] = deleted
            s = 1 - s
            continue
        # deletions are simultaneous within a subiteration
        touched = _delete(flat, codes, offsets, unique(deleted))
        touched = touched[flat[touched]]
        touched_codes = codes[touched]
        pending[s] = touched[np.take(tables[s], touched_codes)]
        pending[1 - s] = np.concatenate(
            [pending[1 - s], touched[np.take(tables[1 - s], touched_codes)]]
        )
        s = 1 - s


def thin(mask: np.ndarray) -> np.ndarray:
    """Thin binary maps to one-pixel-wide, 8-connected strokes (``bwmorph(.,'thin',Inf)``).

    Args:
        mask: ``[H, W]`` or ``[N, H, W]`` array, nonzero = foreground; the ``N`` maps are
            thinned independently (one map at a time is fastest: the working arrays of a
            480x640 map stay in cache).

    Returns:
        bool array of the shape of ``mask``, a subset of it.
    """
    mask = np.asarray(mask)
    if mask.ndim not in (2, 3):
        raise ValueError(f"thin expects [H, W] or [N, H, W] maps, got shape {mask.shape}")
    frame = _Frame(mask[None] if mask.ndim == 2 else mask)
    _thin_frame(frame.flat, frame.codes, frame.offsets)
    out = frame.flat.reshape(frame.shape)[:, 1:-1, 1:-1]
    return out[0].copy() if mask.ndim == 2 else out.copy()


def thin_levels(levels: np.ndarray, starts: list[int]) -> list[np.ndarray]:
    """Thinned ``levels >= start`` for each start, as flat indices into ``[H, W]``.

    Equal to ``np.flatnonzero(thin(levels >= start))`` per start; the maps are nested, so
    the unthinned map and its codes are carried from one start to the next (pixels below
    the new start are deleted from it) instead of being rebuilt.

    Args:
        levels: ``[H, W]`` integer map (the 8-bit levels of a prediction).
        starts: increasing levels.

    Returns:
        one ``[n_k]`` int64 array per start.
    """
    levels = np.asarray(levels)
    width = levels.shape[1]
    order = np.argsort(levels, axis=None, kind="stable")
    sorted_levels = levels.ravel()[order]
    # flat index of every image pixel in the frame
    framed = (order // width + 1) * (width + 2) + order % width + 1
    out = []
    base = None
    done = 0
    for start in starts:
        upto = int(np.searchsorted(sorted_levels, start, side="left"))
        if base is None:
            base = _Frame((levels >= start)[None])
        elif upto > done:
            base.delete(framed[done:upto])
        done = max(done, upto)
        flat, codes = base.flat.copy(), base.codes.copy()
        _thin_frame(flat, codes, base.offsets)
        kept = np.flatnonzero(flat)
        out.append((kept // (width + 2) - 1) * width + kept % (width + 2) - 1)
    return out

"""The Jacobian of the task losses with respect to the shared parameters, kept in blocks.

:class:`~scenemtl.balancing.gradient.GradientBalancer` with ``wrt: parameters`` needs the
Jacobian ``J`` [K, n] of the task losses with respect to the ``n`` shared parameters, its
Gram matrix ``J J^T`` and an update [n] made from it. ``J`` is kept here as one block
per parameter (K flat rows), never as one [K, n] matrix unless an aggregator needs it
whole:

* one [K, n] float32 matrix is ~100 MB for a ResNet-18 and two tasks; an allocation that
  large is fresh memory from the system at every step (glibc serves blocks above 32 MB
  with mmap and returns them), and touching it for the first time costs as much as the
  copy into it. Blocks of parameter size are reused from the heap, as autograd's own
  gradients are;
* the rows are autograd's gradients of one backward pass per task
  (:func:`parameter_jacobian`, the same ``torch.autograd.grad`` calls as torchjd's
  ``jac(..., parallel_chunk_size=1)``), not copied: torchjd concatenates them per
  parameter, again into the whole matrix, and the Gram matrix was computed from a float64
  copy of it;
* the Gram matrix is summed over column chunks that stay in cache (:func:`gram_matrix`),
  the update of a Gram-based aggregator is ``sum_k w_k row_k`` written into the first row
  (:func:`combine`); an aggregator that needs the rows as a matrix gets them stacked per
  parameter (:func:`stacked`), and one that works column by column (GradDrop with
  torchjd's stream) runs on column chunks (:func:`columnwise`);
* the heads' passes at the cut also give the plain heads' gradient (:func:`cut_jacobian`).

docs/balancing.md ("Where the time goes") has the profile behind these choices.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

CHUNK = 1 << 16
"""Columns per chunk of :func:`gram_matrix` and :func:`columnwise`: a [K, 65536] chunk and
its temporaries stay in the core's cache."""


def parameter_jacobian(
    outputs: Sequence[Tensor], jac_outputs: Sequence[Tensor], params: Sequence[Tensor]
) -> list[list[Tensor]]:
    """The rows ``jac_outputs[.][k]`` backpropagated through ``outputs`` into ``params``,
    one backward pass per row (the graph is freed after the last one).

    Args:
        outputs: tensors computed from ``params``.
        jac_outputs: one per output, [K, *output.shape]: the K vectors to backpropagate.
        params: the tensors to differentiate with respect to (their ``.grad`` is not
            touched).

    Returns:
        per parameter ``p``, its K rows, each flat [numel]: row k is the gradient of
        ``sum_o <jac_outputs[o][k], outputs[o]>`` with respect to ``p`` (zeros where
        ``p`` does not reach ``outputs``). The rows are autograd's own tensors (copied
        only where one would share memory with another row or a ``jac_outputs``).
    """
    k = int(jac_outputs[0].shape[0])
    parts: list[list[Tensor]] = [[] for _ in params]
    # autograd may hand out one tensor as the gradient of two parameters (p1 + p2) or a
    # view of a grad_output (p.view(...)); :func:`combine` writes into the rows, so a
    # row whose memory is already someone's is copied
    taken = {j.untyped_storage().data_ptr() for j in jac_outputs}
    for i in range(k):
        grads = torch.autograd.grad(
            list(outputs),
            list(params),
            grad_outputs=[j[i] for j in jac_outputs],
            retain_graph=i < k - 1,
            allow_unused=True,
        )
        for rows, g, p in zip(parts, grads, params, strict=True):
            if g is None:
                rows.append(torch.zeros(p.numel(), dtype=p.dtype, device=p.device))
                continue
            if g.untyped_storage().data_ptr() in taken:
                g = g.clone()
            taken.add(g.untyped_storage().data_ptr())
            rows.append(g.reshape(-1))
    return parts


def gram_matrix(parts: Sequence[Sequence[Tensor]]) -> Tensor:
    """``J J^T`` [K, K] float64 on the CPU of ``J`` = the parameters' rows
    (:func:`parameter_jacobian`) side by side.

    Per chunk of :data:`CHUNK` columns the K rows are stacked (in cache) and multiplied in
    their dtype; the chunks' products are summed in float64. A float32 product over 65536
    columns is accurate to ~1e-7 relative (a float32 Gram matrix of the whole matrix, as
    torchjd computes it, sums n ~ 1e7 terms in float32)."""
    first = parts[0][0]
    k = len(parts[0])
    gramian = torch.zeros(k, k, dtype=torch.float64, device=first.device)
    for rows in parts:
        for start in range(0, rows[0].numel(), CHUNK):
            chunk = torch.stack([r[start : start + CHUNK] for r in rows])
            gramian += (chunk @ chunk.T).double()
    return gramian.cpu()


def combine(weights: Tensor, parts: list[list[Tensor]]) -> list[Tensor]:
    """``sum_k weights[k] * row_k`` per parameter, into its first row (in place: the rows
    are not used afterwards). [K] weights -> one [numel] per parameter."""
    w = [float(v) for v in weights]
    out = []
    for rows in parts:
        vector = rows[0] if w[0] == 1.0 else rows[0].mul_(w[0])  # x * 1 = x: one pass less
        for wk, row in zip(w[1:], rows[1:], strict=True):
            vector.add_(row, alpha=wk)
        out.append(vector)
    return out


def stacked(parts: list[list[Tensor]]) -> list[Tensor]:
    """The rows of each parameter as one block [K, numel] (the rows are released)."""
    blocks = []
    for rows in parts:
        blocks.append(torch.stack(rows))
        rows.clear()
    return blocks


def columnwise(aggregate: Callable[[Tensor], Tensor], blocks: Sequence[Tensor]) -> list[Tensor]:
    """An aggregator whose column j of the output depends on column j of the matrix only
    (and on random numbers drawn one per column, in column order) applied to chunks of
    :data:`CHUNK` columns: the same result as on the whole matrix, computed in cache.
    [K, m_b] blocks -> one [m_b] per block."""
    out = []
    for block in blocks:
        vector = torch.empty(block.shape[1], dtype=block.dtype, device=block.device)
        for start in range(0, block.shape[1], CHUNK):
            vector[start : start + CHUNK] = aggregate(block[:, start : start + CHUNK])
        out.append(vector)
    return out


def add_to_grads(parts: Sequence[Tensor], params: Sequence[Tensor]) -> None:
    """Accumulate ``parts`` (one flat [numel] per parameter) into the ``.grad`` of
    ``params`` (set to them, reshaped, where there is none)."""
    taken: set[int] = set()
    for p, g in zip(params, parts, strict=True):
        g = g.view(p.shape).to(p.dtype)
        if p.grad is None:
            # a later accumulation adds into .grad in place: one tensor per parameter
            if g.untyped_storage().data_ptr() in taken:
                g = g.clone()
            taken.add(g.untyped_storage().data_ptr())
            p.grad = g
        else:
            p.grad += g


def cut_jacobian(
    losses: Sequence[Tensor], cut: Sequence[Tensor], own: Sequence[Tensor]
) -> tuple[list[Tensor], list[list[Tensor | None]]]:
    """The task losses' gradients at the cut and, in the same passes, their gradients
    with respect to the task-specific parameters ``own``: one backward pass per loss
    through the heads, where torchjd's ``jac`` made K for the cut and the heads' gradient
    took one more. The graph is freed after the last pass.

    Args:
        losses: K' scalar losses computed from ``cut`` and ``own``.
        cut: leaf tensors the losses were computed from.
        own: parameters whose per-loss gradients are wanted.

    Returns:
        ([K', *c.shape] per tensor c of ``cut``, zeros where a loss does not reach it;
        per loss, per parameter of ``own`` its gradient, None where the loss does not
        reach it).
    """
    rows: list[list[Tensor]] = [[] for _ in cut]
    per_loss: list[list[Tensor | None]] = []
    inputs = [*cut, *own]
    for i, loss in enumerate(losses):
        grads = torch.autograd.grad(
            loss, inputs, retain_graph=i < len(losses) - 1, allow_unused=True
        )
        for j, (c, g) in enumerate(zip(cut, grads[: len(cut)], strict=True)):
            rows[j].append(torch.zeros_like(c) if g is None else g)
        per_loss.append(list(grads[len(cut) :]))
    return [torch.stack(r) for r in rows], per_loss


def weighted_sum(
    weights: Sequence[float], per_loss: Sequence[Sequence[Tensor | None]]
) -> list[Tensor | None]:
    """``sum_i weights[i] * per_loss[i][j]`` per parameter j, in loss order, skipping the
    Nones (None where all are None); a weight of 1 multiplies nothing."""
    out: list[Tensor | None] = [None] * (len(per_loss[0]) if per_loss else 0)
    for w, grads in zip(weights, per_loss, strict=True):
        for j, g in enumerate(grads):
            if g is None:
                continue
            term = g if w == 1.0 else g * w
            out[j] = term if out[j] is None else out[j] + term
    return out

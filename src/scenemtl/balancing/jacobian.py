"""The Jacobian of the task losses with respect to the shared parameters, kept in blocks.

:class:`~scenemtl.balancing.gradient.GradientBalancer` with ``wrt: parameters`` needs the
Jacobian ``J`` [K, n] of the task losses with respect to the ``n`` shared parameters, its
Gram matrix ``J J^T`` and an update [n] made from it. ``J`` is kept here as one block
[K, numel] per parameter, never as one [K, n] matrix unless an aggregator needs it whole:

* one [K, n] float32 matrix is ~100 MB for a ResNet-18 and two tasks; an allocation that
  large is fresh memory from the system at every step (glibc serves blocks above 32 MB
  with mmap and returns them), and touching it for the first time costs as much as the
  copy into it. Blocks of parameter size are reused from the heap, as autograd's own
  gradients are;
* each block is written once, from the per-task gradients of one backward pass per task
  (:func:`parameter_jacobian`, the same ``torch.autograd.grad`` calls as torchjd's
  ``jac(..., parallel_chunk_size=1)``), instead of torchjd's concatenations per
  parameter, again for the whole matrix, and a float64 copy for the Gram matrix;
* the Gram matrix is summed over column chunks (:func:`gram_matrix`), the update of a
  Gram-based aggregator is ``w @ J`` per block (:func:`combine`), and an aggregator that
  works column by column (GradDrop) runs on column chunks that stay in cache
  (:func:`columnwise`).

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
) -> list[Tensor]:
    """The rows ``jac_outputs[.][k]`` backpropagated through ``outputs`` into ``params``,
    one backward pass per row (the graph is freed after the last one).

    Args:
        outputs: tensors computed from ``params``.
        jac_outputs: one per output, [K, *output.shape]: the K vectors to backpropagate.
        params: the tensors to differentiate with respect to (their ``.grad`` is not
            touched).

    Returns:
        one block [K, numel] per parameter: row k of the block of ``p`` is the gradient
        of ``sum_o <jac_outputs[o][k], outputs[o]>`` with respect to ``p``, flattened
        (zeros where ``p`` does not reach ``outputs``).
    """
    k = int(jac_outputs[0].shape[0])
    blocks = [torch.empty(k, p.numel(), dtype=p.dtype, device=p.device) for p in params]
    for i in range(k):
        grads = torch.autograd.grad(
            list(outputs),
            list(params),
            grad_outputs=[j[i] for j in jac_outputs],
            retain_graph=i < k - 1,
            allow_unused=True,
        )
        for block, g in zip(blocks, grads, strict=True):
            if g is None:
                block[i].zero_()
            else:
                block[i].copy_(g.reshape(-1))
    return blocks


def gram_matrix(blocks: Sequence[Tensor]) -> Tensor:
    """``J J^T`` [K, K] float64 on the CPU of ``J`` = the blocks [K, m_b] side by side.

    Each chunk of :data:`CHUNK` columns is multiplied in float64 (a float64 copy of one
    chunk at a time, not of the whole Jacobian) and the chunks' products are summed: the
    result is the float64 Gram matrix up to float64 rounding."""
    k = int(blocks[0].shape[0])
    gramian = torch.zeros(k, k, dtype=torch.float64, device=blocks[0].device)
    for block in blocks:
        for start in range(0, block.shape[1], CHUNK):
            chunk = block[:, start : start + CHUNK].double()
            gramian.addmm_(chunk, chunk.T)
    return gramian.cpu()


def combine(weights: Tensor, blocks: Sequence[Tensor]) -> list[Tensor]:
    """``weights @ J`` per block: [K] and blocks [K, m_b] -> one [m_b] per block."""
    return [weights.to(block.dtype) @ block for block in blocks]


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
    for p, g in zip(params, parts, strict=True):
        g = g.view(p.shape).to(p.dtype)
        if p.grad is None:
            p.grad = g
        else:
            p.grad += g

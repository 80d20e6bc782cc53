"""The gradient-conflict monitor: how the tasks' gradients on the shared part relate.

Every ``grad_monitor_every`` training steps the engine logs, per pair of tasks, the cosine
of their gradients on the shared parameters and the ratio of their norms. Both come from
the Gram matrix ``G = J J^T`` [K, K] of the Jacobian ``J`` of the constant-weighted task
losses: a gradient-level method has it from its own Jacobian
(:meth:`~scenemtl.balancing.gradient.GradientBalancer.backward`), a loss-level method
computes it with :func:`task_gramian` on the monitored steps only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def task_gramian(losses: Tensor, params: Sequence[nn.Parameter]) -> Tensor:
    """[K, K] float64 Gram matrix of the gradients of ``losses`` [K] on ``params``, on the
    CPU (the graph is kept for the step's own backward)."""
    from torchjd.autojac import jac

    jacs = jac(list(losses), inputs=list(params), retain_graph=True, parallel_chunk_size=1)
    flat = torch.cat([j.detach().flatten(1).double() for j in jacs], dim=1)
    return (flat @ flat.T).cpu()


def gradient_conflict(gramian: Tensor, names: Sequence[str]) -> dict[str, float]:
    """Per pair of tasks (a, b): ``grad_cos_a_b`` (cosine of their gradients, < 0 = conflict)
    and ``grad_norm_ratio_a_b`` (|g_a| / |g_b|), from the Gram matrix [K, K]. A pair with a
    zero gradient (a task of weight 0) has no angle and is left out."""
    out = {}
    diag = gramian.diagonal().clamp(min=0).sqrt()
    for i, a in enumerate(names):
        for j in range(i + 1, len(names)):
            if float(diag[i]) <= 0 or float(diag[j]) <= 0:
                continue
            b = names[j]
            out[f"grad_cos_{a}_{b}"] = float(gramian[i, j]) / float(diag[i] * diag[j])
            out[f"grad_norm_ratio_{a}_{b}"] = float(diag[i] / diag[j])
    return out

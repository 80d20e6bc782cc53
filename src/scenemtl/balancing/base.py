"""What every balancing method shares: the task list, the constant weights, the hooks.

A method turns the per-task losses ``L_k`` of a training step into one update. Loss-level
methods do it with a scalar ``total`` that is backpropagated as usual; gradient-level
methods (:mod:`scenemtl.balancing.gradient`) combine the per-task gradients of the shared
part of the network instead. The configured constant weights ``w_k`` (``loss_weights``)
multiply each task's loss before any method sees it, so they mean the same thing whatever
the method (the log-based methods weight each task's log term by ``w_k``).

**The protocol the engine calls**, the same way for every method (it never asks which
level a method is):

1. :meth:`LossBalancer.check_setup` once when training starts (refuses what the method
   cannot do in this run; :attr:`LossBalancer.averages_gradients` says whether the
   method averages the gradients over processes itself, so DDP's averaging is switched
   off);
2. per training step, :meth:`LossBalancer.cut` of the shared representation is what the
   tasks' branches read; :meth:`LossBalancer.forward` combines the per-task losses into
   the logged total; :meth:`LossBalancer.weighted_losses` gives the ``[K]`` losses
   ``w_k L_k`` with their graph;
3. :meth:`LossBalancer.backward_step` performs the step's backward (loss level: the
   total; gradient level: the Jacobian and its aggregation) and returns what is logged of
   it (:class:`BackwardResult`).

**Partial labels.** A task none of whose samples in the batch has a label is *absent*
from the step (``present[k]`` False, see :func:`present_mask`): its loss is a zero
attached to the graph (so its branch gets a zero gradient, and DDP sees every parameter
used), and every method combines the *present* tasks only, as if the run had only them,
leaving the absent tasks' state (running averages, learned scales, logits) untouched.
docs/balancing.md, "Partial labels", says what each method does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn

from scenemtl.balancing.conflict import task_gramian
from scenemtl.errors import UserError

if TYPE_CHECKING:
    from scenemtl.tasks.base import Task

LOSS_LEVEL = "loss"
GRADIENT_LEVEL = "gradient"


class SplitNetwork(Protocol):
    """What a balancing method needs of the network: which parameters the tasks share."""

    def shared_parameters(self) -> list[nn.Parameter]:
        """The parameters every task's output depends on (the shared part)."""
        ...

    def task_parameters(self) -> list[nn.Parameter]:
        """Every other trainable parameter (the tasks' own branches)."""
        ...


@dataclass
class TrainingStep:
    """One training step as :meth:`LossBalancer.backward_step` sees it.

    Attributes:
        losses: [K] the constant-weighted task losses ``w_k L_k``, with their graph
            (:meth:`LossBalancer.weighted_losses`).
        representation: the shared representation (``shared_forward``'s values).
        cut: what the tasks' branches read of it (:meth:`LossBalancer.cut`'s values).
        monitor: measure the gradient conflict of this step
            (:mod:`scenemtl.balancing.conflict`).
        present: [K] bool, the tasks with a labelled sample in this batch (None: all).
    """

    losses: Tensor
    representation: list[Tensor]
    cut: list[Tensor]
    monitor: bool = False
    present: Tensor | None = None


@dataclass
class BackwardResult:
    """What a backward step reports for logging.

    Attributes:
        weights: [K] effective weight of each ``L_k`` in this step's update, where the
            backward decides them (gradient level); None: those of :meth:`LossBalancer.forward`.
        gramian: [K, K] float64 Gram matrix of the task gradients on the shared
            parameters (the conflict monitor), or None when not measured.
    """

    weights: Tensor | None = None
    gramian: Tensor | None = None


class LossBalancer(nn.Module):
    """Base class of all methods: ``total = sum_k w_k L_k`` unless :meth:`combine` says else.

    Args:
        weights: task name -> non-negative constant weight; missing tasks get 1.0.
        tasks: the tasks to balance (at least one).
    """

    level: ClassVar[str] = LOSS_LEVEL
    """``"loss"``: :meth:`forward`'s total is backpropagated; ``"gradient"``: see
    :class:`~scenemtl.balancing.gradient.GradientBalancer`. For tables and docs: the
    engine calls every method through the same hooks."""
    averages_gradients: ClassVar[bool] = False
    """The method averages the gradients over processes itself (DDP's own averaging must
    then be off); loss-level methods leave it to DDP."""
    base_weights: Tensor

    def __init__(
        self, weights: Mapping[str, float] | None = None, tasks: Sequence[Task] = ()
    ) -> None:
        super().__init__()
        self.tasks: tuple[Task, ...] = tuple(tasks)
        if not self.tasks:
            raise ValueError("a balancing method needs at least one task")
        self.task_names: tuple[str, ...] = tuple(t.name for t in self.tasks)
        self.register_buffer("base_weights", _check_weights(weights, self.task_names))

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    def forward(
        self, losses: Mapping[str, Tensor], present: Mapping[str, bool] | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Combine per-task losses.

        Args:
            losses: task name -> scalar loss, one entry per task (an absent task's is a
                zero with its graph).
            present: task name -> whether the batch has a labelled sample of the task
                (missing names and None: present).

        Returns:
            (total scalar, task name -> detached effective weight ``d total / d L_k``;
            0 for an absent task).
        """
        missing = [n for n in self.task_names if n not in losses]
        if missing:
            raise KeyError(f"losses lack task(s) {missing}")
        stacked = torch.stack([losses[n].float().reshape(()) for n in self.task_names])
        mask = present_mask(self.task_names, present, stacked.device)
        if self.training:
            self.observe(stacked.detach(), mask)
        if mask is not None and not bool(mask.any()):
            # no task has a label in this batch: nothing to learn, and no method is asked
            # to weigh an empty set (a softmax over nothing is NaN)
            return (stacked * 0).sum(), {n: stacked.new_zeros(()) for n in self.task_names}
        total, eff = self.combine(stacked, mask)
        eff = eff.detach()
        return total, {n: eff[i] for i, n in enumerate(self.task_names)}

    def combine(self, losses: Tensor, present: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """[K] losses -> (total scalar, [K] effective weights ``d total / d L_k``).

        ``present`` [K] bool: the tasks of this step (None: all); an absent task's term
        is left out of the total and its effective weight is 0."""
        w = self.base_weights.to(losses.dtype) * _as_weight(present, losses)
        return (w * losses).sum(), w

    def observe(self, losses: Tensor, present: Tensor | None = None) -> None:
        """Called with the detached [K] losses of every training forward and the [K] bool
        mask of the present tasks (None: all); no-op here."""

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the run's optimizer trains with the network (learned weights);
        parameters a method updates itself are not listed."""
        return []

    def on_epoch_start(self, epoch: int) -> None:
        """Start-of-training-epoch hook."""

    def on_epoch_end(self, mean_losses: Mapping[str, float] | None = None) -> None:
        """End-of-training-epoch hook."""

    # -- the training step, as the engine calls it ---------------------------------------

    def check_setup(self, world_size: int, precision: str, has_representation: bool) -> None:
        """Refuse, in one line (:class:`~scenemtl.errors.UserError`), what this method
        cannot do correctly in this run: ``world_size`` processes, Lightning's
        ``precision`` flag, an architecture with (or without) a shared representation.
        A loss-level method works in every run."""

    def cut(self, representation: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """What the tasks' branches read of the shared representation (name -> tensor).
        Loss level: the representation itself (one graph through the whole network)."""
        return dict(representation)

    def weighted_losses(self, losses: Mapping[str, Tensor]) -> Tensor:
        """[K] the constant-weighted task losses ``w_k L_k`` with their graph, in task
        order (task name -> scalar ``L_k`` in ``losses``)."""
        return torch.stack(
            [losses[n] * w for n, w in zip(self.task_names, self.base_weights, strict=True)]
        )

    def backward_step(
        self, loss: Tensor, step: TrainingStep, network: SplitNetwork, *args: Any, **kwargs: Any
    ) -> BackwardResult:
        """Accumulate this step's update into the ``.grad`` of the parameters.

        Loss level: backpropagate ``loss``, the total of :meth:`forward` as the trainer
        hands it over (under 16-mixed already loss-scaled); on a monitored step, the Gram
        matrix of the task gradients on the shared parameters is measured first.

        Args:
            loss: the scalar total to backpropagate.
            step: this step's losses and representation.
            network: the network (its shared and task parameters).
            *args, **kwargs: passed on to ``loss.backward``.
        """
        gramian = None
        if step.monitor:
            shared = network.shared_parameters()
            if shared:
                gramian = task_gramian(step.losses, shared)
        loss.backward(*args, **kwargs)
        return BackwardResult(weights=None, gramian=gramian)

    def current_weights(self) -> dict[str, float]:
        """The effective weights at unit losses, as floats."""
        with torch.no_grad():
            _, eff = self.combine(torch.ones(self.num_tasks, device=self.base_weights.device))
        return {n: float(eff[i]) for i, n in enumerate(self.task_names)}


def present_mask(
    names: Sequence[str], present: Mapping[str, bool] | None, device: torch.device | None = None
) -> Tensor | None:
    """[K] bool mask of the present tasks in ``names``' order, or None when all are."""
    if present is None or all(bool(present.get(n, True)) for n in names):
        return None
    return torch.tensor([bool(present.get(n, True)) for n in names], device=device)


def _as_weight(present: Tensor | None, like: Tensor) -> Tensor | float:
    """The present mask as a 0/1 factor in ``like``'s dtype (1.0 when all are present)."""
    return 1.0 if present is None else present.to(device=like.device, dtype=like.dtype)


def masked_where(present: Tensor | None, values: Tensor) -> Tensor:
    """``values`` [K] with the absent tasks' entries set to 0 by selection (a NaN or
    infinity there, e.g. the log of an absent task's zero loss, does not leak into a sum
    or its gradient the way multiplying by 0 would let it)."""
    if present is None:
        return values
    return torch.where(present.to(values.device), values, torch.zeros_like(values))


def distributed_world() -> int:
    """Number of processes of the default group (1 without torch.distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def all_reduce_mean(t: Tensor) -> Tensor:
    """``t`` averaged over the processes (in place, returned); identity in one process."""
    world = distributed_world()
    if world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t.div_(world)
    return t


def _check_weights(weights: Mapping[str, float] | None, names: Sequence[str]) -> Tensor:
    weights = dict(weights or {})
    unknown = set(weights) - set(names)
    if unknown:
        raise UserError(
            f"loss weights name unknown task(s) {sorted(unknown)}; tasks: {', '.join(names)}"
        )
    values = []
    for n in names:
        try:
            v = float(weights.get(n, 1.0))
        except (TypeError, ValueError):
            raise UserError(f"loss weight of {n!r} is not a number: {weights[n]!r}") from None
        if not (math.isfinite(v) and v >= 0):
            raise UserError(f"loss weight of {n!r} must be finite and >= 0, got {v}")
        values.append(v)
    if not any(v > 0 for v in values):
        raise UserError("all loss weights are zero: nothing would be trained")
    return torch.tensor(values, dtype=torch.float32)

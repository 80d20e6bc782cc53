"""Gradient-level balancing: per-task gradients of the shared part, combined by torchjd.

A training step computes the Jacobian ``J`` [K, n] of the (constant-weighted) task losses
``w_k L_k`` with respect to what the tasks share, hands it to a torchjd aggregator, and
uses the combined vector as the shared part's gradient. What "shared" means is the
architecture's declaration (:meth:`~scenemtl.models.base.MultiTaskNet.shared_forward`,
:meth:`~scenemtl.models.base.MultiTaskNet.shared_parameters`) and the option ``wrt``:

* ``wrt: parameters`` (default): ``J`` is taken with respect to the shared parameters,
  the methods' papers' definition. Costs one backward pass through the shared part per task.
* ``wrt: representation``: ``J`` is taken with respect to the shared representation (the
  output of ``shared_forward``), the combined vector is backpropagated once into the shared
  parameters (the MGDA-UB approximation of Sener & Koltun). Cheaper in memory and time when
  the shared part is large; needs an architecture with a shared representation.

**Scale.** Aggregators differ in scale: some return a sum of (modified) task gradients,
others a mean or a convex combination. Each method here is brought to the scale of a sum,
the scale of the loss-level methods (``sum_k w_k L_k``): when all task gradients agree
(identical rows ``g``), the update is ``K g``. So a learning rate means the same for every
method, and ``mean`` gives exactly the update of ``fixed``. Nash-MTL is the exception: its
update norm comes out of its bargaining solution (documented in docs/balancing.md).

**Task-specific parameters** (option ``task_grads``): ``plain`` gives them the gradient of
``sum_k w_k L_k`` (each head the gradient of its own task's loss); ``weighted`` the gradient
of ``sum_k a_k w_k L_k`` with ``a_k`` the method's weights of this step, at the sum scale
(the weights with which the rows of ``J`` make the shared update; ``mean`` gives
``a_k = 1``, so it is ``fixed`` under both). Where the weights are not unique, the method's
solver picks them: MGDA's min-norm point of identical rows is reached at a vertex (all the
weight on one of them, as the authors' MinNormSolver also ends), so a duplicated task's
head gets no gradient under ``weighted``. The default of each method is what its
authors' code does (``BALANCERS``' table ``TASK_GRADS_OF_AUTHORS``, docs/balancing.md).

**Zero weights.** A task whose constant weight ``w_k`` is 0 has a zero row in ``J``; most
aggregators would treat it as a task to balance (MGDA's min-norm point is then 0). Its
row is left out: the method runs on the tasks with a positive weight (the scale is their
number), its logged weight is 0.

**Partial labels.** A task without a labelled sample in the batch (``present[k]`` False)
is left out like a zero-weight task: the aggregator runs on the rows of the present tasks
(a fresh aggregator for that subset, at the scale of their number), the absent task's
logged weight is 0 and its head gets a zero gradient. A stateful aggregator runs on its
state restricted to the present tasks (GradVac: the running cosines of the present pairs,
written back; Nash-MTL: warm-started from the present tasks' last solution, which is left
as it was); the absent tasks' state is untouched. Under DDP the set of rows is the union
over processes, and a row is averaged over the processes that have the task.

**DDP.** The Jacobians are averaged over processes before the aggregation, so N processes
make the update one process would make on the union of their batches. With
``wrt: representation`` the representations of different processes are different tensors:
the Gram matrix ``J J^T`` is summed instead, which only the Gram-based aggregators can use;
the others refuse that combination at start-up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from scenemtl.balancing.base import (
    GRADIENT_LEVEL,
    BackwardResult,
    LossBalancer,
    SplitNetwork,
    TrainingStep,
    all_reduce_mean,
    distributed_world,
)
from scenemtl.balancing.jacobian import (
    add_to_grads,
    columnwise,
    combine,
    cut_jacobian,
    gram_matrix,
    parameter_jacobian,
    stacked,
    weighted_sum,
)
from scenemtl.errors import UserError

if TYPE_CHECKING:
    from torchjd.aggregation import Aggregator

    from scenemtl.tasks.base import Task

WRT_CHOICES = ("parameters", "representation")
TASK_GRADS_CHOICES = ("plain", "weighted")


@dataclass(frozen=True)
class Aggregation:
    """A torchjd aggregator as a balancing method.

    Attributes:
        aggregator: torchjd.aggregation class name, or an aggregator class
            (:mod:`scenemtl.balancing.exact`).
        options: accepted options and their defaults (passed to the class by name).
        scale: number of tasks, options -> factor that brings the aggregator to the scale
            of a sum (see the module docstring).
        state: dotted attribute paths of the aggregator's state across steps, saved in
            checkpoints.
        takes_num_tasks: the class takes ``n_tasks`` as first argument.
        extra: the pip extra of scenemtl the aggregator needs, if any.
        restored: called with the aggregator after its state was loaded.
        task_weights: the aggregator (after this step's aggregation) -> the weights [K] of
            the task losses for the task-specific parameters under ``task_grads:
            weighted``, before the sum scale, where the method's authors use other weights
            than the shared update's (Nash-MTL: its solution before the ``max_norm``
            clip); None: the shared update's.
        subset: for a stateful aggregator, ``(full, sub, positions, K)`` -> a function to
            call after the step: gives ``sub`` (built for the rows ``positions`` of
            ``full``'s tasks) the state of those rows, the returned function writes back
            what the step changed (partial labels); None: a stateless aggregator.
        through_gramian: a weighted aggregator whose weights depend on the matrix only
            through its Gram matrix ``J J^T`` (torchjd's ``Mean``; ``NashMTL``: its
            problem and its norm clip ``|w J|``): with ``wrt: parameters`` it is given a
            [K, K] factor ``F`` with ``F F^T = J J^T`` instead of the [K, n] matrix.
    """

    aggregator: str | Callable[..., Aggregator]
    options: Mapping[str, Any] = field(default_factory=dict)
    scale: Callable[[int, Mapping[str, Any]], float] = lambda k, o: float(k)
    state: tuple[str, ...] = ()
    takes_num_tasks: bool = False
    extra: str | None = None
    restored: Callable[[Any], None] | None = None
    task_weights: Callable[[Any], Tensor] | None = None
    subset: Callable[[Any, Any, list[int], int], Callable[[], None]] | None = None
    through_gramian: bool = False

    @property
    def name(self) -> str:
        """The aggregator's class name."""
        return self.aggregator if isinstance(self.aggregator, str) else self.aggregator.__name__

    def build(self, num_tasks: int, options: Mapping[str, Any]) -> Aggregator:
        name = self.name
        try:
            import torchjd.aggregation as aggregation

            cls = (
                getattr(aggregation, self.aggregator)
                if isinstance(self.aggregator, str)
                else self.aggregator
            )
            args = (num_tasks,) if self.takes_num_tasks else ()
            return cls(*args, **options)
        except ImportError as e:
            hint = f"pip install 'scenemtl[{self.extra}]'" if self.extra else str(e)
            raise UserError(f"{name} needs packages that are missing: {hint}") from None
        except (TypeError, ValueError) as e:
            raise UserError(f"{name}: bad option ({e})") from None


def SUM_SCALE(num_tasks: int, options: Mapping[str, Any]) -> float:
    """The factor of aggregators that already return a sum of task gradients."""
    return 1.0


class GradientBalancer(LossBalancer):
    """Combines per-task gradients with a torchjd aggregator (see the module docstring).

    The loss path (:meth:`combine`) is the fixed weighting: it gives the logged total and
    the validation loss.

    Args:
        weights: constant per-task multipliers of the losses (default 1).
        tasks: the tasks.
        aggregation: which aggregator, its scale and state.
        wrt: ``"parameters"`` or ``"representation"``.
        task_grads: ``"plain"`` or ``"weighted"`` (see the module docstring).
        **options: the aggregator's options.
    """

    level = GRADIENT_LEVEL
    averages_gradients = True  # the Jacobians are averaged before the aggregation

    def __init__(
        self,
        weights: Mapping[str, float] | None = None,
        tasks: Sequence[Task] = (),
        *,
        aggregation: Aggregation,
        wrt: str = "parameters",
        task_grads: str = "plain",
        **options: Any,
    ) -> None:
        super().__init__(weights, tasks)
        if wrt not in WRT_CHOICES:
            raise UserError(f"option wrt must be one of {', '.join(WRT_CHOICES)}, got {wrt!r}")
        if task_grads not in TASK_GRADS_CHOICES:
            raise UserError(
                f"option task_grads must be one of {', '.join(TASK_GRADS_CHOICES)}, "
                f"got {task_grads!r}"
            )
        self.wrt = wrt
        self.task_grads = task_grads
        self.aggregation = aggregation
        self.options = {**aggregation.options, **options}
        # the tasks the method balances: a zero weight's row would be a zero gradient
        self.active: tuple[int, ...] = tuple(
            i for i, w in enumerate(self.base_weights.tolist()) if w > 0
        )
        num_active = len(self.active)
        # Not a submodule: torchjd keeps state in attributes that come and go (a None
        # buffer, numpy arrays); get_extra_state saves exactly the declared state.
        self._aggregator = [aggregation.build(num_active, self.options)]
        self.scale = float(aggregation.scale(num_active, self.options))
        if task_grads == "weighted" and not self.combines_linearly:
            raise UserError(
                f"{aggregation.name} does not combine the task gradients with weights; "
                "use weighting_options {task_grads: plain}"
            )

    @property
    def aggregator(self) -> Aggregator:
        return self._aggregator[0]

    @property
    def combines_linearly(self) -> bool:
        """The update is a weighted sum of the task gradients (the weights are known)."""
        from torchjd.aggregation import WeightedAggregator

        return isinstance(self.aggregator, WeightedAggregator)

    @property
    def uses_gramian_only(self) -> bool:
        from torchjd.aggregation import GramianWeightedAggregator

        return isinstance(self.aggregator, GramianWeightedAggregator)

    def check_setup(self, world_size: int, precision: str, has_representation: bool) -> None:
        """Refuse, in one line, what this method cannot do correctly in this run."""
        if str(precision) in ("16-mixed", "16"):
            raise UserError(
                "gradient-level balancing does not support 16-mixed precision (the per-task "
                "gradients would be combined while loss-scaled); use bf16-mixed or 32-true"
            )
        if self.wrt == "representation" and not has_representation:
            raise UserError(
                "this architecture has no shared representation; use weighting_options "
                "{wrt: parameters}"
            )
        if self.wrt == "representation" and world_size > 1 and not self.uses_gramian_only:
            raise UserError(
                f"{self.aggregator} cannot combine representation gradients across processes "
                "(it needs the whole Jacobian); use weighting_options {wrt: parameters}"
            )

    # ----------------------------------------------------------------------------------

    def cut(self, representation: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Leaf copies of the shared representation: the tasks' branches read them, and
        the method takes the task gradients there (see :meth:`backward`)."""
        return {k: v.detach().requires_grad_() for k, v in representation.items()}

    def backward_step(
        self, loss: Tensor, step: TrainingStep, network: SplitNetwork, *args: Any, **kwargs: Any
    ) -> BackwardResult:
        """The Jacobian of the task losses and its aggregation (:meth:`backward`); ``loss``
        (the logged total) is not backpropagated. The Gram matrix comes with every step
        but those of an aggregator that combines rows itself (GradDrop's default stream)
        off the conflict monitor's steps."""
        weights, gramian = self.backward(
            step.losses,
            step.representation,
            step.cut,
            network.shared_parameters(),
            [*network.task_parameters(), *self.trainable_parameters()],
            present=step.present,
            monitor=step.monitor,
        )
        return BackwardResult(weights=weights, gramian=gramian)

    def backward(
        self,
        losses: Tensor,
        representation: Sequence[Tensor],
        cut: Sequence[Tensor],
        shared_params: Sequence[nn.Parameter],
        task_params: Sequence[nn.Parameter],
        present: Tensor | None = None,
        monitor: bool = True,
    ) -> tuple[Tensor | None, Tensor | None]:
        """Accumulate this step's update into the ``.grad`` of the parameters.

        The tasks' branches must have been run on ``cut``: leaf copies of the shared
        representation (``t.detach().requires_grad_()``). The representation's tensors may
        be computed from one another (an encoder pyramid); differentiating at the cut gives
        each tensor's direct contribution, which backpropagating ``representation`` then
        chains into the shared parameters without counting a path twice.

        Args:
            losses: [K] the constant-weighted task losses ``w_k L_k``, with their graph.
            representation: the shared representation (``shared_forward``'s values).
            cut: the leaf copies of ``representation`` the losses were computed from.
            shared_params: the shared parameters.
            task_params: every other trainable parameter.
            present: [K] bool, the tasks with a labelled sample in the batch (None: all);
                an absent task's loss is a zero with its graph.
            monitor: the Gram matrix is wanted (the conflict monitor's step); an
                aggregator that does not need it (GradDrop) skips it otherwise.

        Returns:
            (effective weight [K] of each ``L_k`` in the shared update, or None when the
            aggregator does not combine rows linearly; the Gram matrix ``J J^T`` [K, K] of
            the task gradients, before scaling, for the conflict monitor; zero rows and
            columns for tasks of weight 0 and absent tasks; None when the aggregator did
            not need it and ``monitor`` is False).
        """
        representation, cut = list(representation), list(cut)
        own = [p for p in task_params if p.requires_grad]
        k = self.num_tasks
        # weighted heads need this step's weights: they are backpropagated after the
        # aggregation, so the heads' graph is kept until then
        weighted = self.task_grads == "weighted" and bool(shared_params) and bool(own)
        tasks, row_scale = (
            self._rows_of(present, losses.device) if shared_params else ([], torch.ones(0))
        )
        # The heads' gradient: the balanced tasks' per-task parts come with their passes at
        # the cut below (cut_jacobian), summed plainly or with this step's weights; the
        # other tasks' terms (weight 0 or absent: zeros with a graph; times 0 under
        # weighted) here, so that a head only they reach gets a zero as under fixed.
        rest = [i for i in range(k) if i not in tasks]
        if own and rest:
            part = losses[rest].sum() * (0.0 if weighted else 1.0)
            torch.autograd.backward(part, inputs=own, retain_graph=True)
        if own and not tasks:
            _average_grads(own)
        if not shared_params:  # an architecture that shares nothing: nothing to combine
            return None, torch.zeros(k, k, dtype=torch.float64)
        if not tasks:  # no task of positive weight has a label in this batch
            return torch.zeros(k), torch.zeros(k, k, dtype=torch.float64)
        positions = [self.active.index(i) for i in tasks]
        with self._aggregator_for(positions) as (aggregator, scale):
            rows = [losses[i] for i in tasks]
            # [K', *shape] per tensor of the representation; frees the heads' graph
            at_cut, head_grads = cut_jacobian(rows, cut, own)
            if not weighted:
                _add_heads(weighted_sum([1.0] * len(rows), head_grads), own)
            combine = (
                partial(self._combine_parameter_gradients, monitor=monitor)
                if self.wrt == "parameters"
                else self._combine_representation_gradients
            )
            weights, gramian = combine(
                representation, at_cut, list(shared_params), aggregator, scale, row_scale
            )
            head = None if weights is None else weights.detach()
            if weighted and self.aggregation.task_weights is not None:
                head = self.aggregation.task_weights(aggregator) * scale
        index = torch.tensor(tasks)
        if weighted:
            assert head is not None  # refused at construction otherwise
            coefficients = [float(v) for v in head.to(losses.dtype).cpu()]
            _add_heads(weighted_sum(coefficients, head_grads), own)
        full_gramian = None
        if gramian is not None:
            full_gramian = torch.zeros(k, k, dtype=torch.float64)
            full_gramian[index[:, None], index] = gramian
        if weights is None:
            return None, full_gramian
        full_weights = torch.zeros(k)
        full_weights[index] = weights.detach().float().cpu()
        return full_weights * self.base_weights.cpu(), full_gramian

    def _rows_of(self, present: Tensor | None, device: torch.device) -> tuple[list[int], Tensor]:
        """The tasks whose rows the step combines (positive weight, a label on some
        process) and the factor [K'] that turns each row's mean over all processes into
        its mean over the processes that have the task (ones without partial labels)."""
        world = distributed_world()
        if present is None and world == 1:
            return list(self.active), torch.ones(len(self.active))
        if present is None:
            present = torch.ones(self.num_tasks, dtype=torch.bool)
        counts = present.to(device=device, dtype=torch.float64)
        if world > 1:  # every process must combine the same rows (and take part here)
            counts = all_reduce_mean(counts.clone()) * world
        counts = counts.cpu()
        tasks = [i for i in self.active if float(counts[i]) > 0]
        return tasks, torch.tensor([world / float(counts[i]) for i in tasks])

    @contextmanager
    def _aggregator_for(self, positions: list[int]) -> Iterator[tuple[Any, float]]:
        """(aggregator, sum-scale factor) for the rows ``positions`` of the balanced tasks:
        the run's own aggregator for all of them, else one built for the subset and given
        the subset's state (:attr:`Aggregation.subset`), written back afterwards."""
        if len(positions) == len(self.active):
            yield self.aggregator, self.scale
            return
        sub = self.aggregation.build(len(positions), self.options)
        leave = (
            self.aggregation.subset(self.aggregator, sub, positions, len(self.active))
            if self.aggregation.subset is not None
            else None
        )
        yield sub, float(self.aggregation.scale(len(positions), self.options))
        if leave is not None:
            leave()

    def _combine_parameter_gradients(
        self,
        representation: list[Tensor],
        at_cut: Sequence[Tensor],
        shared: list[nn.Parameter],
        aggregator: Aggregator,
        scale: float,
        row_scale: Tensor,
        monitor: bool = True,
    ) -> tuple[Tensor | None, Tensor | None]:
        """The Jacobian with respect to ``shared`` per parameter (:mod:`~scenemtl.
        balancing.jacobian`), averaged over processes, aggregated into the ``.grad`` of
        ``shared``; the Gram matrix unless neither ``monitor`` nor the aggregator needs
        it (None then)."""
        # under autocast the representation may be bf16 while the losses are float32
        at_cut = [j.to(r.dtype) for j, r in zip(at_cut, representation, strict=True)]
        # One task at a time: torchjd's vmap over the tasks fails on bf16 autocast graphs
        # ("expected scalar type BFloat16 but found Float"), and on CPU it runs the same
        # convolutions (docs/balancing.md, "Where the time goes").
        parts = parameter_jacobian(representation, at_cut, shared)
        partial_rows = bool((row_scale != 1).any())
        for rows in parts:
            for k, row in enumerate(rows):
                all_reduce_mean(row)
                if partial_rows:  # mean over the processes that have the task
                    row.mul_(float(row_scale[k]))
        gramian = gram_matrix(parts) if monitor or not _runs_rowwise(aggregator) else None
        weights, update = self._aggregate(parts, gramian, aggregator, scale)
        add_to_grads(update, shared)
        return (None if weights is None else weights * scale), gramian

    def _aggregate(
        self,
        parts: list[list[Tensor]],
        gramian: Tensor | None,
        aggregator: Aggregator,
        scale: float,
    ) -> tuple[Tensor | None, list[Tensor]]:
        """The aggregator on ``scale * J``, ``J`` the parameters' rows side by side
        (:func:`~scenemtl.balancing.jacobian.parameter_jacobian`) with Gram matrix
        ``gramian`` [K, K] (float64): (its weights [K], or None where it does not combine
        rows linearly; the update, one flat tensor per parameter).

        A Gram-based aggregator gets ``gramian`` (scaled) instead of computing its own from
        the whole matrix, as the representation path does; its update is ``sum_k scale w_k
        row_k`` parameter by parameter. An aggregator that declares itself ``columnwise``
        (GradDrop) runs on column chunks of the stacked rows. Any other aggregator gets
        the whole scaled matrix. One that declares itself ``rowwise`` (GradDrop's
        default stream) combines each parameter's rows itself."""
        from torchjd.aggregation import WeightedAggregator

        first = parts[0][0]
        if _runs_rowwise(aggregator):
            # GradDrop's own stream: on each parameter's rows, in column chunks
            return None, aggregator.combine_rows(parts, scale)  # type: ignore[attr-defined]
        assert gramian is not None  # computed for every other aggregator
        if self.uses_gramian_only and not _has_hooks(aggregator):  # a subset's is the same class
            weights = aggregator.gramian_weighting(  # type: ignore[attr-defined]
                (gramian * scale**2).to(device=first.device, dtype=first.dtype)
            )
            return weights, combine(weights.to(first.dtype) * scale, parts)
        if self.aggregation.through_gramian and not _has_hooks(aggregator):
            # the weights from a [K, K] factor of the Gram matrix (the same Gram matrix,
            # summed in float64, as the Gram-based aggregators get)
            weights = _captured_weights(aggregator, gramian_factor(gramian * scale**2, first))
            return weights, combine(weights.to(first.dtype) * scale, parts)
        if hasattr(aggregator, "gramian_combination") and not _has_hooks(aggregator):
            # ConFIG: a combination of the rows that is not a weighting (no weights logged)
            coefficients = aggregator.gramian_combination(gramian * scale**2)
            return None, combine(coefficients.to(first.dtype) * scale, parts)
        blocks = stacked(parts)
        if scale != 1.0:
            for block in blocks:
                block.mul_(scale)
        if getattr(aggregator, "columnwise", False) and first.device.type == "cpu":
            # chunk by chunk draws the same random numbers as one draw on the CPU (one
            # generator, consumed in order); elsewhere the whole matrix below
            return None, columnwise(aggregator, blocks)
        matrix = torch.cat(blocks, dim=1)
        sizes = [block.shape[1] for block in blocks]
        del blocks[:]  # the matrix replaces them
        if not isinstance(aggregator, WeightedAggregator):
            return None, list(aggregator(matrix).split(sizes))
        captured: list[Tensor] = []
        direction = _captured_weights(aggregator, matrix, captured)
        return captured[-1], list(direction.split(sizes))

    def _combine_representation_gradients(
        self,
        representation: list[Tensor],
        at_cut: Sequence[Tensor],
        shared: list[nn.Parameter],
        aggregator: Aggregator,
        scale: float,
        row_scale: Tensor,
    ) -> tuple[Tensor | None, Tensor]:
        from torchjd.aggregation import GramianWeightedAggregator, WeightedAggregator

        matrix = torch.cat([j.detach().flatten(1) for j in at_cut], dim=1)
        if bool((row_scale != 1).any()):  # DDP with partial labels, see _rows_of
            matrix = matrix * row_scale.to(matrix)[:, None]
        # Under bf16 autocast the representation, hence its Jacobian, is bf16 (~3 digits):
        # the weights are computed from the float64 Gram matrix in at least float32.
        work = torch.float32 if matrix.dtype in (torch.bfloat16, torch.float16) else matrix.dtype
        world = distributed_world()
        gramian = (matrix.double() @ matrix.double().T).cpu()
        if world > 1:
            # The union batch's loss is the mean of the processes' losses: its Jacobian is
            # [J_1 ... J_N] / N and its Gram matrix sum_p G_p / N^2.
            gramian = all_reduce_mean(gramian.to(matrix.device)).div_(world).cpu()
        rows = matrix.to(work) * scale
        if isinstance(aggregator, GramianWeightedAggregator):
            weights = aggregator.gramian_weighting(
                (gramian * scale**2).to(device=matrix.device, dtype=work)
            )
            direction = weights.to(work) @ rows
        elif isinstance(aggregator, WeightedAggregator):
            weights = aggregator.weighting(rows)
            direction = weights @ rows
        else:
            weights = None
            direction = aggregator(rows)
        grads, start = [], 0
        for f in representation:
            grads.append(direction[start : start + f.numel()].reshape(f.shape).to(f.dtype))
            start += f.numel()
        torch.autograd.backward(representation, grad_tensors=grads, inputs=shared)
        if world > 1:
            for p in shared:
                if p.grad is not None:
                    all_reduce_mean(p.grad)
        return (None if weights is None else weights * scale), gramian

    # ----------------------------------------------------------------------------------
    # state across steps (GradVac's running cosines, Nash-MTL's last solution)

    def get_extra_state(self) -> dict[str, Any]:
        state = {}
        for path in self.aggregation.state:
            value = _get_path(self.aggregator, path)
            if isinstance(value, np.ndarray):
                state[path] = {"numpy": torch.from_numpy(np.array(value))}
            elif isinstance(value, (Tensor, int, float, tuple)) or value is None:
                state[path] = {"value": value}
        return state

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, dict):
            return
        for path, entry in state.items():
            if path not in self.aggregation.state or not isinstance(entry, dict):
                continue
            if "numpy" in entry:
                _set_path(self.aggregator, path, entry["numpy"].numpy().copy())
            else:
                _set_path(self.aggregator, path, entry.get("value"))
        if self.aggregation.restored is not None:
            self.aggregation.restored(self.aggregator)


def gramian_factor(gramian: Tensor, like: Tensor) -> Tensor:
    """A [K, K] matrix ``F`` with ``F F^T = gramian`` (float64 [K, K], symmetric positive
    semi-definite up to rounding): ``V sqrt(max(L, 0))`` of its eigendecomposition, in the
    dtype and on the device of ``like``. Any ``J`` with ``J J^T = gramian`` is ``F Q^T``
    with ``Q`` orthonormal columns, so an aggregator whose weights see ``J`` only through
    ``J J^T`` gives ``F`` the weights it gives ``J``."""
    values, vectors = torch.linalg.eigh(gramian)
    factor = vectors * values.clamp_min(0).sqrt()
    return factor.to(device=like.device, dtype=like.dtype)


def _captured_weights(aggregator: Any, matrix: Tensor, captured: list[Tensor] | None = None) -> Any:
    """Run ``aggregator`` on ``matrix``; with ``captured`` None return the weights its
    weighting output last (after every hook, as torchjd's jac_to_grad captures them),
    else append them to ``captured`` and return the aggregator's output."""
    out: list[Tensor] = [] if captured is None else captured
    handle = aggregator.weighting.register_forward_hook(lambda _m, _i, w: out.append(w))
    try:
        direction = aggregator(matrix)
    finally:
        handle.remove()
    return out[-1] if captured is None else direction


def _runs_rowwise(aggregator: Aggregator) -> bool:
    """Whether ``aggregator`` combines each parameter's rows itself (``rowwise``, GradDrop's
    default stream) and no hook asks for the whole matrix."""
    return getattr(aggregator, "rowwise", False) and not _has_hooks(aggregator)


def _has_hooks(module: nn.Module) -> bool:
    """Hooks on an aggregator or its weighting (they must see the aggregator's own call)."""
    found = [module, getattr(module, "weighting", None), getattr(module, "gramian_weighting", None)]
    return any(m is not None and (m._forward_hooks or m._forward_pre_hooks) for m in found)


def _add_heads(grads: Sequence[Tensor | None], params: Sequence[nn.Parameter]) -> None:
    """Add ``grads`` (None: nothing) to the ``.grad`` of ``params``, then average them
    over processes."""
    reached = [(p, g) for p, g in zip(params, grads, strict=True) if g is not None]
    add_to_grads([g.reshape(-1) for _, g in reached], [p for p, _ in reached])
    _average_grads(params)


def _average_grads(params: Sequence[nn.Parameter]) -> None:
    """Average the ``.grad`` of ``params`` over processes (in place)."""
    for p in params:
        if p.grad is not None:
            all_reduce_mean(p.grad)


def gradvac_subset(full: Any, sub: Any, positions: list[int], k: int) -> Callable[[], None]:
    """GradVac on a subset of its tasks: the running cosines of the present pairs, and
    the step's new values written back into the full matrix (the other pairs untouched)."""
    whole, part = full.gramian_weighting, sub.gramian_weighting
    idx = torch.tensor(positions)
    if whole._phi_t is not None:
        part._phi_t = whole._phi_t[idx[:, None], idx].clone()
        part._state_key = (len(positions), whole._phi_t.dtype)

    def leave() -> None:
        if part._phi_t is None:
            return
        if whole._phi_t is None or whole._phi_t.dtype != part._phi_t.dtype:
            whole._phi_t = torch.zeros(k, k, dtype=part._phi_t.dtype)
            whole._state_key = (k, part._phi_t.dtype)
        whole._phi_t[idx[:, None], idx] = part._phi_t

    return leave


def nash_subset(full: Any, sub: Any, positions: list[int], k: int) -> Callable[[], None]:
    """Nash-MTL on a subset of its tasks: a fresh problem warm-started from the present
    tasks' entries of the last full solution, which stays as it was."""
    alpha = np.asarray(full.weighting.prvs_alpha, dtype=np.float32)
    sub.weighting.prvs_alpha = alpha[positions].copy()
    return lambda: None


def nash_solution(aggregator: Any) -> Tensor:
    """Nash-MTL's weights of this step before its ``max_norm`` clip [K]: the authors
    backpropagate ``sum_k alpha_k L_k`` and clip only the shared parameters' gradient."""
    return torch.from_numpy(np.asarray(aggregator.weighting.prvs_alpha, dtype=np.float64))


def _get_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _set_path(obj: Any, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        obj = getattr(obj, part)
    setattr(obj, last, value)

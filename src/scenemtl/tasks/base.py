"""What a task is: everything that differs between dense prediction tasks, in one object.

A :class:`Task` is built from a *spec* (a plain, JSON-able dict: its kind plus what the
dataset says about it, e.g. the class table) and *options* (the run's choices for it,
e.g. the depth loss). Models, losses, metrics, TTA, augmentation, the files written by
predict/submission and the ONNX export all loop over task objects and call the methods
below; none of them asks which kind a task is. A new kind is one file with a subclass
plus one line in :data:`scenemtl.tasks.TASK_KINDS`.

Tasks are ``nn.Module`` s so that a task with state (the depth normalization statistics)
moves with the model between devices and is saved in its checkpoints.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torchmetrics import Metric

from scenemtl.errors import DataFormatError
from scenemtl.tasks.keys import PictureKey
from scenemtl.tasks.likelihood import Likelihood
from scenemtl.tasks.statistics import TargetStatistics


class Task(nn.Module):
    """One dense prediction task.

    Attributes:
        kind: registry key of the subclass ("segmentation", "depth").
        name: key of the task in batches, model outputs, metric names and file layouts.
        channels: output channels the network emits for the task.
        higher_is_better: direction of the headline metric (logged as ``<stage>/<name>``).
        fill_value: target value where augmentation has no source pixel ("no label"),
            in every channel.
        target_channels: 0 if a target is [H,W] (one value per pixel), C if it is
            [C,H,W] (a C-vector per pixel, e.g. 3 for normals).
    """

    kind: ClassVar[str] = ""
    headline_label: ClassVar[str] = ""
    """What the headline metric is, for reports (e.g. "mean IoU (%)")."""
    headline_unit: ClassVar[str] = ""
    """The headline metric's unit alone (e.g. "%", "deg"; "" if it has none)."""
    prediction_modes: ClassVar[tuple[str, ...]] = ()
    """PIL modes a prediction PNG of this task may have (checked before decoding)."""
    higher_is_better: ClassVar[bool] = True
    fill_value: ClassVar[float] = 0.0
    target_dtype: ClassVar[torch.dtype] = torch.float32
    target_channels: ClassVar[int] = 0
    flat_options: ClassVar[Mapping[str, str]] = {}
    """``model.<flat>`` spellings this kind's options had before tasks were data ->
    the option (:data:`scenemtl.tasks.FLAT_TASK_OPTIONS`); kept for old configs and
    checkpoints, not for new kinds."""
    refused_augmentations: ClassVar[Mapping[str, str]] = {}
    """Training augmentation options (:class:`~scenemtl.data.transforms.BatchAugment`
    argument names) whose geometry this task's targets cannot follow, each with the
    reason; a run learning the task with one of them switched on is refused."""

    def __init__(self, name: str, channels: int) -> None:
        super().__init__()
        self.name = name
        self.channels = int(channels)

    # -- description -------------------------------------------------------------------

    def spec(self) -> dict[str, Any]:
        """The JSON-able description this task was built from (kind + dataset facts)."""
        return {"kind": self.kind}

    def extra_repr(self) -> str:
        return f"name={self.name!r}, channels={self.channels}"

    # -- data --------------------------------------------------------------------------

    def read_target(self, path: Path) -> np.ndarray:
        """Ground truth of one image from its file, [H,W] (or [C,H,W] with
        ``target_channels`` C) in the task's units."""
        raise NotImplementedError

    def check_target(self, path: Path) -> tuple[tuple[int, int] | None, list[str]]:
        """What ``scenemtl data check`` finds in one ground-truth file: its size (H, W),
        None if unreadable, and every problem, each naming the file. Default: what
        :meth:`read_target` refuses."""
        try:
            target = self.read_target(path)
        except DataFormatError as e:
            return None, [str(e)]
        return (int(target.shape[-2]), int(target.shape[-1])), []

    def statistics(self) -> TargetStatistics | None:
        """Fresh running statistics of this task's targets for dataset.json "stats"
        (``scenemtl data stats``), or None when the kind has none (the default)."""
        return None

    def describe_statistics(self, stats: Mapping[str, Any]) -> list[str]:
        """Lines that ``scenemtl data stats`` prints about this task's entries of
        dataset.json "stats" (those its :meth:`statistics` wrote); default none."""
        return []

    def encode_png(self, prediction: np.ndarray) -> Image.Image:
        """A decoded prediction [H,W] (or [C,H,W]) as the PNG a dataset would hold."""
        raise NotImplementedError

    def read_prediction(self, image: Image.Image, target: np.ndarray) -> np.ndarray:
        """A submitted prediction PNG (decoded, mode checked) as [H,W] (or [C,H,W]) values.

        Raises:
            DataFormatError: what is wrong with it, without the file name (the caller
                names the archive member).
        """
        raise NotImplementedError

    def adopt_stats(self, stats: Mapping[str, Any]) -> None:
        """Take normalization statistics from ``dataset.json`` "stats" (default: none)."""

    # -- training ----------------------------------------------------------------------

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        """Scalar float32 loss of one output [B,C,H,W] against the batch target [B,H,W]
        (or [B,target_channels,H,W]).

        Must be finite and attached to the graph even without one labelled pixel.
        """
        raise NotImplementedError

    @property
    def likelihood(self) -> Likelihood:
        """The likelihood the configured loss is the negative log of
        (:mod:`scenemtl.tasks.likelihood`).

        A fact about :meth:`loss`, so it lives beside it: only the task knows which loss
        its options chose (depth: l1, l2 or silog). Uncertainty weighting is its reader
        today; a table of it elsewhere would have to branch on kinds and losses."""
        raise NotImplementedError

    # -- evaluation --------------------------------------------------------------------

    def decode(self, output: Tensor) -> Tensor:
        """The network output [B,C,H,W] in the units metrics and files use: [B,H,W], or
        [B,target_channels,H,W]."""
        raise NotImplementedError

    def make_metric(self) -> Metric:
        """A fresh torchmetrics metric; ``compute()`` returns ``{name: headline, ...}``."""
        raise NotImplementedError

    def make_grader_metric(self) -> Metric:
        """The metric ``scenemtl grade`` scores a submission with: the training's
        (default), or one that also takes what a file may hold and an output cannot
        (segmentation: label 255, "no class"). Same keys as :meth:`make_metric`'s."""
        return self.make_metric()

    # -- geometry: training augmentation and test-time augmentation ---------------------

    def warp_target(self, target: Tensor, linear: Tensor) -> Tensor:
        """Target values after the augmentation moved them to new pixels.

        Augmentation resamples every target by nearest neighbour; a task whose values
        depend on the image's orientation (normals) corrects them here.

        Args:
            target: the resampled batch target [B,h,w] or [B,C,h,w] (fill where padded).
            linear: float64 [B,2,2], the rotation or reflection (orthogonal) that takes a
                direction in the source image (x right, y down) to the augmented image.

        Returns:
            the target as the augmented image's ground truth (default: unchanged).
        """
        return target

    def unmirror(self, output: Tensor) -> Tensor:
        """An output [B,C,H,W] computed on the horizontally mirrored image, in the frame
        of the image itself (TTA). Default: mirror the pixels back."""
        return torch.flip(output, dims=[-1])

    # views are averaged in this space

    def to_merge_space(self, output: Tensor) -> Tensor:
        """One view's output [B,C,H,W] in the space where views are averaged."""
        return output.float()

    def from_merge_space(self, mean: Tensor) -> Tensor:
        """The averaged views back as a network output [B,C,H,W]."""
        return mean

    def single_view(self, output: Tensor) -> Tensor:
        """What a one-view TTA returns: the output as :meth:`from_merge_space` would."""
        return output

    # -- pictures and export -----------------------------------------------------------

    def colorize(self, values: np.ndarray) -> np.ndarray:
        """A decoded prediction or target [H,W] (or [C,H,W]) as uint8 RGB [H,W,3]."""
        raise NotImplementedError

    def histogram_values(self, prediction: Tensor, target: Tensor) -> tuple[Tensor, Tensor] | None:
        """Values worth a histogram in TensorBoard: (predicted, ground truth), or None."""
        return None

    def export_outputs(self, output: Tensor) -> dict[str, Tensor]:
        """Named graph outputs of the ONNX export for the final output [B,C,H,W]."""
        return {self.name: self.decode(output)}

    def compare_export(
        self, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]
    ) -> tuple[bool, str]:
        """Whether an exported model's outputs match torch's (by this task's own rule).

        Args:
            reference, candidate: output name -> array, for the names of
                :meth:`export_outputs` (torch eager vs onnxruntime).

        Returns:
            (within tolerance, one line of figures).
        """
        raise NotImplementedError

    def describe_prediction(self, prediction: np.ndarray) -> str:
        """A few words about one decoded prediction, for the predict command's log."""
        return ""

    # -- what people read beside the numbers: the page's keys, the model card ----------

    def picture_key(self) -> PictureKey | None:
        """What explains this task's pictures beside them (the page of ``scenemtl
        serve``): a :class:`~scenemtl.tasks.keys.Legend` or
        :class:`~scenemtl.tasks.keys.ColorBar` in the colours of :meth:`colorize`, or
        None when the pictures need none (the default)."""
        return None

    def class_table(self) -> list[dict[str, Any]] | None:
        """The task's class table, ``[{"name": ..., "color": [r, g, b]}, ...]`` by class
        id (written to a model folder's ``classes.json`` and its card), or None when its
        outputs are not classes (the default)."""
        return None

    def card_tags(self) -> tuple[str, ...]:
        """Hugging Face tags a model card lists for this task (e.g.
        "depth-estimation"); default none."""
        return ()

    def card_output(self) -> str:
        """What a prediction of this task is, in a few words, for the model card's table
        (e.g. "meters float32 [H,W]")."""
        shape = f"[{self.target_channels},H,W]" if self.target_channels else "[H,W]"
        return f"{self.kind} values {shape} (see the task kind's docs)"

    # -- synthetic data ----------------------------------------------------------------

    def example_target(
        self, batch: int, height: int, width: int, generator: torch.Generator
    ) -> Tensor:
        """A random but valid batch target, as a batch of this task's data holds it:
        [B,H,W] (or [B,target_channels,H,W]) of ``target_dtype`` on the CPU, every pixel
        labelled (``scenemtl bench`` times the model on these)."""
        raise NotImplementedError

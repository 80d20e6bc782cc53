"""Input normalization and geometric batch augmentation, run on the training device.

Two entry points:

* :func:`normalize_rgb` turns uint8 RGB into the ImageNet-normalized float32 input every
  model expects. Training, validation, test and predict all go through it, so the
  statistics live in exactly one place. :func:`prepare_eval_batch` is the whole
  validation/test/predict transform: normalization, no geometry.
* :class:`BatchAugment` is the training transform. It draws random geometry per sample
  (scale, tilt, horizontal reflection, perspective wiggle, crop position), composes it
  into one homography per sample and warps the whole batch at once with ``grid_sample``
  and ``gather`` on whatever device the batch lives on. RGB is sampled bilinearly; labels
  and depth are sampled by nearest neighbour so that no label or depth value is ever
  invented by interpolation. Targets whose values depend on the image's orientation
  (surface normals) are then corrected by their task (:meth:`Task.warp_target`, given the
  rotation/reflection part of the warp, :func:`orientation`); a task refuses the options
  whose geometry it cannot follow (:func:`check_refused`: normals refuse the wiggle).

Coordinates: all homographies use continuous pixel-edge coordinates, i.e. pixel ``(i, j)``
(row, column) covers ``[j, j+1] x [i, i+1]`` and its centre is ``(j + 0.5, i + 0.5)``
as ``(x, y)``. This is ``grid_sample``'s ``align_corners=False`` convention, so an
identity homography reproduces the input bit for bit.

Depth is metric and is *not* rescaled when the image is zoomed: a zoomed-in crop shows
the same scene at the same distances, only with a different apparent focal length. This
matches the course template, which scales the depth map as an image and leaves its values
alone. The network therefore cannot rely on apparent object size alone for depth, which
is part of what the scale augmentation teaches.

Typical use inside a LightningModule::

    self.augment = BatchAugment(crop_size=(256, 256), scale_min=0.5, scale_max=2.0,
                                hflip=0.5, tilt_deg=5.0, wiggle=0.1)

    def on_after_batch_transfer(self, batch, dataloader_idx):
        # BatchAugment is a submodule, so trainer-driven .train()/.eval() switches it:
        # geometry in training, plain normalization in validation/test/predict.
        return self.augment(batch)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scenemtl.codecs.image import MAX_IMAGE_PIXELS
from scenemtl.errors import UserError

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# Largest corner displacement at wiggle=1, as a fraction of the crop's width/height.
# Below 1/4 every corner stays inside its own quadrant of the crop window, so the
# jittered quadrilateral is always convex and its homography never degenerates.
WIGGLE_SPAN = 0.2


class TargetRule(NamedTuple):
    """How a task's batch target is warped (from the task: :func:`target_rules`).

    Attributes:
        fill: value, in every channel, where the output pixel has no source pixel
            (:attr:`Task.fill_value`).
        dtype: the target's dtype (:attr:`Task.target_dtype`).
        channels: 0 for a [B,H,W] target, C for [B,C,H,W] (:attr:`Task.target_channels`).
        reorient: ``f(target, linear)`` correcting values that depend on the image's
            orientation after the nearest-neighbour resampling (:meth:`Task.warp_target`),
            None when they do not.
    """

    fill: float
    dtype: torch.dtype
    channels: int = 0
    reorient: Callable[[Tensor, Tensor], Tensor] | None = None


def target_rules(tasks: Sequence[Any]) -> dict[str, TargetRule]:
    """Task name -> :class:`TargetRule` from task objects."""
    from scenemtl.tasks.base import Task

    rules = {}
    for t in tasks:
        # Only an overridden hook is kept: the default one changes nothing.
        overridden = type(t).warp_target is not Task.warp_target
        rules[t.name] = TargetRule(
            float(t.fill_value),
            t.target_dtype,
            int(t.target_channels),
            t.warp_target if overridden else None,
        )
    return rules


def check_refused(tasks: Sequence[Any], options: Mapping[str, float], where: str = "") -> None:
    """UserError (one line) if an option that is switched on is refused by a task.

    Args:
        tasks: task objects (:attr:`Task.refused_augmentations`: option -> why).
        options: augmentation option name -> its value (0 = off).
        where: prefix of the option in the user's configuration (``"data."``).
    """
    for t in tasks:
        for option, why in t.refused_augmentations.items():
            value = options.get(option, 0)
            if value:
                raise UserError(
                    f"{where}{option} is {value} but task {t.name!r} refuses it ({why}); "
                    f"set {where}{option}: 0 for runs that learn {t.name!r}"
                )


# --------------------------------------------------------------------------------------
# normalization


def _check_rgb(rgb: Tensor) -> None:
    if rgb.dtype != torch.uint8:
        raise ValueError(f"rgb must be uint8 in 0..255, got {rgb.dtype}")
    if rgb.ndim < 3 or rgb.shape[-3] != 3:
        raise ValueError(f"rgb must have shape [..., 3, H, W], got {tuple(rgb.shape)}")


def _stats(like: Tensor) -> tuple[Tensor, Tensor]:
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=like.device)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=like.device)
    return mean.view(3, 1, 1), std.view(3, 1, 1)


def normalize_rgb(rgb: Tensor) -> Tensor:
    """ImageNet mean/std normalization of 8-bit RGB.

    Args:
        rgb: uint8 ``[B, 3, H, W]`` (or ``[3, H, W]``), values 0..255.

    Returns:
        float32 of the same shape: ``(rgb / 255 - mean) / std`` per channel.

    Only uint8 is accepted: a float image could be in 0..1 or 0..255 and silently get
    the wrong scale.
    """
    _check_rgb(rgb)
    mean, std = _stats(rgb)
    return (rgb.to(torch.float32) / 255.0 - mean) / std


def prepare_eval_batch(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The validation/test/predict transform: no geometry, only normalization.

    Args:
        batch: ``{"rgb": uint8 [B,3,H,W], "index": int64 [B]}`` plus, when the split has
            ground truth, ``"semseg": int64 [B,H,W]`` and ``"depth": float32 [B,H,W]``.

    Returns:
        A new dict with every input entry and ``"image"``: float32 ``[B,3,H,W]``.
    """
    out = dict(batch)
    out["image"] = normalize_rgb(batch["rgb"])
    return out


# --------------------------------------------------------------------------------------
# geometry


@dataclass
class AugmentParams:
    """Random geometry of one batch, one entry per sample (CPU, float64).

    Attributes:
        scale: ``[B]`` zoom factor (>1 magnifies).
        angle_deg: ``[B]`` rotation about the image centre; positive turns the content
            clockwise as displayed (x right, y down).
        flip: ``[B]`` bool, horizontal reflection.
        offset: ``[B, 2]`` ``(x, y)`` of the crop window's top-left corner in the scaled
            image, pixels; negative or beyond the image means the crop is padded.
        corners: ``[B, 4, 2]`` ``(x, y)`` corner displacements of the crop window
            (top-left, top-right, bottom-right, bottom-left) in output pixels; the output
            shows the content of the displaced quadrilateral (perspective wiggle).
    """

    scale: Tensor
    angle_deg: Tensor
    flip: Tensor
    offset: Tensor
    corners: Tensor

    @classmethod
    def identity(cls, batch_size: int) -> AugmentParams:
        """Parameters that leave a full-size crop unchanged."""
        f64 = torch.float64
        return cls(
            scale=torch.ones(batch_size, dtype=f64),
            angle_deg=torch.zeros(batch_size, dtype=f64),
            flip=torch.zeros(batch_size, dtype=torch.bool),
            offset=torch.zeros(batch_size, 2, dtype=f64),
            corners=torch.zeros(batch_size, 4, 2, dtype=f64),
        )


def _window(height: int, width: int, batch_size: int) -> Tensor:
    """Corners of a ``height x width`` window, ``[B, 4, 2]`` float64, TL TR BR BL."""
    rect = torch.tensor(
        [[0.0, 0.0], [width, 0.0], [width, height], [0.0, height]], dtype=torch.float64
    )
    return rect.expand(batch_size, 4, 2).clone()


def output_to_source(
    params: AugmentParams, image_hw: tuple[int, int], crop_hw: tuple[int, int]
) -> Tensor:
    """Homographies mapping output (crop) pixel-edge coordinates to source coordinates.

    The forward picture is: reflect about the vertical centre line, rotate about the
    image centre by ``angle_deg``, scale by ``scale``, cut the crop window at ``offset``,
    then pull the window's corners to ``corners`` (perspective). This function returns
    the inverse of that chain, which is what sampling needs.

    Args:
        params: per-sample geometry, ``B`` samples.
        image_hw: source ``(H, W)``.
        crop_hw: output ``(h, w)``.

    Returns:
        float64 ``[B, 3, 3]`` (CPU) such that ``src ~ M @ (x_out, y_out, 1)``.
    """
    from kornia.geometry.transform import get_perspective_transform  # slow import

    height, width = image_hw
    crop_h, crop_w = crop_hw
    b = params.scale.shape[0]
    f64 = torch.float64
    scale = params.scale.to(f64)
    theta = torch.deg2rad(params.angle_deg.to(f64))
    cos, sin = torch.cos(theta), torch.sin(theta)
    sign = torch.where(params.flip, -1.0, 1.0).to(f64)

    # output window -> crop window in the scaled, rotated frame (perspective wiggle)
    window = _window(crop_h, crop_w, b)
    wiggle = get_perspective_transform(window, window + params.corners.to(f64))

    # scaled frame -> source: x_src = F R(-theta) (q - c_scaled) / s + c_src
    inv = torch.zeros(b, 3, 3, dtype=f64)
    inv[:, 0, 0] = sign * cos / scale
    inv[:, 0, 1] = sign * sin / scale
    inv[:, 1, 0] = -sin / scale
    inv[:, 1, 1] = cos / scale
    inv[:, 2, 2] = 1.0
    centre_scaled = torch.stack([scale * width / 2, scale * height / 2], dim=-1)
    shift = params.offset.to(f64) - centre_scaled  # crop coords -> centred scaled coords
    inv[:, :2, 2] = (inv[:, :2, :2] @ shift.unsqueeze(-1)).squeeze(-1)
    inv[:, 0, 2] += width / 2
    inv[:, 1, 2] += height / 2
    return inv @ wiggle


def source_coordinates(
    out_to_src: Tensor, crop_hw: tuple[int, int], device: torch.device | str
) -> Tensor:
    """Source coordinates of every output pixel centre.

    Args:
        out_to_src: ``[B, 3, 3]`` homographies from :func:`output_to_source`.
        crop_hw: output ``(h, w)``.
        device: where to compute.

    Returns:
        float32 ``[B, h, w, 2]``, ``(x, y)`` in source pixel-edge coordinates.
    """
    crop_h, crop_w = crop_hw
    mat = out_to_src.to(device=device, dtype=torch.float32)
    ys = torch.arange(crop_h, device=device, dtype=torch.float32) + 0.5
    xs = torch.arange(crop_w, device=device, dtype=torch.float32) + 0.5
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    points = torch.stack([gx, gy, torch.ones_like(gx)], dim=-1).view(-1, 3)  # [h*w, 3]
    src = points @ mat.transpose(1, 2)  # [B, h*w, 3]
    # Convex wiggle quads keep the whole window on the positive side of the horizon,
    # so z > 0; the clamp only guards against a hand-made degenerate matrix.
    z = src[..., 2:].clamp_min(1e-8)
    return (src[..., :2] / z).view(-1, crop_h, crop_w, 2)


def _gather_nearest(maps: Tensor, coords: Tensor, fill: float | int) -> Tensor:
    """Nearest-neighbour lookup of ``maps [B,H,W]`` at ``coords [B,h,w,2]``.

    Exact: every output value is either an input value of the same sample or ``fill``.
    """
    b, height, width = maps.shape
    col = torch.floor(coords[..., 0])
    row = torch.floor(coords[..., 1])
    inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
    flat = (row.clamp(0, height - 1) * width + col.clamp(0, width - 1)).to(torch.int64)
    values = torch.gather(maps.reshape(b, -1), 1, flat.view(b, -1)).view(flat.shape)
    return torch.where(inside, values, torch.full_like(values, fill))


def _sample_bilinear_rgb(rgb: Tensor, coords: Tensor) -> Tensor:
    """Bilinear lookup of uint8 ``rgb [B,3,H,W]`` at ``coords [B,h,w,2]`` -> uint8.

    Outside the image the colour is the ImageNet mean, which normalizes to exactly 0,
    the least surprising value for the network.
    """
    height, width = rgb.shape[-2:]
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=rgb.device).view(3, 1, 1)
    mean = mean * 255.0
    grid = torch.stack([coords[..., 0] * (2.0 / width), coords[..., 1] * (2.0 / height)], -1)
    grid = grid - 1.0
    # Sampling the mean-free image with zero padding pads with the mean colour and
    # blends smoothly into it at the border.
    centred = rgb.to(torch.float32) - mean
    warped = F.grid_sample(
        centred, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return (warped + mean).round().clamp(0, 255).to(torch.uint8)


def orientation(out_to_src: Tensor) -> Tensor:
    """The rotation or reflection part of each source -> output map, float64 [B,2,2].

    The linear part of the output -> source homography is inverted and its orthogonal
    factor taken (polar decomposition via SVD): it maps a direction in the source image
    (x right, y down) to the augmented image. Exact for the similarity transforms of
    zoom, tilt, flip and crop; the perspective wiggle is not a similarity (tasks whose
    targets depend on orientation refuse it, :func:`refused_options`).
    """
    linear = torch.linalg.inv(out_to_src[:, :2, :2].to(torch.float64).cpu())
    u, _, vh = torch.linalg.svd(linear)
    return u @ vh


def warp_batch(
    batch: Mapping[str, Any],
    out_to_src: Tensor,
    crop_hw: tuple[int, int],
    targets: Mapping[str, TargetRule],
) -> dict[str, Any]:
    """Warp a batch with one homography per sample and normalize the result.

    Args:
        batch: ``{"rgb": uint8 [B,3,H,W], "index": int64 [B]}`` and optionally
            one ``[B,H,W]`` (or ``[B,C,H,W]``) target per task, e.g. ``"semseg"`` int,
            ``"depth"`` float, ``"normals"`` float ``[B,3,H,W]``.
        out_to_src: ``[B, 3, 3]`` output->source homographies (:func:`output_to_source`).
        crop_hw: output ``(h, w)``.
        targets: task name -> :class:`TargetRule` (or a bare ``(fill, dtype)`` pair) of
            the targets to warp (:func:`target_rules` of the run's tasks); other entries
            of ``batch`` pass through, but not a map of the image's size: an unwarped
            target would silently no longer match its image.

    Returns:
        ``{"image": float32 [B,3,h,w] normalized, "rgb": uint8 [B,3,h,w],
        "semseg": int64 [B,h,w], "depth": float32 [B,h,w], ...}``: task targets only if
        present in the input, every non-spatial entry (e.g. ``"index"``) passed through.
        Target pixels without a source pixel get their task's fill value; targets whose
        rule has a ``reorient`` hook then get it with :func:`orientation`.
    """
    rgb = batch["rgb"]
    _check_rgb(rgb)
    if rgb.ndim != 4:
        raise ValueError(f"rgb must have shape [B, 3, H, W], got {tuple(rgb.shape)}")
    b, _, height, width = rgb.shape
    if out_to_src.shape != (b, 3, 3):
        raise ValueError(f"need {b} homographies [B,3,3], got {tuple(out_to_src.shape)}")

    rules = targets
    for key, value in batch.items():
        spatial = isinstance(value, Tensor) and value.dim() >= 3
        if key != "rgb" and key not in rules and spatial and value.shape[-2:] == (height, width):
            raise ValueError(f"no target rule for batch entry {key!r} (target_rules of its task)")
    coords = source_coordinates(out_to_src, crop_hw, rgb.device)
    out = {k: v for k, v in batch.items() if k != "rgb" and k not in rules}
    out["rgb"] = _sample_bilinear_rgb(rgb, coords)
    out["image"] = normalize_rgb(out["rgb"])
    linear: Tensor | None = None
    for name, rule in rules.items():
        if name not in batch:
            continue
        fill, dtype, *rest = rule  # a bare (fill, dtype) pair is a [B,H,W] target
        channels = rest[0] if rest else 0
        reorient = rest[1] if len(rest) > 1 else None
        target = batch[name]
        expected = (b, height, width) if not channels else (b, channels, height, width)
        if tuple(target.shape) != expected:
            raise ValueError(
                f"{name} must have shape {expected} to match rgb, got {tuple(target.shape)}"
            )
        fill_value = int(fill) if not dtype.is_floating_point else fill
        flat = target.to(dtype)
        if channels:  # each channel is a map of its own, sampled at the same pixels
            flat = flat.reshape(b * channels, height, width)
            where = coords.repeat_interleave(channels, dim=0)
            warped = _gather_nearest(flat, where, fill_value).view(b, channels, *crop_hw)
        else:
            warped = _gather_nearest(flat, coords, fill_value)
        if reorient is not None:
            if linear is None:
                linear = orientation(out_to_src)
            warped = reorient(warped, linear)
        out[name] = warped
    return out


# --------------------------------------------------------------------------------------
# the module


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """``value`` as (H, W) of 1 to :data:`MAX_IMAGE_PIXELS` pixels (an output the size of
    the largest image a dataset may hold), checked before anything of that size is made."""
    try:
        pair = (value, value) if isinstance(value, int) else tuple(int(v) for v in value)
    except (TypeError, ValueError, OverflowError):
        pair = ()
    if len(pair) != 2 or min(pair) < 1 or pair[0] * pair[1] > MAX_IMAGE_PIXELS:
        raise UserError(
            f"augmentation: {name} must be a positive int or (H, W) of at most "
            f"{MAX_IMAGE_PIXELS} pixels, got {value!r}"
        )
    return pair[0], pair[1]


class BatchAugment(nn.Module):
    """Random geometric augmentation of whole batches, then ImageNet normalization.

    Per sample, independently: a zoom ``s ~ U[scale_min, scale_max]``, a rotation
    ``~ U[-tilt_deg, tilt_deg]`` about the image centre, a horizontal reflection with
    probability ``hflip``, a perspective wiggle that moves each crop corner by up to
    ``wiggle * WIGGLE_SPAN`` of the crop's width/height, and a uniformly random crop
    position in the scaled image. When the scaled image is smaller than the crop, the
    crop position ranges over the placements that contain the image, and the rest is
    padding: RGB gets the ImageNet mean colour, labels 255, depth 0.0 (invalid).

    RGB is sampled bilinearly. Labels and depth are sampled by nearest neighbour from the
    same homography, so labels stay in their input set plus 255 and every depth value is
    a value of the input (or 0.0), in the same metric scale: zoom does not change depth.

    In ``eval()`` mode the module applies no geometry and only adds the normalized image
    (:func:`prepare_eval_batch`), so it can sit in a LightningModule as a submodule.

    Args:
        crop_size: output ``(h, w)`` or one int for a square; ``None`` keeps the input size.
        scale_min, scale_max: zoom bracket, ``0 < scale_min <= scale_max``.
        hflip: reflection probability in [0, 1]; ``True`` means 0.5.
        tilt_deg: largest absolute rotation, degrees, in [0, 180].
        wiggle: perspective strength in [0, 1]; 0 disables it.
        targets: task name -> :class:`TargetRule` of the targets to warp (see
            :func:`target_rules`; default: none yet, the DataModule sets its tasks').
    """

    def __init__(
        self,
        crop_size: int | Sequence[int] | None = None,
        scale_min: float = 1.0,
        scale_max: float = 1.0,
        hflip: bool | float = False,
        tilt_deg: float = 0.0,
        wiggle: float = 0.0,
        targets: Mapping[str, TargetRule] | None = None,
    ) -> None:
        super().__init__()
        self.targets = dict(targets or {})
        self.crop_size = None if crop_size is None else _pair(crop_size, "crop_size")
        if isinstance(hflip, bool):
            hflip = 0.5 if hflip else 0.0
        checks = [
            (math.isfinite(scale_min) and scale_min > 0, f"scale_min must be > 0, got {scale_min}"),
            (
                math.isfinite(scale_max) and scale_max >= scale_min,
                f"scale_max ({scale_max}) must be >= scale_min ({scale_min})",
            ),
            (0.0 <= hflip <= 1.0, f"hflip must be a probability in [0, 1], got {hflip}"),
            (0.0 <= tilt_deg <= 180.0, f"tilt_deg must be in [0, 180], got {tilt_deg}"),
            (0.0 <= wiggle <= 1.0, f"wiggle must be in [0, 1], got {wiggle}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(f"augmentation: {message}")
        self.scale_min = float(scale_min)
        self.scale_max = float(scale_max)
        self.hflip = float(hflip)
        self.tilt_deg = float(tilt_deg)
        self.wiggle = float(wiggle)

    def extra_repr(self) -> str:
        return (
            f"crop_size={self.crop_size}, scale=[{self.scale_min}, {self.scale_max}], "
            f"hflip={self.hflip}, tilt_deg={self.tilt_deg}, wiggle={self.wiggle}"
        )

    def active_options(self) -> dict[str, float]:
        """The geometry options switched on, name -> value (for :func:`check_refused`)."""
        values = {
            "scale_min": self.scale_min,
            "scale_max": self.scale_max,
            "hflip": self.hflip,
            "tilt_deg": self.tilt_deg,
            "wiggle": self.wiggle,
        }
        neutral = {"scale_min": 1.0, "scale_max": 1.0}
        return {k: v for k, v in values.items() if v != neutral.get(k, 0.0)}

    def output_size(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """``(h, w)`` of the augmented batch for inputs of size ``image_hw``."""
        return self.crop_size if self.crop_size is not None else tuple(image_hw)

    def sample_params(
        self,
        batch_size: int,
        image_hw: tuple[int, int],
        generator: torch.Generator | None = None,
    ) -> AugmentParams:
        """Draw per-sample geometry on the CPU.

        Drawing on the CPU keeps a seeded run identical whatever device trains, and costs
        nothing: a handful of numbers per sample.

        Args:
            batch_size: ``B``.
            image_hw: source ``(H, W)``.
            generator: CPU generator; ``None`` uses torch's global RNG.

        Returns:
            :class:`AugmentParams` with ``B`` entries.
        """
        height, width = image_hw
        crop_h, crop_w = self.output_size(image_hw)
        f64 = torch.float64

        def uniform(*shape: int) -> Tensor:
            return torch.rand(*shape, generator=generator, dtype=f64)

        # A fixed number of draws per call, whatever the settings, so that turning one
        # option on does not reshuffle the others for the same seed.
        u_scale, u_angle, u_flip = uniform(batch_size), uniform(batch_size), uniform(batch_size)
        u_offset, u_corners = uniform(batch_size, 2), uniform(batch_size, 4, 2)

        scale = self.scale_min + (self.scale_max - self.scale_min) * u_scale
        angle = self.tilt_deg * (2.0 * u_angle - 1.0)
        flip = u_flip < self.hflip
        # The crop slides over [min(0, S - c), max(0, S - c)]: inside the image when it
        # fits, otherwise over the placements that still contain the whole image.
        slack = torch.stack([scale * width - crop_w, scale * height - crop_h], dim=-1)
        low = slack.clamp(max=0.0)
        offset = low + (slack.abs()) * u_offset
        span = torch.tensor([crop_w, crop_h], dtype=f64) * (self.wiggle * WIGGLE_SPAN)
        corners = (2.0 * u_corners - 1.0) * span
        return AugmentParams(
            scale=scale, angle_deg=angle, flip=flip, offset=offset, corners=corners
        )

    def forward(
        self, batch: Mapping[str, Any], generator: torch.Generator | None = None
    ) -> dict[str, Any]:
        """Augment (training mode) or only normalize (eval mode) one batch.

        Args:
            batch: ``{"rgb": uint8 [B,3,H,W], "index": int64 [B]}`` plus optional
                ``"semseg": int64 [B,H,W]`` (255 = ignore) and ``"depth": float32
                [B,H,W]`` (meters, 0.0 = invalid); a split without ground truth has
                only ``rgb`` and ``index``.
            generator: CPU generator for the random geometry; a fixed seed reproduces
                the output exactly. ``None`` uses torch's global RNG.

        Returns:
            ``"image"`` float32 ``[B,3,h,w]`` normalized, ``"rgb"`` uint8 ``[B,3,h,w]``
            (the augmented crop, for visualization), ``"semseg"`` int64 ``[B,h,w]``,
            ``"depth"`` float32 ``[B,h,w]`` meters when present (other tasks' targets
            likewise, e.g. ``"normals"`` ``[B,3,h,w]``), ``"index"`` and any
            other non-spatial entry passed through. In eval mode ``(h, w) = (H, W)``
            and nothing but ``"image"`` is added.
        """
        if not self.training:
            return prepare_eval_batch(batch)
        rgb = batch["rgb"]
        _check_rgb(rgb)
        if rgb.ndim != 4:
            raise ValueError(f"rgb must have shape [B, 3, H, W], got {tuple(rgb.shape)}")
        image_hw = (int(rgb.shape[-2]), int(rgb.shape[-1]))
        crop_hw = self.output_size(image_hw)
        params = self.sample_params(rgb.shape[0], image_hw, generator)
        out_to_src = output_to_source(params, image_hw, crop_hw)
        return warp_batch(batch, out_to_src, crop_hw, self.targets)

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scenemtl.data.format import IGNORE_INDEX, INVALID_DEPTH
from scenemtl.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    WIGGLE_SPAN,
    AugmentParams,
    BatchAugment,
    TargetRule,
    normalize_rgb,
    output_to_source,
    prepare_eval_batch,
    target_rules,
    warp_batch,
)
from scenemtl.errors import UserError
from scenemtl.tasks import build_tasks, legacy_task_specs


def random_batch(b: int, h: int, w: int, seed: int, holes: bool = True) -> dict:
    """Random GT batch; with ``holes`` some labels are 255 and some depths invalid."""
    g = torch.Generator().manual_seed(seed)
    semseg = torch.randint(0, 19, (b, h, w), generator=g)
    depth = 1.0 + 99.0 * torch.rand(b, h, w, generator=g)
    if holes:
        semseg[torch.rand(b, h, w, generator=g) < 0.1] = IGNORE_INDEX
        depth[torch.rand(b, h, w, generator=g) < 0.1] = INVALID_DEPTH
    return {
        "rgb": torch.randint(0, 256, (b, 3, h, w), generator=g, dtype=torch.uint8),
        "semseg": semseg,
        "depth": depth,
        "index": torch.arange(b) + 10,
    }


COURSE = target_rules(build_tasks(legacy_task_specs()))
"""How the course's semseg and depth targets are warped (the batches of these tests)."""

STRONG = dict(scale_min=0.5, scale_max=2.0, hflip=0.5, tilt_deg=20.0, wiggle=1.0)


def warp_with(params: AugmentParams, batch: dict, crop_hw: tuple[int, int]) -> dict:
    hw = tuple(batch["rgb"].shape[-2:])
    return warp_batch(batch, output_to_source(params, hw, crop_hw), crop_hw, COURSE)


# --------------------------------------------------------------------------------------
# normalization


def test_normalize_rgb_uses_imagenet_statistics():
    rgb = torch.randint(0, 256, (2, 3, 4, 5), dtype=torch.uint8)
    image = normalize_rgb(rgb)
    assert image.dtype == torch.float32 and image.shape == rgb.shape
    for c in range(3):
        expected = (rgb[:, c].float() / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        torch.testing.assert_close(image[:, c], expected)


def test_normalize_rgb_rejects_float_and_wrong_channels():
    with pytest.raises(ValueError, match="uint8"):
        normalize_rgb(torch.rand(1, 3, 4, 4))
    with pytest.raises(ValueError, match="shape"):
        normalize_rgb(torch.zeros(1, 4, 4, 4, dtype=torch.uint8))


def test_eval_mode_and_prepare_eval_batch_only_normalize():
    batch = random_batch(2, 9, 13, seed=1)
    aug = BatchAugment(crop_size=(4, 4), **STRONG, targets=COURSE).eval()
    out = aug(batch)
    assert torch.equal(out["image"], normalize_rgb(batch["rgb"]))
    for key in ("rgb", "semseg", "depth", "index"):
        assert out[key] is batch[key]
    assert torch.equal(prepare_eval_batch(batch)["image"], out["image"])


# --------------------------------------------------------------------------------------
# exact geometry


def test_neutral_settings_reproduce_the_input_exactly():
    batch = random_batch(2, 7, 10, seed=2)
    out = BatchAugment(targets=COURSE)(batch)
    for key in ("rgb", "semseg", "depth", "index"):
        assert torch.equal(out[key], batch[key]), key
    assert torch.equal(out["image"], normalize_rgb(batch["rgb"]))


def test_hflip_probability_one_mirrors_everything():
    batch = random_batch(3, 6, 9, seed=3)
    out = BatchAugment(hflip=1.0, targets=COURSE)(batch)
    for key in ("rgb", "semseg", "depth"):
        assert torch.equal(out[key], batch[key].flip(-1)), key


def test_positive_tilt_turns_content_clockwise():
    batch = random_batch(2, 8, 8, seed=4)
    params = AugmentParams.identity(2)
    params.angle_deg[:] = 90.0
    out = warp_with(params, batch, (8, 8))
    # torch.rot90 with k=-1 over (H, W) is a clockwise quarter turn as displayed
    for key in ("rgb", "semseg", "depth"):
        assert torch.equal(out[key], batch[key].rot90(-1, (-2, -1))), key


def test_scale_two_centre_crop_magnifies_the_central_quarter():
    h, w = 8, 12
    batch = random_batch(1, h, w, seed=5)
    params = AugmentParams.identity(1)
    params.scale[:] = 2.0
    params.offset[:] = torch.tensor([w / 2, h / 2], dtype=torch.float64)
    out = warp_with(params, batch, (h, w))
    centre = batch["semseg"][:, h // 4 : h // 4 + h // 2, w // 4 : w // 4 + w // 2]
    expected = centre.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
    assert torch.equal(out["semseg"], expected)
    centre_depth = batch["depth"][:, h // 4 : h // 4 + h // 2, w // 4 : w // 4 + w // 2]
    expected_depth = centre_depth.repeat_interleave(2, 1).repeat_interleave(2, 2)
    # depth keeps its metric values when the image is zoomed
    assert torch.equal(out["depth"], expected_depth)


def test_shrunk_image_is_padded_with_ignore_invalid_and_mean_colour():
    h, w = 16, 24
    batch = random_batch(2, h, w, seed=6, holes=False)
    aug = BatchAugment(scale_min=0.5, scale_max=0.5, targets=COURSE)
    out = aug(batch, torch.Generator().manual_seed(0))
    padded = out["semseg"] == IGNORE_INDEX
    # the scaled image covers exactly a quarter of the crop
    assert padded.sum().item() == 2 * (h * w - (h // 2) * (w // 2))
    assert torch.equal(padded, out["depth"] == INVALID_DEPTH)
    # bilinear RGB blends into the padding across the border pixel; beyond it, pure mean
    near = torch.nn.functional.max_pool2d((~padded).float()[:, None], 3, 1, 1)[:, 0] > 0
    far = padded & ~near
    assert far.sum() > padded.sum() // 2
    mean_colour = torch.tensor([round(255 * m) for m in IMAGENET_MEAN], dtype=torch.uint8)
    rgb = out["rgb"].permute(0, 2, 3, 1)[far]
    assert torch.equal(rgb, mean_colour.expand_as(rgb))
    assert out["image"].permute(0, 2, 3, 1)[far].abs().max() < 0.01


def test_crop_larger_than_image_keeps_all_content():
    batch = random_batch(1, 6, 8, seed=7, holes=False)
    out = BatchAugment(crop_size=(10, 13), targets=COURSE)(batch, torch.Generator().manual_seed(1))
    assert out["semseg"].shape == (1, 10, 13)
    valid = out["depth"] > 0
    assert valid.sum().item() == 6 * 8
    assert sorted(out["depth"][valid].tolist()) == sorted(batch["depth"].flatten().tolist())


# --------------------------------------------------------------------------------------
# properties under random geometry


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    h=st.integers(3, 20),
    w=st.integers(3, 20),
    crop_h=st.integers(2, 24),
    crop_w=st.integers(2, 24),
)
def test_labels_and_depth_only_take_values_of_their_own_input(seed, h, w, crop_h, crop_w):
    batch = random_batch(2, h, w, seed)
    aug = BatchAugment(crop_size=(crop_h, crop_w), **STRONG, targets=COURSE)
    out = aug(batch, torch.Generator().manual_seed(seed))
    assert out["semseg"].dtype == torch.int64 and out["depth"].dtype == torch.float32
    assert out["semseg"].shape == out["depth"].shape == (2, crop_h, crop_w)
    assert out["rgb"].shape == out["image"].shape == (2, 3, crop_h, crop_w)
    for i in range(2):
        labels = set(batch["semseg"][i].unique().tolist()) | {IGNORE_INDEX}
        assert set(out["semseg"][i].unique().tolist()) <= labels
        depths = set(batch["depth"][i].unique().tolist()) | {INVALID_DEPTH}
        assert set(out["depth"][i].unique().tolist()) <= depths


def test_labels_depth_and_rgb_stay_aligned():
    # Every modality encodes the source pixel it came from: depth a unique id, semseg a
    # function of (x, y), RGB linear ramps in x and y. After warping they must agree.
    h, w, k = 32, 32, 7
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    rgb = torch.stack([xs * k, ys * k, torch.zeros_like(xs)]).to(torch.uint8)
    batch = {
        "rgb": rgb.expand(4, 3, h, w).clone(),
        "semseg": ((xs + 3 * ys) % 19).expand(4, h, w).clone(),
        "depth": (1.0 + ys * w + xs).float().expand(4, h, w).clone(),
        "index": torch.arange(4),
    }
    out = BatchAugment(crop_size=(24, 28), **STRONG, targets=COURSE)(
        batch, torch.Generator().manual_seed(3)
    )
    valid = out["depth"] > 0
    assert valid.float().mean() > 0.3  # the check below must see enough pixels
    src = out["depth"][valid].long() - 1
    src_x, src_y = src % w, src // w
    assert torch.equal(out["semseg"][valid], (src_x + 3 * src_y) % 19)
    assert (out["semseg"][~valid] == IGNORE_INDEX).all()
    # bilinear RGB lands within half a pixel (plus rounding) of the nearest source pixel
    interior = (src_x >= 1) & (src_x <= w - 2) & (src_y >= 1) & (src_y <= h - 2)
    red = out["rgb"][:, 0][valid].float() / k
    green = out["rgb"][:, 1][valid].float() / k
    assert (red - src_x)[interior].abs().max() <= 0.5 + 0.5 / k + 1e-4
    assert (green - src_y)[interior].abs().max() <= 0.5 + 0.5 / k + 1e-4


def test_image_is_the_normalized_augmented_rgb():
    batch = random_batch(2, 12, 12, seed=8)
    out = BatchAugment(crop_size=8, **STRONG, targets=COURSE)(
        batch, torch.Generator().manual_seed(8)
    )
    assert torch.equal(out["image"], normalize_rgb(out["rgb"]))
    assert torch.equal(out["index"], batch["index"])


def test_fixed_seed_reproduces_the_batch_and_another_seed_does_not():
    batch = random_batch(3, 16, 20, seed=9)
    aug = BatchAugment(crop_size=(12, 12), **STRONG, targets=COURSE)
    first = aug(batch, torch.Generator().manual_seed(42))
    again = aug(batch, torch.Generator().manual_seed(42))
    other = aug(batch, torch.Generator().manual_seed(43))
    for key in ("image", "rgb", "semseg", "depth"):
        assert torch.equal(first[key], again[key]), key
    assert not torch.equal(first["rgb"], other["rgb"])


def test_samples_in_a_batch_get_different_geometry():
    batch = random_batch(1, 16, 16, seed=10)
    batch = {k: v.expand(4, *v.shape[1:]).clone() for k, v in batch.items()}
    out = BatchAugment(crop_size=(12, 12), **STRONG, targets=COURSE)(
        batch, torch.Generator().manual_seed(0)
    )
    assert len({tuple(out["semseg"][i].flatten().tolist()) for i in range(4)}) == 4


def test_batch_without_ground_truth():
    batch = random_batch(2, 10, 10, seed=11)
    batch = {"rgb": batch["rgb"], "index": batch["index"]}
    out = BatchAugment(crop_size=6, **STRONG, targets=COURSE)(
        batch, torch.Generator().manual_seed(0)
    )
    assert set(out) == {"rgb", "image", "index"}
    assert out["image"].shape == (2, 3, 6, 6)


def test_sampled_parameters_respect_their_ranges():
    aug = BatchAugment(
        crop_size=(20, 30),
        scale_min=0.5,
        scale_max=1.5,
        hflip=0.3,
        tilt_deg=7.0,
        wiggle=0.6,
        targets=COURSE,
    )
    n, hw = 2000, (40, 50)
    p = aug.sample_params(n, hw, torch.Generator().manual_seed(0))
    assert p.scale.min() >= 0.5 and p.scale.max() <= 1.5
    assert p.scale.max() - p.scale.min() > 0.9
    assert p.angle_deg.abs().max() <= 7.0 and p.angle_deg.abs().max() > 6.5
    assert 0.25 < p.flip.float().mean() < 0.35
    assert p.corners[..., 0].abs().max() <= 30 * 0.6 * WIGGLE_SPAN
    assert p.corners[..., 1].abs().max() <= 20 * 0.6 * WIGGLE_SPAN
    slack = torch.stack([p.scale * 50 - 30, p.scale * 40 - 20], -1)
    assert (p.offset >= slack.clamp(max=0) - 1e-9).all()
    assert (p.offset <= slack.clamp(min=0) + 1e-9).all()


def test_perspective_terms_appear_only_with_wiggle():
    hw = (16, 16)
    for wiggle, perspective in ((0.0, False), (0.5, True)):
        aug = BatchAugment(scale_min=0.8, scale_max=1.2, tilt_deg=10, wiggle=wiggle, targets=COURSE)
        params = aug.sample_params(3, hw, torch.Generator().manual_seed(0))
        mat = output_to_source(params, hw, hw)
        assert (mat[:, 2, :2].abs().max() > 1e-6) == perspective


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(scale_min=0.0), "scale_min"),
        (dict(scale_min=2.0, scale_max=1.0), "scale_max"),
        (dict(hflip=1.5), "hflip"),
        (dict(tilt_deg=-1.0), "tilt_deg"),
        (dict(wiggle=2.0), "wiggle"),
        (dict(crop_size=(0, 4)), "crop_size"),
        (dict(crop_size=(1, 2, 3)), "crop_size"),
        (dict(crop_size="ab"), "crop_size"),
    ],
)
def test_bad_settings_are_user_errors(kwargs, word):
    with pytest.raises(UserError, match=word):
        BatchAugment(**kwargs, targets=COURSE)


def test_mismatched_target_shape_is_rejected():
    batch = random_batch(2, 8, 8, seed=12)
    batch["depth"] = batch["depth"][:, :4]
    with pytest.raises(ValueError, match="depth"):
        BatchAugment(hflip=1.0, targets=COURSE)(batch)


# --------------------------------------------------------------------------------------
# which targets are warped


def test_target_rules_of_the_course_tasks():
    # labels: int64, 255 where there is no source pixel; depth: float32 meters, 0.0
    assert {
        "semseg": TargetRule(255.0, torch.int64),
        "depth": TargetRule(0.0, torch.float32),
    } == COURSE


def test_a_map_without_a_rule_is_refused_not_passed_through_unwarped():
    batch = random_batch(1, 8, 8, seed=2)
    with pytest.raises(ValueError, match="no target rule for batch entry 'depth'"):
        BatchAugment(crop_size=(6, 6), targets={"semseg": COURSE["semseg"]})(batch)


def test_a_target_is_warped_by_its_name_with_its_own_fill():
    batch = random_batch(1, 8, 8, seed=13, holes=False)
    batch = {"rgb": batch["rgb"], "index": batch["index"], "parts": batch["semseg"] % 5}
    aug = BatchAugment(crop_size=(12, 12), targets={"parts": (7.0, torch.int64)})
    out = aug(batch, torch.Generator().manual_seed(0))
    assert out["parts"].dtype == torch.int64 and out["parts"].shape == (1, 12, 12)
    padded = out["parts"] == 7
    assert padded.sum().item() == 12 * 12 - 8 * 8
    assert sorted(out["parts"][~padded].tolist()) == sorted(batch["parts"].flatten().tolist())


# --------------------------------------------------------------------------------------
# normals: values that turn with the image


def normals_task():
    from scenemtl.tasks import build_task

    return build_task("normals", {"kind": "normals"})


def radial_normals(h: int, w: int, centre: tuple[float, float]) -> torch.Tensor:
    """[1,3,H,W] unit normals whose (x, y) point away from ``centre`` (x, y) in pixels.

    A bump seen from the front: its normals' in-image components point away from its
    centre, whatever the image's orientation. So after any rotation, reflection or zoom
    of the image, the warped normals must again point away from where the centre went:
    that ties the rule for the values to the pixel geometry, sign included.
    """
    ys = torch.arange(h, dtype=torch.float64) + 0.5
    xs = torch.arange(w, dtype=torch.float64) + 0.5
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    dx, dy = gx - centre[0], gy - centre[1]
    rho = torch.sqrt(dx**2 + dy**2).clamp_min(1e-9)
    n = torch.stack([dx / rho * 0.6, dy / rho * 0.6, torch.full_like(dx, -0.8)])
    return n[None].float()


def in_image_direction_error_deg(
    normals: torch.Tensor, centre: tuple[float, float], min_radius: float
) -> torch.Tensor:
    """Angle between each pixel's normal (x, y) and the direction away from ``centre``,
    at valid pixels at least ``min_radius`` from it."""
    _, _, h, w = normals.shape
    ys = torch.arange(h, dtype=torch.float64) + 0.5
    xs = torch.arange(w, dtype=torch.float64) + 0.5
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    dx, dy = gx - centre[0], gy - centre[1]
    n = normals[0].double()
    keep = (torch.sqrt(dx**2 + dy**2) >= min_radius) & (n != 0).any(0)
    cross = n[0] * dy - n[1] * dx
    dot = n[0] * dx + n[1] * dy
    return torch.rad2deg(torch.atan2(cross.abs(), dot))[keep]


def normals_batch(h: int, w: int, centre: tuple[float, float]) -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "rgb": torch.randint(0, 256, (1, 3, h, w), generator=g, dtype=torch.uint8),
        "normals": radial_normals(h, w, centre),
        "index": torch.arange(1),
    }


def test_hflip_negates_the_x_component_of_normals():
    batch = normals_batch(6, 9, (3.0, 2.0))
    aug = BatchAugment(hflip=1.0, targets=target_rules([normals_task()]))
    out = aug(batch)
    expected = batch["normals"].flip(-1) * torch.tensor([-1.0, 1.0, 1.0]).view(1, 3, 1, 1)
    assert torch.equal(out["normals"], expected)


@pytest.mark.parametrize("angle", [30.0, -50.0, 90.0])
@pytest.mark.parametrize("flip", [False, True])
def test_tilt_flip_and_zoom_turn_normals_with_the_image(angle, flip):
    # The bump's centre sits off the image centre, so a wrong sign or a missing flip
    # shows up as a misplaced centre or normals turned by 2 * angle.
    h, w, centre = 48, 64, (26.0, 22.0)
    batch = normals_batch(h, w, centre)
    params = AugmentParams.identity(1)
    params.angle_deg[:] = angle
    params.flip[:] = flip
    params.scale[:] = 1.5
    params.offset[:] = torch.tensor([0.25 * w, 0.25 * h], dtype=torch.float64)
    out_to_src = output_to_source(params, (h, w), (h, w))
    out = warp_batch(batch, out_to_src, (h, w), target_rules([normals_task()]))
    # where the bump's centre went: invert output -> source at the source centre
    src = torch.tensor([centre[0], centre[1], 1.0], dtype=torch.float64)
    moved = torch.linalg.solve(out_to_src[0], src)
    moved_centre = (float(moved[0] / moved[2]), float(moved[1] / moved[2]))
    err = in_image_direction_error_deg(out["normals"], moved_centre, min_radius=10.0)
    assert err.numel() > 500
    # Nearest-neighbour sampling moves a pixel's source point by at most half a source
    # pixel diagonal (0.71 px) from its exact position, which turns the direction to a
    # centre at least 10 output px = 6.7 source px away by at most asin(0.71/6.7) =
    # 6.1 degrees. A wrong sign would be 2 * angle >= 60 degrees off.
    assert float(err.max()) < 6.1
    # z untouched, lengths kept
    valid = (out["normals"] != 0).any(1)
    torch.testing.assert_close(
        out["normals"][:, 2][valid], torch.full_like(out["normals"][:, 2][valid], -0.8)
    )
    torch.testing.assert_close(out["normals"].norm(dim=1)[valid], torch.ones(int(valid.sum())))


def test_zoom_and_crop_leave_normals_unchanged_and_pad_with_zero():
    # A zoom or a crop only changes the intrinsics: the camera does not turn.
    batch = normals_batch(8, 8, (3.0, 5.0))
    aug = BatchAugment(
        crop_size=(12, 12), scale_min=0.7, scale_max=1.4, targets=target_rules([normals_task()])
    )
    out = aug(batch, torch.Generator().manual_seed(1))
    vectors = out["normals"][0].reshape(3, -1).T
    padded = (vectors == 0).all(1)
    assert padded.any()
    source = {tuple(v) for v in batch["normals"][0].reshape(3, -1).T.tolist()}
    assert {tuple(v) for v in vectors[~padded].tolist()} <= source


def test_wiggle_is_refused_for_runs_with_normals_in_one_line(tmp_path):
    from scenemtl.data.datamodule import SceneDataModule
    from scenemtl.data.format import DatasetInfo, write_info

    root = tmp_path / "ds"
    (root / "train" / "rgb").mkdir(parents=True)
    write_info(
        root,
        DatasetInfo(
            name="n",
            image_size=(8, 8),
            splits={"train": {"size": 0, "gt": True}},
            extra_tasks={"normals": {"kind": "normals", "encoding": "rgb8"}},
        ),
    )
    with pytest.raises(UserError, match=r"data.wiggle is 0.1 but task 'normals' refuses it") as e:
        SceneDataModule(str(root), crop_size=None, wiggle=0.1)
    assert "\n" not in str(e.value)
    SceneDataModule(str(root), crop_size=None, wiggle=0.1, tasks=["semseg", "depth"])
    SceneDataModule(str(root), crop_size=None, tilt_deg=10.0, hflip=0.5, scale_min=0.5)

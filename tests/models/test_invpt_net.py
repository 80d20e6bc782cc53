"""InvPT as a registered architecture (``model.net.architecture: invpt``): outputs, the
sharing contract the balancing methods read, a training step with every method, options
and their one-line errors, a checkpoint round trip, every encoder family (slow)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from scenemtl.balancing import BALANCING_METHODS, accepted_options, build_balancer
from scenemtl.errors import UserError
from scenemtl.models import ARCHITECTURES, ModelConfig, build_model
from scenemtl.models.invpt import AUTHORS_DIMS, InvPTNet, InvPTOptions
from scenemtl.models.registry import check_config
from tests.models.nets import HEADS, SMALL_OPTIONS, small

SMALL = SMALL_OPTIONS["invpt"]
GRADIENT_LEVEL_METHODS = {m for m in BALANCING_METHODS if "wrt" in accepted_options(m)}
"""The methods that combine per-task gradients (they take ``wrt``)."""


def invpt(**kw: object) -> ModelConfig:
    return small("invpt", **kw)


def test_registered_with_the_authors_defaults() -> None:
    assert ARCHITECTURES["invpt"] is InvPTNet
    defaults = vars(InvPTOptions())
    assert {k: defaults[k] for k in AUTHORS_DIMS} == AUTHORS_DIMS
    assert defaults["q_stride"] == 2 and defaults["qkv_bias"] is True
    model = build_model(invpt(options={**SMALL, "drop_path": 0.0}), HEADS)
    assert model.options.drop_path == 0.0 and model.output_stages == ("intermediate", "final")


@pytest.mark.parametrize(("h", "w"), [(64, 96), (45, 67)])
def test_intermediate_and_final_outputs_at_the_input_size(h: int, w: int) -> None:
    model = build_model(invpt(), HEADS).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, h, w))
    for task, channels in HEADS.items():
        assert [tuple(o.shape) for o in out[task]] == [(2, channels, h, w)] * 2


def test_the_split_network_is_the_decoder_on_the_encoder_pyramid() -> None:
    """At a multiple of 32 the stride-4 grid is twice the stride-8 one, so the final maps
    of ``decode(shared_forward(x))`` are the standalone decoder's, and the intermediate
    ones its stride-32 predictions. Same operations in the same order: float32 rounding of
    the few-hundred-term sums only (~1e-6 of values of order 1)."""
    torch.manual_seed(0)
    model = build_model(invpt(), HEADS).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        split = model.decode(model.shared_forward(x))
        whole = model.decoder(model.encoder(x))
    for task in HEADS:
        intermediate, final = split[task]
        assert final.shape[-2:] == (16, 24) and intermediate.shape[-2:] == (2, 3)
        torch.testing.assert_close(final, whole.final[task], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(intermediate, whole.auxiliary[task], atol=1e-5, rtol=1e-5)


def test_only_the_last_layers_after_the_joint_normalization_are_a_task_s_own() -> None:
    model = build_model(invpt(), HEADS)
    assert not model.has_shared_representation
    own = {id(p) for p in model.task_parameters()}
    names = {n for n, p in model.named_parameters() if id(p) in own}
    assert names and all(
        n.startswith(("decoder.redu_chan.", "decoder.mt_proj.", "decoder.heads.")) for n in names
    )
    # the preliminary decoders, their heads and the stages reach every task: shared
    shared = {n for n, p in model.named_parameters() if id(p) not in own}
    for prefix in ("encoder.", "decoder.preliminary_decoder.semseg.", "decoder.stages.2.block."):
        assert any(n.startswith(prefix) for n in shared), prefix
    keys = set(model.eval().shared_forward(torch.randn(1, 3, 64, 64)))
    assert keys == {f"{t}/{k}" for t in HEADS for k in ("0", "1", "2", "intermediate")}


def test_every_parameter_learns() -> None:
    torch.manual_seed(0)
    model = build_model(invpt(options={**SMALL, "drop_path": 0.0}), HEADS).train()
    out = model(torch.randn(2, 3, 64, 96))
    sum(o.square().mean() for outs in out.values() for o in outs).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing[:5]
    # and nonzero throughout the decoder (the ResNet's zero-initialized residual BNs
    # leave some encoder gradients at exactly zero on the first step)
    zero = [n for n, p in model.decoder.named_parameters() if not p.grad.any()]
    assert not zero, zero[:5]


def test_a_dilated_encoder_without_stride_16_feeds_its_coarsest_finer_level() -> None:
    cfg = invpt(encoder_options={"dilation": [False, True, True]})
    assert cfg.output_stride == 8
    model = build_model(cfg, HEADS).eval()
    assert model.decoder.fused_levels == [8, 8]
    with torch.no_grad():
        out = model(torch.randn(1, 3, 50, 70))
    assert out["depth"][-1].shape == (1, 1, 50, 70)


# ------------------------------------------------------------------------ balancing


def _engine_net():
    torch.manual_seed(0)
    options = {**SMALL, "drop_path": 0.0}
    cfg = ModelConfig(architecture="invpt", encoder="resnet18", encoder_width=16, options=options)
    return build_model(cfg, {"semseg": 19, "depth": 1}).eval()  # eval: BN without batch stats


def test_the_sum_of_methods_is_the_weighted_sum_over_the_shared_part() -> None:
    """``mean`` (gradient level, per-task gradients on every shared parameter) gives the
    weighted sum's update and the per-task Gram matrix, each computed independently one
    task at a time (tests/balancing/test_protocol.py's reference). Tolerance of the update:
    float32 sums of the same terms in another order, a few ulp of the largest term; some
    gradients are zero up to rounding (the key projection's bias: softmax ignores a
    constant per query), so the bound is 1e-4 of the largest gradient of the network."""
    from tests.balancing.test_protocol import engine_step, reference

    net = _engine_net()
    want, gramian = reference(net)
    got, result = engine_step(net, "mean", monitor=True, wrt="parameters")
    scale = max(float(a.abs().max()) for a in want)
    for a, b in zip(want, got, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-4 * scale)
    torch.testing.assert_close(result.gramian, gramian, rtol=1e-4, atol=1e-8 * float(gramian.max()))
    assert float(gramian[0, 1]) != 0.0


@pytest.mark.parametrize("method", BALANCING_METHODS)
def test_one_training_step_with_every_balancing_method(method: str) -> None:
    net = _engine_net()
    before = [p.detach().clone() for p in net.parameters()]
    from tests.balancing.test_protocol import engine_step

    # each method's default options and no loss weights
    grads, _ = engine_step(net, method, monitor=True, weights=None)
    assert all(torch.isfinite(g).all() for g in grads)
    shared = {id(p) for p in net.shared_parameters()}
    reached = [g.abs().sum() > 0 for p, g in zip(net.parameters(), grads, strict=True)]
    assert sum(reached) > len(shared) // 2  # the combined gradient reaches the shared part
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for p, g in zip(net.parameters(), grads, strict=True):
        p.grad = g
    opt.step()
    assert any((p - b).abs().sum() > 0 for p, b in zip(net.parameters(), before, strict=True))


@pytest.mark.parametrize("method", sorted(GRADIENT_LEVEL_METHODS))
def test_representation_level_gradients_are_refused_in_one_line(method: str) -> None:
    from tests.balancing.test_protocol import TASKS

    balancer = build_balancer(method, tasks=TASKS, wrt="representation")
    with pytest.raises(UserError) as error:
        balancer.check_setup(1, "32-true", InvPTNet.has_shared_representation)
    assert "representation" in str(error.value) and "\n" not in str(error.value)


# -------------------------------------------------------------------------- options

BAD = [
    ({"embed_dim": 0}, "model.net.options.embed_dim: expected an integer 1..4096"),
    ({"num_heads": 5}, "model.net.options.num_heads: the stage widths"),
    ({"kv_strides": [2, 2, 2]}, "model.net.options.kv_strides: [2, 2, 2] must pool"),
    ({"kv_strides": [2, 4]}, "model.net.options.kv_strides: expected 3 positive integers"),
    ({"mlp_ratio": "4"}, "model.net.options.mlp_ratio: expected a number"),
    ({"drop_path": 1.0}, "model.net.options.drop_path: expected a number 0..0.99"),
    ({"q_stride": 8}, "model.net.options.q_stride: expected an integer 1..4"),
    ({"qkv_bias": 1}, "model.net.options.qkv_bias: expected true or false"),
    ({"heads": 2}, "model.net.options.heads: invpt has no such option"),
]


@pytest.mark.parametrize(("options", "message"), BAD)
def test_bad_options_stop_in_one_line(options: dict, message: str) -> None:
    with pytest.raises(UserError) as error:
        check_config(invpt(options={**SMALL, **options}))
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_a_checkpoint_round_trip(tmp_path: Path) -> None:
    from scenemtl.engine.module import MultiTaskModule

    net = {"architecture": "invpt", "encoder": "resnet18", "encoder_width": 16, "options": SMALL}
    module = MultiTaskModule(net=net).eval()
    path = tmp_path / "invpt.ckpt"
    hparams = {**dict(module.hparams), "net": dict(vars(module.hparams["net"]))}
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hparams}, path)
    loaded = MultiTaskModule.from_checkpoint(path)
    assert isinstance(loaded.net, InvPTNet) and loaded.net.options == InvPTOptions(**SMALL)
    image = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        want, got = module.predict_step({"image": image}), loaded.predict_step({"image": image})
    # same weights, same kernels: any difference is thread-order rounding (~1e-6 of O(1))
    for task in want:
        torch.testing.assert_close(got[task].float(), want[task].float(), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_every_encoder_family() -> None:
    from tests.models.test_encoder_families import SMALLEST

    for name in SMALLEST.values():
        cfg = ModelConfig(architecture="invpt", encoder=name, options={**SMALL, "drop_path": 0.0})
        model = build_model(cfg, HEADS).train()
        out = model(torch.randn(2, 3, 70, 90))
        assert [tuple(o.shape) for o in out["semseg"]] == [(2, 5, 70, 90)] * 2, name
        sum(o.float().mean() for outs in out.values() for o in outs).backward()
        missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        # InvPT reads strides 8, 16 and 32: the ViT adapter's stride-4 level stays unused
        missing = [n for n in missing if not n.startswith("encoder.adapter.levels.4.")]
        assert not missing, (name, missing[:3])


@pytest.mark.slow
def test_onnx_export_agrees_with_torch_at_two_sizes(tmp_path: Path) -> None:
    from scenemtl.commands.export import export_onnx
    from scenemtl.engine.module import MultiTaskModule

    torch.manual_seed(0)
    net = {"architecture": "invpt", "encoder": "resnet18", "encoder_width": 16, "options": SMALL}
    module = MultiTaskModule(net=net)
    # compared with torch at 128x192 and 139x205 (not multiples of 64); raises otherwise
    report = export_onnx(module, tmp_path / "invpt.onnx", size=(128, 192), runs=1, threads=1)
    assert (tmp_path / "invpt.onnx").stat().st_size > 0 and len(report.comparisons) == 2

"""A checkpoint's hyper-parameters are data from a file: checked where they are read.

read_checkpoint checks the type of every key MultiTaskModule takes against its signature;
every command that loads a checkpoint goes through it. Property tests: random
hyper-parameter dicts give a checkpoint, or one UserError line, never another exception.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from scenemtl.engine.checkpoint import hparams_problem, read_checkpoint
from scenemtl.engine.module import MultiTaskModule
from scenemtl.errors import UserError
from tests.hostile import assert_refused

TINY_NET = {"architecture": "joint", "encoder": "resnet18", "channels": 8, "skip_channels": 4}


def _ckpt(path: Path, hparams: dict) -> Path:
    torch.save({"state_dict": {}, "hyper_parameters": hparams}, path)
    return path


@pytest.mark.parametrize(
    ("hparams", "culprit"),
    [
        ({"net": 5}, "net: 5 is not"),
        ({"net": [1, 2]}, "net: [1, 2] is not"),
        ({"net": {"encoder": 3}}, "net: {'encoder': 3}"),
        ({"net": {"no_such_field": 1}}, "net:"),
        ({"net": TINY_NET, "lr": "fast"}, "lr: 'fast' is not float"),
        ({"net": TINY_NET, "lr_milestones": [1.5]}, "lr_milestones"),
        ({"net": TINY_NET, "channels_last": 1}, "channels_last: 1 is not bool"),
        ({"net": TINY_NET, "task_specs": ["semseg"]}, "task_specs"),
        ({"net": TINY_NET, "loss_weights": {"depth": "x"}}, "loss_weights"),
        ({"net": TINY_NET, 3: "x"}, "key 3 is not a string"),
    ],
)
def test_predict_refuses_mistyped_hyperparameters(tmp_path, capsys, hparams, culprit):
    ckpt = _ckpt(tmp_path / "bad.ckpt", hparams)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    argv = ["predict", "--ckpt_path", ckpt, "--input", tmp_path / "a.png"]
    argv += ["--output", tmp_path / "out"]
    line = assert_refused(argv, capsys, [str(ckpt), culprit], watch=[tmp_path])
    assert "hyperparameters do not fit" in line
    assert not (tmp_path / "out").exists()


def test_validate_refuses_mistyped_hyperparameters(tmp_path, tiny_root, capsys):
    from tests.helpers import tiny_config

    cfg = tiny_config(tmp_path, tiny_root)
    ckpt = _ckpt(tmp_path / "bad.ckpt", {"net": [1, 2]})
    argv = ["validate", "--config", cfg, "--ckpt_path", ckpt, "--run.root", tmp_path / "runs"]
    assert_refused(argv, capsys, [str(ckpt), "net: [1, 2]"], watch=[tmp_path, tiny_root])


def test_the_module_signature_is_what_is_checked():
    """Every parameter of MultiTaskModule has a type the checker knows (a new parameter
    with an unknown type would raise TypeError here, not in a user's hands)."""
    import inspect

    for name in inspect.signature(MultiTaskModule.__init__).parameters:
        if name != "self":
            hparams_problem({name: None}, MultiTaskModule)
            hparams_problem({name: {"a": [1, 2.0, "x", None]}}, MultiTaskModule)


# --------------------------------------------------------------------------------------
# property tests

PLAIN = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=6)
    | st.sampled_from(["sgd", "adam", "poly", "step", "log", "l1", "semseg", "depth", "fixed"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.text(max_size=6) | st.sampled_from(["semseg", "depth", "kind"]), inner, max_size=3
        )
    ),
    max_leaves=8,
)
KEYS = sorted(set(__import__("inspect").signature(MultiTaskModule.__init__).parameters) - {"self"})


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    hparams=st.dictionaries(
        st.sampled_from(KEYS) | st.text(max_size=5) | st.integers(), PLAIN, max_size=6
    )
)
def test_read_checkpoint_accepts_or_refuses_in_one_line(tmp_path, hparams):
    path = _ckpt(tmp_path / "x.ckpt", hparams)
    try:
        ckpt = read_checkpoint(path, MultiTaskModule)
    except UserError as e:
        assert str(path) in str(e) and "\n" not in str(e)
        return
    assert ckpt["hyper_parameters"] == hparams or _has_nan(hparams)


def _has_nan(value) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, dict):
        return any(_has_nan(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_nan(v) for v in value)
    return False


WORDS = st.sampled_from(
    [
        "sgd",
        "adam",
        "adamw",
        "poly",
        "step",
        "log",
        "meters",
        "inverse",
        "l1",
        "l2",
        "silog",
        "semseg",
        "depth",
        "normals",
        "fixed",
        "dwa",
        "uncertainty",
        "pcgrad",
        "segmentation",
        "kind",
        "classes",
        "",
    ]
)


def typed(hint) -> st.SearchStrategy:
    """Values of the type ``hint``, written from the types themselves (not through the
    checker), so that the constructor's own checks are reached."""
    import types
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any:
        return PLAIN
    if origin in (typing.Union, types.UnionType):
        return st.one_of([typed(a) for a in args])
    if hint is type(None):
        return st.none()
    if hint is bool:
        return st.booleans()
    if hint is int:
        return st.integers(-3, 10**6)
    if hint is float:
        return st.floats(allow_nan=True, allow_infinity=True) | st.integers(-3, 3)
    if hint is str:
        return WORDS | st.text(max_size=4)
    if origin is list:
        return st.lists(typed(args[0]), max_size=3)
    if origin is dict:
        return st.dictionaries(typed(args[0]), typed(args[1]), max_size=3)
    raise AssertionError(f"no strategy for {hint}")


def _hints() -> dict:
    import typing

    hints = typing.get_type_hints(MultiTaskModule.__init__)
    return {k: v for k, v in hints.items() if k not in ("return", "net")}


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(hparams=st.fixed_dictionaries({}, optional={k: typed(v) for k, v in _hints().items()}))
def test_loading_a_checkpoint_builds_the_module_or_refuses_in_one_line(tmp_path, hparams):
    """The whole load (types, then the constructor's range checks, then the weights) on a
    tiny network: a module, or one UserError line; the state dict is empty, so a module
    means the network has no parameters, which none has: always a UserError here."""
    path = _ckpt(tmp_path / "x.ckpt", {"net": TINY_NET, **hparams})
    with pytest.raises(UserError) as err:
        MultiTaskModule.from_checkpoint(path)
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_options_a_method_no_longer_takes_do_not_refuse_a_trained_network(tmp_path):
    """MGDA took epsilon and max_iters before its exact solver; predicting with such a run
    never uses the balancing method, so its checkpoint still loads (without them)."""
    net = {**TINY_NET, "encoder_width": 8}
    module = MultiTaskModule(net=net, loss_weighting="mgda")
    hparams = {**dict(module.hparams), "net": dict(vars(module.hparams["net"]))}
    hparams["weighting_options"] = {"epsilon": 1e-3, "max_iters": 100}
    path = tmp_path / "old_mgda.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hparams}, path)
    loaded = MultiTaskModule.from_checkpoint(path)
    assert loaded.hparams["loss_weighting"] == "mgda" and loaded.hparams["weighting_options"] == {}
    image = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        want, got = (
            module.eval().predict_step({"image": image}),
            loaded.predict_step({"image": image}),
        )
    torch.testing.assert_close(got["depth"], want["depth"])  # same weights, same path


FINETUNING = {
    "lr_schedule": "cosine",
    "lr_warmup_steps": 7,
    "lr_warmup_fraction": 0.0,
    "layer_decay": 1.0,
    "freeze_encoder": True,
    "lora": None,
}


def test_fine_tuning_options_are_saved_and_old_checkpoints_load_without_them(tmp_path):
    net = {**TINY_NET, "encoder_width": 8}
    module = MultiTaskModule(net=net, **FINETUNING)
    hparams = {**dict(module.hparams), "net": dict(vars(module.hparams["net"]))}
    assert {k: hparams[k] for k in FINETUNING} == FINETUNING
    path = tmp_path / "finetuned.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hparams}, path)
    loaded = MultiTaskModule.from_checkpoint(path)
    assert {k: loaded.hparams[k] for k in FINETUNING} == FINETUNING
    assert not any(p.requires_grad for p in loaded.net.encoder.parameters())
    # a checkpoint from before these options: the defaults (no warm-up, nothing frozen)
    old = {k: v for k, v in hparams.items() if k not in FINETUNING}
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": old}, path)
    loaded = MultiTaskModule.from_checkpoint(path)
    assert loaded.hparams["lr_schedule"] == "poly" and loaded.hparams["lr_warmup_steps"] == 0
    assert loaded.hparams["layer_decay"] == 1.0 and loaded.hparams["lora"] is None
    assert all(p.requires_grad for p in loaded.net.encoder.parameters())

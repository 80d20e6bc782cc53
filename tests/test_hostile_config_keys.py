"""Hostile values for every key of ``fit``'s configuration, parsed and validated in this
process (every class is built, the Trainer too; ``Trainer.fit`` itself does nothing).

The keys are the leaves of ``scenemtl fit --print_config`` and the fields of
``model.net``; the values are of the wrong type, negative, huge, NaN, unicode, nested.
The contract: exit 0, or exit 1/2 with exactly one ``scenemtl: error:`` line, no
traceback, and every file that existed byte for byte as it was.

Examples run in the suite: ``max_examples`` of the ``hostile`` profile (a few seconds).
``HYPOTHESIS_PROFILE=hostile-deep`` runs hundreds (what found the cases kept below as
regular tests).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import os
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import lightning.pytorch as lp
import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from scenemtl.cli import main
from scenemtl.models.config import ModelConfig
from tests.helpers import tiny_config, write_random_dataset
from tests.hostile import assert_unchanged, run, snapshot

settings.register_profile(
    "hostile",
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile(
    "hostile-deep",
    max_examples=400,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # report, do not shrink (slow)
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "hostile")
if not PROFILE.startswith("hostile"):
    PROFILE = "hostile"

HOSTILE_VALUES = st.one_of(
    st.sampled_from(
        [
            # wrong types
            "abc",
            "[1, 2]",
            "{a: 1}",
            "true",
            "null",
            "1.5",
            "''",
            # negative, zero
            "-1",
            "0",
            "-1000000000",
            # huge
            "1000000000",
            "99999999999999999999999",
            "1e308",
            # not a number
            ".nan",
            "nan",
            "inf",
            "-inf",
            # unicode
            "ü",
            "٣",
            "\u202e",
            "日本",
            # nested
            "{a: {b: [1, {c: 2}]}}",
            "[[[[1]]]]",
            "[1, [2, [3]]]",
            # sizes
            "[100000, 100000]",
            "[1, 1000000000]",
            "[0, 0]",
            "[-1, 5]",
            "[1000000000, 1000000000, 1000000000]",
        ]
    ),
    st.integers(-(2**70), 2**70).map(str),
    st.text(max_size=6),
)


def _leaves(tree: Any, prefix: str = "") -> list[str]:
    if isinstance(tree, dict) and tree:
        return [k for key, v in tree.items() for k in _leaves(v, f"{prefix}{key}.")]
    return [prefix.rstrip(".")]


@pytest.fixture(scope="module")
def fit_keys() -> list[str]:
    """Every key of fit's configuration: the printed defaults and model.net's fields."""
    out = io.StringIO()
    with redirect_stdout(out), pytest.raises(SystemExit):
        main(["fit", "--print_config"])
    keys = _leaves(yaml.safe_load(out.getvalue()))
    keys += [f"model.net.{f.name}" for f in dataclasses.fields(ModelConfig)]
    return sorted(set(keys) - {"model.net"})


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from scenemtl.data.stats import write_stats

    base = tmp_path_factory.mktemp("keys")
    root = base / "ds"
    write_random_dataset(root, sizes={"train": 2, "val": 1}, image_size=(16, 24))
    write_stats(root)
    tiny_config(base, root, **{"run.root": str(base / "runs")})
    return base


def _contract(result) -> None:
    assert "Traceback" not in result.err, result.err[-3000:]
    if result.code == 0:
        return
    assert result.code in (1, 2), (result.code, result.err[-3000:])
    lines = [x for x in result.err.splitlines() if x.startswith("scenemtl: error:")]
    assert len(lines) == 1, result.err[-3000:]


@functools.wraps(lp.Trainer.fit)  # LightningCLI reads fit's options from its signature
def _no_fit(self, *args, **kwargs) -> None:
    return None


def _fit(setup: Path, capsys, monkeypatch, key: str, value: str):
    """``fit --config tiny.yaml --KEY=VALUE`` with a Trainer.fit that does nothing."""
    monkeypatch.setattr(lp.Trainer, "fit", _no_fit)
    monkeypatch.chdir(setup)  # a relative path in a value lands here
    before = snapshot(setup / "ds", setup / "tiny.yaml")
    result = run(["fit", "--config", str(setup / "tiny.yaml"), f"--{key}={value}"], capsys)
    assert_unchanged(before, snapshot(setup / "ds", setup / "tiny.yaml"))
    return result


def test_the_keys_cover_every_section(fit_keys) -> None:
    sections = {k.split(".")[0] for k in fit_keys}
    assert {"trainer", "model", "data", "run", "seed_everything", "ckpt_path"} <= sections
    assert "model.net.channels" in fit_keys and "data.crop_size" in fit_keys


@settings(settings.get_profile(PROFILE))
@given(data=st.data(), value=HOSTILE_VALUES)
def test_any_value_of_any_key_is_taken_or_one_line(
    setup, fit_keys, capsys, monkeypatch, data, value
) -> None:
    key = data.draw(st.sampled_from(fit_keys), label="key")
    _contract(_fit(setup, capsys, monkeypatch, key, value))


# what the property found, kept as regular tests (one example per class)
@pytest.mark.parametrize(
    ("key", "value", "culprit"),
    [
        # Trainer's own ValueError for an unknown strategy: was a traceback
        ("trainer.strategy", "abc", "strategy='abc'"),
        ("trainer.precision", "abc", "trainer.precision: invalid value abc"),
        # Lightning's seed_everything raised ValueError (a traceback) above 2^32 - 1
        ("seed_everything", str(2**70), "seed_everything must be an integer in 0..4294967295"),
        ("seed_everything", "-1", "seed_everything must be"),
        # sizes bounded before allocation (tests/test_hostile_bounds.py has the edges)
        ("model.net.channels", "1000000000", "model.net.channels"),
        ("data.crop_size", "[100000, 100000]", "crop_size"),
    ],
)
def test_found_examples(setup, capsys, monkeypatch, key, value, culprit) -> None:
    result = _fit(setup, capsys, monkeypatch, key, value)
    _contract(result)
    assert result.code in (1, 2) and culprit in result.err, result.err[-2000:]

"""Names a user gives become one folder below their root, or are refused in one line.

The rule lives in scenemtl.names; these tests hold every place a name becomes a path to
it: run names (RunFamily, `fit --run.name`), study, preset, variant and baseline names,
and `data cityscapes --out` against `--src`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from scenemtl.errors import UserError
from scenemtl.names import NAME_MAX, check_name, is_name
from scenemtl.reporting.run_dir import RunFamily
from scenemtl.studies.spec import load_study
from tests.helpers import tiny_config
from tests.hostile import assert_refused

HOSTILE = [
    "../x",
    "../../x",
    "..",
    ".",
    "",
    "/tmp/abs",
    "a/b",
    "a\\b",
    ".hidden",
    "-rf",
    "a\n",  # `$` of a Python regex matches before a final newline: fullmatch does not
    "a b",
    "é",
    "x" * (NAME_MAX + 1),
]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_are_refused_in_one_line(name):
    assert not is_name(name)
    with pytest.raises(UserError) as err:
        check_name(name, "--run.name")
    assert "\n" not in str(err.value) and "--run.name" in str(err.value)


@pytest.mark.parametrize("value", [None, 5, ["a"], b"abc"])
def test_non_strings_are_not_names(value):
    assert not is_name(value)


@pytest.mark.parametrize(
    "name",
    ["tiny", "course-cpu", "seed_0", "v1.2", "A", "lr=0.01", "exp+aug", "_base", "a@b,c%",
     "x" * NAME_MAX],
)  # fmt: skip
def test_ordinary_names_pass(name):
    assert check_name(name, "name") == name


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=NAME_MAX + 5))
def test_a_name_is_exactly_one_plain_path_component(text):
    """Independent statement of the rule: what passes is one component that resolves to
    a child of its root, made of the allowed characters."""
    alnum = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
    # docs/reliability.md "Names": letters, digits and _ first; then also . = + , @ % -
    # (study variants are named like lr=0.01,bs=8)
    allowed = alnum | set("_.=+,@%-")
    expected = 1 <= len(text) <= NAME_MAX and set(text) <= allowed and text[0] in alnum | {"_"}
    assert is_name(text) == expected
    if expected:
        root = Path("/r")
        assert (root / text).parent == root and Path(text).name == text


def test_run_family_refuses_before_creating_anything(tmp_path):
    for name in ("../escaped", str(tmp_path / "abs")):
        with pytest.raises(UserError, match="is not a name"):
            RunFamily(tmp_path / "runs", name)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/scenemtl-escaped-run", "a/b"])
def test_fit_refuses_a_run_name_outside_the_root(tmp_path, tiny_root, capsys, name):
    cfg = tiny_config(tmp_path, tiny_root)
    runs = tmp_path / "runs"
    argv = ["fit", "--config", cfg, "--run.root", runs, "--run.name", name]
    assert_refused(argv, capsys, [name, "is not a name"], watch=[tmp_path, tiny_root])
    assert not runs.exists()
    assert not (tmp_path.parent / "escaped").exists()
    assert not Path("/tmp/scenemtl-escaped-run").exists()


# --------------------------------------------------------------------------------------
# study files


def _study(tmp_path: Path, **doc) -> Path:
    (tmp_path / "base.yaml").write_text("model: {lr: 0.1}\n")
    body = {"config": "base.yaml", "variants": [{"name": "a"}], **doc}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


@pytest.mark.parametrize(
    ("doc", "preset", "culprit"),
    [
        ({"name": "../../out"}, None, "name '../../out'"),
        ({"name": "/abs"}, None, "name '/abs'"),
        ({"variants": [{"name": "../up"}]}, None, "variants[0].name '../up'"),
        ({"variants": [{"name": "ok\n"}]}, None, "variants[0].name"),
        ({"presets": {"../p": {}}}, "../p", "preset '../p'"),
        ({"baselines": {"tasks": ["../t"]}}, None, "baselines.tasks"),
    ],
)
def test_study_names_that_would_leave_the_runs_folder(tmp_path, doc, preset, culprit):
    path = _study(tmp_path, **doc)
    with pytest.raises(UserError) as err:
        load_study(path, preset)
    assert culprit in str(err.value) and str(path) in str(err.value)


def test_study_cli_refuses_a_hostile_variant_name(tmp_path, capsys):
    path = _study(tmp_path, variants=[{"name": "../../escaped"}])
    runs = tmp_path / "runs"
    argv = ["study", "run", path, "--runs", runs]
    assert_refused(argv, capsys, ["../../escaped", "is not a name"], watch=[tmp_path])
    assert not runs.exists()


# --------------------------------------------------------------------------------------
# data cityscapes --out


def _fake_cityscapes(src: Path) -> None:
    from tests.data.test_cityscapes import _write_fake_cityscapes

    _write_fake_cityscapes(src, splits=("val",))


@pytest.mark.parametrize(
    ("out", "word"), [("src/out", "is inside"), ("src", "is"), ("src/../src/x", "is inside")]
)
def test_cityscapes_out_inside_src_is_refused(tmp_path, capsys, out, word):
    src = tmp_path / "src"
    _fake_cityscapes(src)
    argv = ["data", "cityscapes", "--src", src, "--out", tmp_path / out]
    line = assert_refused(argv, capsys, ["--out", "--src", word], watch=[tmp_path])
    assert "outside the source" in line


def test_cityscapes_out_holding_src_is_refused(tmp_path, capsys):
    src = tmp_path / "out" / "cs"
    _fake_cityscapes(src)
    argv = ["data", "cityscapes", "--src", src, "--out", tmp_path / "out"]
    assert_refused(argv, capsys, ["contains", str(src)], watch=[tmp_path])


def test_cityscapes_out_through_a_link_into_src_is_refused(tmp_path, capsys):
    src = tmp_path / "src"
    _fake_cityscapes(src)
    (tmp_path / "link").symlink_to(src)
    argv = ["data", "cityscapes", "--src", src, "--out", tmp_path / "link" / "out"]
    assert_refused(argv, capsys, ["is inside"], watch=[tmp_path])

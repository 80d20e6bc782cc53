"""Study files of any content: a StudySpec or one UserError line, never another exception.

Property test over random documents (types, nesting, shared values written as YAML
aliases, names, sizes) and encodings; the examples it found are kept as regular tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scenemtl.errors import UserError
from scenemtl.studies.spec import _PRESET_KEYS, _TOP_KEYS, StudySpec, load_study

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["a", "b", "base.yaml", "../x", "model.lr", "semseg", "cpu", "", "1e3"])
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.text(max_size=8) | st.integers(0, 3) | st.booleans(), inner, max_size=4
        )
    ),
    max_leaves=20,
)
KEYS = st.sampled_from(sorted(_TOP_KEYS | _PRESET_KEYS | {"variant_overrides", "colour"}))


@st.composite
def study_documents(draw: st.DrawFn) -> dict:
    """Mostly plausible studies with random parts; the same object may appear twice (the
    dumper then writes an anchor and an alias)."""
    doc: dict = {"variants": [{"name": "a"}, {"name": "b", "overrides": {"model.lr": 0.5}}]}
    if draw(st.booleans()):
        doc["config"] = "base.yaml"
    for key in draw(st.lists(KEYS, max_size=5)):
        doc[key] = draw(VALUES)
    if draw(st.booleans()):
        doc["presets"] = {"cpu": draw(st.dictionaries(KEYS, VALUES, max_size=3))}
    if draw(st.booleans()) and doc:
        shared = draw(VALUES)
        doc[draw(KEYS)] = shared
        doc[draw(KEYS)] = [shared, shared]
    return doc


def _write(folder: Path, data: bytes) -> Path:
    (folder / "base.yaml").write_text("model: {lr: 0.1}\n")
    path = folder / "s.yaml"
    path.write_bytes(data)
    return path


def assert_contract(path: Path, preset: str | None) -> None:
    try:
        spec = load_study(path, preset)
    except UserError as e:
        assert "\n" not in str(e) and str(path) in str(e), str(e)
        return
    assert isinstance(spec, StudySpec)
    assert all(v.name and "/" not in v.name for v in spec.all_variants)


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    doc=study_documents(),
    encoding=st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-16", "latin-1"]),
    preset=st.sampled_from([None, None, "cpu", "../x"]),
)
def test_any_study_document_is_a_spec_or_one_line(tmp_path, doc, encoding, preset):
    text = yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)
    try:
        data = text.encode(encoding)
    except UnicodeEncodeError:
        data = text.encode("utf-8")
    assert_contract(_write(tmp_path, data), preset)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=300))
def test_any_bytes_are_a_spec_or_one_line(tmp_path, data):
    assert_contract(_write(tmp_path, b"variants: [{name: a}]\n" + data), None)


@pytest.mark.parametrize(
    "text",
    [
        # found by the property tests above, kept as regular cases
        "variants: [{name: a}]\ncolour: 1\n1: x\n",  # mixed key types in one error message
        "variants: [{name: a, 0: x}]\n",
        "variants: [{name: a}]\npresets: {cpu: {0: 1, seeds: [0]}}\n",
        "variants: [{name: a}]\nsearch: {space: {model.lr: [1]}, 1: 2}\n",
        "variants: [{name: a}]\nconfig: " + "x" * 300 + "\n",  # ENAMETOOLONG
        "variants: [{name: a}]\nconfig: [" + "x/" * 3000 + "]\n",
        "variants: [{name: a}]\nconfig: 'a\\0b'\n",
        "variants: [{name: a}]\nbaselines: {variant: [1], tasks: [semseg]}\n",
        "variants: [{name: a}]\nmonitor_mode: [max]\n",
        "variants: [{name: a}]\npresets: {cpu: {variants: [[a]]}}\n",
        "variants: [{name: a}]\npresets: {cpu: {variant_overrides: {[1]: 2}}}\n",
        "variants: [{name: a}]\nseeds: [10000000000000000000000000]\n",
        "variants: [{name: a}]\npresets: {0: null}\n",  # integer preset names in the message
    ],
)
def test_found_examples(tmp_path, text):
    assert_contract(_write(tmp_path, text.encode()), "cpu" if "presets" in text else None)

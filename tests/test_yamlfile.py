"""read_yaml_mapping: every way a user's YAML file can be wrong is one line naming it."""

from pathlib import Path

import pytest

from scenemtl.errors import UserError
from scenemtl.yamlfile import MAX_YAML_BYTES, MAX_YAML_DEPTH, MAX_YAML_NODES, read_yaml_mapping
from tests.hostile import assert_refused


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"\xff\xfe\x00garbage", "not valid YAML"),
        (b"a: [1, 2\n", "not valid YAML"),
        (b"- a\n- b\n", "expected a mapping at the top level, got list"),
        (b"just a string\n", "got str"),
    ],
)
def test_bad_files_are_one_line_naming_the_file(tmp_path: Path, content: bytes, needle: str):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    with pytest.raises(UserError) as err:
        read_yaml_mapping(path)
    assert needle in str(err.value) and str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_file_says_what_was_looked_for(tmp_path: Path):
    with pytest.raises(UserError, match=r"^study file not found: .*nope\.yaml$"):
        read_yaml_mapping(tmp_path / "nope.yaml", "study file")


def test_empty_file_is_an_empty_mapping(tmp_path: Path):
    (tmp_path / "e.yaml").write_text("")
    assert read_yaml_mapping(tmp_path / "e.yaml") == {}
    (tmp_path / "m.yaml").write_text("model: {lr: 0.1}\n")
    assert read_yaml_mapping(tmp_path / "m.yaml") == {"model": {"lr": 0.1}}


# --------------------------------------------------------------------------------------
# bounds: size, aliases, depth (a user's YAML is read before anything checks its values)


def laughs(levels: int = 9, width: int = 9) -> str:
    """The "billion laughs" document: ``width ** levels`` strings through aliases."""
    lines = ['l0: &l0 "lol"']
    for i in range(1, levels + 1):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (laughs(), f"more than {MAX_YAML_NODES} nodes"),
        ("a: &a [1, *a]\n", "inside the node it names"),
        ("a: " + "[" * (MAX_YAML_DEPTH + 1) + "]" * (MAX_YAML_DEPTH + 1) + "\n", "deeper than"),
        ("a: " + "[" * 5000 + "]" * 5000 + "\n", "deeper than"),  # PyYAML recursion
        ("a: " + "{b: " * (MAX_YAML_DEPTH + 1) + "1" + "}" * (MAX_YAML_DEPTH + 1), "deeper"),
        ("a: 1" + "0" * 5000 + "\n", "not valid YAML"),  # int() refuses 5000 digits
        ("a: 2020-13-45\n", "not valid YAML"),  # a timestamp datetime refuses
        ("a: !!python/object/apply:os.system [ls]\n", "not valid YAML"),
    ],
)
def test_hostile_yaml_is_one_line(tmp_path: Path, text: str, needle: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        read_yaml_mapping(path)
    assert needle in str(err.value) and str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_aliases_within_the_bounds_still_work(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("base: &b {lr: 0.1, sizes: [1, 2]}\nmodel: *b\nother: {<<: *b, lr: 0.2}\n")
    doc = read_yaml_mapping(path)
    assert doc["model"] == {"lr": 0.1, "sizes": [1, 2]}
    assert doc["other"] == {"lr": 0.2, "sizes": [1, 2]}
    # 9 ** 4 = 6561 strings through aliases: well inside the bound
    path.write_text(laughs(levels=4))
    assert len(read_yaml_mapping(path)["l4"]) == 9


def test_expanded_size_is_counted_exactly():
    """The count equals the nodes of the expanded document (written out in the test)."""
    from scenemtl.yamlfile import BoundedSafeLoader

    # root mapping + 4 keys + l0 (1) + l1 (1 + 3) + l2 (1 + 3 * 4) + l3 (1 + 3 * 13)
    expected = 1 + 4 + 1 + 4 + 13 + 40
    loader = BoundedSafeLoader(laughs(levels=3, width=3))
    try:
        node = loader.get_single_node()
        assert loader._weight[id(node)] == (expected, 5)
    finally:
        loader.dispose()


def test_a_large_file_is_refused_before_it_is_read(tmp_path: Path):
    path = tmp_path / "c.yaml"
    with open(path, "wb") as f:
        f.truncate(MAX_YAML_BYTES + 1)  # sparse: nothing to read, only its size
    with pytest.raises(UserError, match=f"larger than {MAX_YAML_BYTES}"):
        read_yaml_mapping(path)


def test_non_string_top_level_keys_are_refused(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("1: a\nb: 2\n")
    with pytest.raises(UserError, match="top-level key 1 is not a string"):
        read_yaml_mapping(path)


def test_fit_config_bomb_is_refused_naming_the_file(tmp_path: Path, capsys):
    path = tmp_path / "bomb.yaml"
    path.write_text(
        "model:\n  weighting_options:\n"
        + "".join(f"    {line}\n" for line in laughs().splitlines())
    )
    argv = ["fit", "--config", path, "--run.root", tmp_path / "runs"]
    assert_refused(argv, capsys, [str(path), "nodes"], watch=[tmp_path])


def test_fit_option_value_bomb_is_refused(tmp_path: Path, capsys):
    value = "{" + laughs().replace("\n", ", ").rstrip(", ") + "}"
    argv = ["fit", f"--model.weighting_options={value}", "--run.root", tmp_path / "runs"]
    assert_refused(argv, capsys, ["nodes"], watch=[tmp_path])

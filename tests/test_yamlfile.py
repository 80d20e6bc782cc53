"""read_yaml_mapping: every way a user's YAML file can be wrong is one line naming it."""

from pathlib import Path

import pytest

from scenemtl.errors import UserError
from scenemtl.yamlfile import read_yaml_mapping


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

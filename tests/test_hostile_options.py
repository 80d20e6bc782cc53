"""Hostile option values for data synth, grade and predict: each run ends in success or
exit 1/2 with exactly one ``scenemtl: error:`` line and no traceback."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.hostile import run

VALUES = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(["0", "-1", "nan", "inf", "-inf", "1e400", "", " ", "0x10", "1.5", "٣"]),
    st.text(max_size=8),
)
SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _contract(result) -> None:
    assert "Traceback" not in result.err, result.err
    if result.code == 0:
        return
    assert result.code in (1, 2), (result.code, result.err)
    lines = [x for x in result.err.splitlines() if x.startswith("scenemtl: error:")]
    assert len(lines) == 1, result.err


@settings(SETTINGS, max_examples=8)  # each valid example resolves the dataset root
@given(option=st.sampled_from(["--bench", "--workers", "--seed"]), v=VALUES)
def test_data_synth_options(tmp_path, capsys, option, v):
    # --print-root: parse and validate everything, render nothing
    argv = ["data", "synth", "--root", str(tmp_path / "ds"), "--print-root", f"{option}={v}"]
    if option == "--bench":
        argv.remove("--print-root")
        if v.strip().lstrip("+").isdigit() and int(v) >= 1:
            return  # a valid count would time real rendering
    result = run(argv, capsys)
    _contract(result)
    if option in ("--bench", "--workers") and result.code == 0:
        assert int(v) >= 1


@SETTINGS
@given(option=st.sampled_from(["--max-member-mib", "--max-ratio", "--split"]), v=VALUES)
def test_grade_options(tmp_path, capsys, option, v):
    argv = ["grade", str(tmp_path / "none.zip"), "--gt", str(tmp_path), f"{option}={v}"]
    _contract(run(argv, capsys))


@SETTINGS
@given(option=st.sampled_from(["--batch-size", "--tta-scales", "--device"]), v=VALUES)
def test_predict_options(tmp_path, capsys, option, v):
    argv = ["predict", "--ckpt_path", str(tmp_path / "none.ckpt"), "--input", str(tmp_path)]
    argv += ["--output", str(tmp_path / "out"), f"{option}={v}"]
    _contract(run(argv, capsys))


@pytest.mark.parametrize("bench", ["0", "-3"])
def test_bench_zero_is_refused_not_the_whole_dataset(tmp_path, capsys, bench):
    result = run(["data", "synth", "--root", str(tmp_path / "ds"), "--bench", bench], capsys)
    assert result.code == 2 and "--bench" in result.error and ">= 1" in result.error
    assert not (tmp_path / "ds").exists()

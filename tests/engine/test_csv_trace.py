"""metrics.csv across a resume: the rows already there are kept, but not those of steps
the checkpoint had not reached (the resumed fit logs them again)."""

from __future__ import annotations

import csv

import pytest

from scenemtl.engine.loggers import AppendingCSVLogger


def _trace(rows: list[tuple[int, int, str]]) -> str:
    """A metrics.csv as Lightning writes it: sorted header, CRLF lines."""
    lines = ["epoch,step,train/loss,val/grader"]
    for epoch, step, column in rows:
        value = f"{step + 0.5}"
        lines.append(
            f"{epoch},{step},{value}," if column == "train" else f"{epoch},{step},,{value}"
        )
    return "\r\n".join(lines) + "\r\n"


@pytest.mark.parametrize("resume_step", [None, 0, 4, 6, 100])
def test_a_resumed_trace_keeps_exactly_the_rows_its_checkpoint_had_seen(tmp_path, resume_step):
    # 2 epochs of 4 steps; a run killed after logging step 6 (before its next checkpoint)
    logged = [(0, s, "train") for s in range(4)] + [(0, 3, "val")]
    logged += [(1, s, "train") for s in range(4, 7)]
    run = tmp_path / "r" / "version_0"
    run.mkdir(parents=True)
    (run / "metrics.csv").write_text(_trace(logged), newline="")
    logger = AppendingCSVLogger(tmp_path, name="r", version=0, resume_step=resume_step)
    logger.log_metrics({"train/loss": 9.0}, step=7)
    logger.save()
    with open(run / "metrics.csv", newline="") as f:
        table = list(csv.DictReader(f))
    kept = [r for r in logged if resume_step is None or r[1] < resume_step]
    assert [(int(r["epoch"]), int(r["step"])) for r in table[:-1]] == [(e, s) for e, s, _ in kept]
    assert [bool(r["val/grader"]) for r in table[:-1]] == [c == "val" for _, _, c in kept]
    assert int(table[-1]["step"]) == 7 and float(table[-1]["train/loss"]) == 9.0

"""`scenemtl study dashboard` serves the study's own storage in optuna-dashboard, checked
in a real headless browser."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import optuna
import pytest
import yaml

from scenemtl.studies.runner import RUN_ATTR, SEED_ATTR, VARIANT_ATTR, default_storage
from tests.browser import browser_page, free_port, wait_for_http, why_no_browser
from tests.helpers import REPO, default_sigint
from tests.studies.workers import scenemtl


def write_study_with_trials(tmp_path):
    """A study file and its SQLite ledger with two finished trials, as `study run`
    leaves them (variant, seed and run folder as user attributes)."""
    study = tmp_path / "study.yaml"
    config = tmp_path / "c.yaml"
    config.write_text("{}")
    study.write_text(
        yaml.safe_dump(
            {"name": "streets", "config": "c.yaml", "seeds": [0], "variants": [{"name": "a"}]}
        )
    )
    study_dir = tmp_path / "runs" / "streets"
    study_dir.mkdir(parents=True)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    ledger = optuna.create_study(
        study_name="streets", storage=default_storage(study_dir), direction="maximize"
    )
    for variant, value in (("joint_fixed", 41.5), ("joint_upgrad", 43.25)):
        trial = ledger.ask()
        trial.set_user_attr(VARIANT_ATTR, variant)
        trial.set_user_attr(SEED_ATTR, 0)
        trial.set_user_attr(RUN_ATTR, str(study_dir / variant / "seed_0" / "version_0"))
        ledger.tell(trial, value)
    return study


@pytest.mark.slow
def test_a_study_that_was_never_run_is_one_line(tmp_path):
    study = tmp_path / "study.yaml"
    (tmp_path / "c.yaml").write_text("{}")
    study.write_text(yaml.safe_dump({"name": "s", "config": "c.yaml", "variants": [{"name": "a"}]}))
    done = scenemtl("study", "dashboard", study, "--runs", tmp_path / "runs")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "has not been run" in done.stderr, done.stderr


@pytest.mark.slow
@pytest.mark.skipif(why_no_browser() is not None, reason=str(why_no_browser()))
def test_the_dashboard_shows_the_study_and_its_runs_in_a_browser(tmp_path):
    study = write_study_with_trials(tmp_path)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "scenemtl",
            "study",
            "dashboard",
            str(study),
            "--runs",
            str(tmp_path / "runs"),
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        preexec_fn=default_sigint,
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for_http(url, server)
        with browser_page() as page:
            page.goto(url)
            page.get_by_text("streets").first.wait_for(timeout=30_000)
            page.get_by_text("streets").first.click()
            page.get_by_text("43.25").first.wait_for(timeout=30_000)
            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
            # every run's trial: its value and the variant, seed and run folder
            page.goto(page.url.rstrip("/") + "/trials")
            page.get_by_text("variant joint_fixed").first.wait_for(timeout=30_000)
            page.get_by_text("Trial 1", exact=True).first.click()
            page.get_by_text("variant joint_upgrad").first.wait_for(timeout=30_000)
            page.screenshot(path=str(tmp_path / "trials.png"), full_page=True)
    finally:
        server.send_signal(signal.SIGINT)
        output = server.communicate(timeout=30)[0]
    assert server.returncode == 130, output
    assert "Traceback" not in output

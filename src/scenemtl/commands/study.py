"""``scenemtl study run|tune|report FILE``: a question as one command (see
:mod:`scenemtl.studies`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from scenemtl.argtypes import int_at_least, int_between
from scenemtl.errors import UserError
from scenemtl.studies.spec import MAX_TRIALS


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="STUDY.yaml", help="the study file (see studies/)")
    parser.add_argument("--preset", default=None, help="a preset of the study, e.g. cpu")
    parser.add_argument("--runs", default="runs", help="folder of run directories (runs)")


def _workers(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage",
        default=None,
        help="Optuna storage shared by all workers: a database URL (postgresql://..., "
        "mysql://..., sqlite:///path) or journal:PATH (default: sqlite in the study folder)",
    )
    parser.add_argument(
        "--heartbeat",
        type=int_at_least(1),
        default=30,
        metavar="S",
        help="seconds between a worker's heartbeats; a trial silent for 2*S is retried",
    )


def add_study_parser(sub: Any) -> None:
    study = sub.add_parser("study", help="run, tune and report studies").add_subparsers(
        dest="study_command", required=True, metavar="STUDY_COMMAND"
    )
    run = study.add_parser("run", help="train every (variant, seed) that has not finished")
    _common(run)
    _workers(run)
    run.set_defaults(func=cmd_study_run)

    tune = study.add_parser("tune", help="search the study's space with Optuna (TPE, pruning)")
    _common(tune)
    _workers(tune)
    tune.add_argument(
        "--trials", type=int_between(1, MAX_TRIALS), default=None, help="(search.trials)"
    )
    tune.set_defaults(func=cmd_study_tune)

    dashboard = study.add_parser(
        "dashboard", help="the study's Optuna storage in optuna-dashboard (live, in a browser)"
    )
    _common(dashboard)
    dashboard.add_argument("--storage", default=None, help="the workers' --storage, if any")
    dashboard.add_argument("--host", default="127.0.0.1", help="address to listen on")
    dashboard.add_argument("--port", type=int_between(1, 65535), default=8080, help="port (8080)")
    dashboard.set_defaults(func=cmd_study_dashboard)

    report = study.add_parser("report", help="table, Δm and figures of a study's runs")
    _common(report)
    report.add_argument("--out", default=None, help="folder for report.md (STUDY_DIR/report)")
    report.set_defaults(func=cmd_study_report)


def cmd_study_run(args: argparse.Namespace) -> int:
    from scenemtl.studies.runner import run_study
    from scenemtl.studies.spec import load_study

    spec = load_study(args.file, args.preset)
    failed = run_study(spec, args.runs, storage=args.storage, heartbeat_s=args.heartbeat)
    return 1 if failed else 0


def cmd_study_tune(args: argparse.Namespace) -> int:
    from scenemtl.studies.runner import tune_study
    from scenemtl.studies.spec import load_study

    spec = load_study(args.file, args.preset)
    failed = tune_study(
        spec, args.runs, storage=args.storage, trials=args.trials, heartbeat_s=args.heartbeat
    )
    return 1 if failed else 0


def _has_runs(args: argparse.Namespace, preset: str | None) -> bool:
    """Whether the study (as ``preset`` makes it) has a folder of runs; a preset that
    does not load here (its config missing on this machine) has none to report."""
    from scenemtl.studies.spec import load_study

    try:
        return load_study(args.file, preset).study_dir(args.runs).is_dir()
    except UserError:
        return False


def cmd_study_report(args: argparse.Namespace) -> int:
    from scenemtl.studies.report import write_report
    from scenemtl.studies.spec import load_study, presets_of

    presets: list[str | None] = [args.preset]
    if args.preset is None:
        # without --preset: every preset (or the full study) that has runs
        presets = [p for p in [None, *presets_of(args.file)] if _has_runs(args, p)] or [None]
    if args.out is not None and len(presets) > 1:
        raise UserError(f"--out: {len(presets)} presets have runs; choose one with --preset")
    for preset in presets:
        spec = load_study(args.file, preset)
        _, out_dir, table = write_report(spec, args.runs, args.out)
        print(f"## {spec.name}\n\n{table}\n")
        print(f"report: {Path(out_dir) / 'report.md'}")
    return 0


def cmd_study_dashboard(args: argparse.Namespace) -> int:
    from scenemtl.studies.dashboard import serve_dashboard, study_storage_url
    from scenemtl.studies.spec import load_study

    if args.port > 65535:
        raise UserError(f"--port {args.port}: at most 65535")
    spec = load_study(args.file, args.preset)
    serve_dashboard(study_storage_url(spec, args.runs, args.storage), args.host, args.port)
    return 0

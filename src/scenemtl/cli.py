"""The ``scenemtl`` command.

``fit``, ``validate`` and ``test`` go to LightningCLI (YAML configs, dotted
overrides), and so does ``bench`` (fit's parser); the tools (data, grade, runs,
complexity, demo) are plain argparse subcommands. A :class:`~scenemtl.errors.UserError`
anywhere becomes one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from scenemtl.argtypes import MAX_WORKERS, int_at_least, int_between, size_at_most, size_hw
from scenemtl.errors import UserError, one_line

LIGHTNING_COMMANDS = ("fit", "validate", "test")


# --------------------------------------------------------------------------------------
# data


def cmd_data_synth(args: argparse.Namespace) -> int:
    from scenemtl.data.procedural import SynthParams, bench, default_root, synthesize

    if args.profile and args.bench is None:
        raise UserError("--profile goes with --bench N")
    if args.bench is not None:
        from scenemtl.data.procedural.profile import StageTimes

        times = StageTimes()
        rate = bench(size=args.size, n=args.bench, workers=args.workers, times=times)
        print(f"procedural generator: {rate:.1f} images/s at {args.size[0]}x{args.size[1]}")
        if args.profile:
            print(times.table())
        return 0
    params = SynthParams(
        train=args.train,
        val=args.val,
        test=args.test,
        size=args.size,
        seed=args.seed,
        depth_encoding=args.depth_encoding,
        tasks=tuple(args.tasks),
    )
    root = Path(args.root) if args.root else default_root(params)
    if args.print_root:
        print(root)
        return 0
    info = synthesize(root, params, workers=args.workers)
    sizes = ", ".join(f"{k} {v['size']}" for k, v in info.splits.items())
    print(f"dataset {info.name} ({sizes}, {info.image_size[0]}x{info.image_size[1]}) at {root}")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from scenemtl.data.check import check_dataset

    problems = check_dataset(args.root, workers=args.workers)
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} problem(s) in {args.root}", file=sys.stderr)
        return 1
    print(f"{args.root}: OK")
    return 0


def cmd_data_stats(args: argparse.Namespace) -> int:
    from scenemtl.data.mtan import is_mtan_root, read_mtan_info
    from scenemtl.data.mtlpytorch import bench_layout, format_bench_stats, read_bench_info
    from scenemtl.data.stats import format_stats, write_stats

    if is_mtan_root(args.root):
        mtan = read_mtan_info(args.root)
        print(format_stats(mtan))
        print(
            f"{args.root} is in the MTAN layout: training computes these in memory, nothing written"
        )
        return 0
    if bench_layout(args.root):
        print(format_bench_stats(read_bench_info(args.root)))
        print(f"{args.root} is a release: training computes these in memory, nothing written")
        return 0
    info, plots = write_stats(args.root, plots_dir=args.plots)
    print(format_stats(info))
    print(f"statistics written to {Path(args.root) / 'dataset.json'}")
    for p in plots:
        print(f"histogram: {p}")
    return 0


def cmd_data_cityscapes(args: argparse.Namespace) -> int:
    from scenemtl.data.cityscapes import convert_cityscapes

    info = convert_cityscapes(
        args.src,
        args.out,
        size=args.size,
        depth_encoding=args.depth_encoding,
        classes=args.classes,
        depth=args.depth,
        layout=args.layout,
        workers=args.workers,
    )
    sizes = ", ".join(f"{k} {v['size']}" for k, v in info.splits.items())
    h, w = info.image_size
    print(
        f"converted Cityscapes ({sizes}; {h}x{w}, {args.classes} classes, depth in "
        f"{args.depth}, {args.layout} layout) to {args.out}"
    )
    return 0


# --------------------------------------------------------------------------------------
# demo


def cmd_demo(args: argparse.Namespace) -> int:
    """Generate (cached) + check + stats, train the demo config, test, print the table."""
    from scenemtl.commands.demo import demo_plan, estimate, minutes
    from scenemtl.commands.lightning import run_lightning_cli
    from scenemtl.data.check import check_dataset
    from scenemtl.data.procedural import cached_dataset
    from scenemtl.data.stats import format_stats, write_stats
    from scenemtl.reporting.runs import format_best, summarize_run

    config = Path(args.config)
    if not config.is_file():
        raise UserError(f"demo config {config} not found (run `make demo` from the repository)")
    plan = demo_plan(config)
    print(plan.describe(), flush=True)
    guess = estimate(plan)
    print(
        f"about {minutes(guess.total)} on this machine now (rendering {minutes(guess.render)}, "
        f"training {minutes(guess.train)}, test {minutes(guess.test)}; from a probe of the "
        "generator and of two training steps)",
        flush=True,
    )
    start = time.perf_counter()
    print(f"[1/5] procedural dataset at {plan.root} (rendered once, then cached)", flush=True)
    root = cached_dataset(plan.params)
    rendered = time.perf_counter()
    print("[2/5] integrity check", flush=True)
    problems = check_dataset(root)
    if problems:
        for p in problems[:20]:
            print(p)
        raise UserError(f"{len(problems)} problem(s) in the generated dataset at {root}")
    print("[3/5] statistics", flush=True)
    info, plots = write_stats(root)
    print(format_stats(info))
    print("histograms: " + ", ".join(str(p) for p in plots))
    print(f"[4/5] training {config}", flush=True)
    run_root = Path(args.runs)
    on_data = ["--config", str(config), "--data.root", str(root), "--run.root", str(run_root)]
    trained = time.perf_counter()
    run_lightning_cli(["fit", *on_data])
    run_dir = _newest_run(run_root / config.stem)
    best = run_dir / "checkpoints" / "best.ckpt"
    tested = time.perf_counter()
    print(f"[5/5] test split with {best}", flush=True)
    # the test logs into a run of its own (<stem>-test): the training run stays as it was
    run_lightning_cli(["test", *on_data, "--ckpt_path", str(best)])
    end = time.perf_counter()
    summary = summarize_run(run_dir)
    summary.test = summarize_run(_newest_run(run_root / f"{config.stem}-test")).test
    print()
    print(format_best(summary))
    print(f"\nrun directory: {run_dir}")
    print(f"TensorBoard:   tensorboard --logdir {run_root}")
    print(f"grade it:      scenemtl grade {run_dir / 'submission.zip'} --gt {root}")
    print(f"all runs:      scenemtl runs {run_root}")
    print(
        f"\ndemo took {minutes(end - start)} (dataset {minutes(rendered - start)}, check and "
        f"statistics {minutes(trained - rendered)}, training {minutes(tested - trained)}, test "
        f"{minutes(end - tested)}); estimated {minutes(guess.total)}"
    )
    return 0


def _newest_run(run_dir: Path) -> Path:
    versions = sorted(
        (p for p in run_dir.glob("version_*") if p.name[8:].isdigit()),
        key=lambda p: int(p.name[8:]),
    )
    if not versions:
        raise UserError(f"no run found under {run_dir}")
    return versions[-1]


# --------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit status 2), like every other error."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        self.exit(2, f"scenemtl: error: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    from scenemtl.api import MAX_PIXELS
    from scenemtl.codecs.image import MAX_IMAGE_PIXELS

    parser = _Parser(
        prog="scenemtl",
        description="Multi-task semantic segmentation + metric depth for street scenes. "
        "Training: scenemtl fit|validate|test --config CFG (see --help of each).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="dataset tools").add_subparsers(
        dest="data_command", required=True, metavar="DATA_COMMAND"
    )
    synth = data.add_parser("synth", help="render the procedural street-scene dataset")
    synth.add_argument("--root", help="output folder (default: cache under $SCENEMTL_DATA)")
    synth.add_argument("--train", type=int_at_least(0), default=2000)
    synth.add_argument("--val", type=int_at_least(0), default=250)
    synth.add_argument("--test", type=int_at_least(0), default=250)
    synth.add_argument("--size", type=size_hw, default=(128, 256), help="HxW (128x256)")
    synth.add_argument("--seed", type=int_at_least(0), default=0)
    synth.add_argument("--depth-encoding", choices=("disparity8", "meters16"), default="disparity8")
    synth.add_argument(
        "--workers", type=int_between(1, MAX_WORKERS), default=None, help="processes (all cores)"
    )
    synth.add_argument(
        "--tasks",
        nargs="+",
        choices=("semseg", "depth", "normals", "boundaries", "human_parts"),
        default=["semseg", "depth"],
        help="targets to render: semseg and depth always, normals, boundaries and parts "
        "optionally "
        "(docs/normals.md, docs/synth.md)",
    )
    synth.add_argument(
        "--bench",
        type=int_at_least(1),
        default=None,
        metavar="N",
        help="only time rendering+writing N images and print images/s",
    )
    synth.add_argument(
        "--profile",
        action="store_true",
        help="with --bench: also print the time per image of each stage (docs/synth.md)",
    )
    synth.add_argument(
        "--print-root",
        action="store_true",
        help="only print the cache folder these parameters map to (for scripts)",
    )
    synth.set_defaults(func=cmd_data_synth)

    check = data.add_parser("check", help="verify every file of a dataset (read-only)")
    check.add_argument("--root", required=True)
    check.add_argument(
        "--workers", type=int_between(1, MAX_WORKERS), default=None, help="threads (all cores)"
    )
    check.set_defaults(func=cmd_data_check)

    stats = data.add_parser("stats", help="compute statistics into dataset.json")
    stats.add_argument("--root", required=True)
    stats.add_argument("--plots", help="folder for histogram PNGs (default ROOT/stats)")
    stats.set_defaults(func=cmd_data_stats)

    cs = data.add_parser("cityscapes", help="convert a Cityscapes tree")
    cs.add_argument("--src", required=True, help="folder holding leftImg8bit/, gtFine/, ...")
    cs.add_argument("--out", required=True)
    cs.add_argument(
        "--size",
        type=size_at_most(MAX_IMAGE_PIXELS),
        default=None,
        help=f"resize to HxW (at most {MAX_IMAGE_PIXELS} pixels: what the readers take)",
    )
    cs.add_argument(
        "--depth-encoding",
        choices=("disparity8", "meters16"),
        default="meters16",
        help="depth PNG encoding of the miniscapes layout",
    )
    cs.add_argument(
        "--classes",
        type=int,
        choices=(7, 19),
        default=19,
        help="19 trainIds, or the 7 categories of cityscapesscripts' label table",
    )
    cs.add_argument(
        "--depth",
        choices=("meters", "disparity"),
        default="meters",
        help="meters (baseline*fx/disparity) or disparity in pixels, (p-1)/256 (mtan layout)",
    )
    cs.add_argument(
        "--layout",
        choices=("miniscapes", "mtan"),
        default="miniscapes",
        help="MiniScapes PNGs + dataset.json, or the MTAN release's .npy folders",
    )
    cs.add_argument(
        "--workers", type=int_between(1, MAX_WORKERS), default=None, help="threads (all cores)"
    )
    cs.set_defaults(func=cmd_data_cityscapes)

    demo = sub.add_parser("demo", help="the end-to-end demo behind `make demo`")
    demo.add_argument("--config", default="configs/demo.yaml")
    demo.add_argument("--runs", default="runs", help="folder of run directories")
    demo.set_defaults(func=cmd_demo)

    from scenemtl.commands.export import add_export_parser
    from scenemtl.commands.grader import add_grade_parser
    from scenemtl.commands.hub import add_hub_parser
    from scenemtl.commands.predict import add_predict_parser
    from scenemtl.commands.serve import add_serve_parser
    from scenemtl.commands.study import add_study_parser

    add_grade_parser(sub)
    add_predict_parser(sub)
    add_export_parser(sub)
    add_hub_parser(sub)
    add_serve_parser(sub)
    add_study_parser(sub)

    runs = sub.add_parser("runs", help="table of all runs below a folder")
    runs.add_argument("root", nargs="?", default="runs", metavar="RUNS_DIR")
    runs.add_argument("--format", choices=("md", "latex", "csv"), default="md")
    runs.add_argument("--sort", choices=("grader", "name"), default="grader")
    runs.add_argument(
        "--last-epochs",
        type=int_at_least(1),
        default=None,
        metavar="K",
        help="report each metric averaged over the last K epochs (the multi-task papers' "
        "convention) instead of at the best validation; adds Pix Acc / Abs Err / Rel Err",
    )
    runs.set_defaults(func=cmd_runs)

    # bench takes fit's command line (config files, dotted overrides): its own parser
    bench = sub.add_parser(
        "bench",
        help="training throughput: model, data, end to end, FLOP/s",
        prefix_chars="+",
        add_help=False,
    )
    bench.add_argument("options", nargs=argparse.REMAINDER)
    bench.set_defaults(func=cmd_bench)

    complexity = sub.add_parser("complexity", help="parameters, MACs and memory of a model")
    complexity.add_argument("--config", required=True)
    complexity.add_argument(
        "--size",
        type=size_at_most(MAX_PIXELS),
        default=(256, 512),
        help=f"input HxW (at most {MAX_PIXELS} pixels, as predict)",
    )
    complexity.set_defaults(func=cmd_complexity)
    return parser


def cmd_runs(args: argparse.Namespace) -> int:
    from scenemtl.commands.runs import run_table

    print(run_table(args.root, fmt=args.format, sort=args.sort, last_epochs=args.last_epochs))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from scenemtl.commands.bench import run_bench

    print(run_bench(args.options).format())
    return 0


def cmd_complexity(args: argparse.Namespace) -> int:
    from scenemtl.commands.complexity import run

    print(run(args.config, args.size))
    return 0


def _input_errors() -> tuple[type[BaseException], ...]:
    """Library exceptions that only ever mean unreadable input (a file's bytes), never a
    bug of scenemtl: the safety net behind the readers, which turn them into a
    :class:`UserError` naming the file where they read it. Generic exceptions
    (ValueError, TypeError, RuntimeError, RecursionError) are not here: they keep their
    traceback, because they are as likely to be a bug."""
    import json
    import pickle
    import zipfile

    import yaml
    from PIL import Image, UnidentifiedImageError

    return (
        json.JSONDecodeError,
        UnicodeDecodeError,
        zipfile.BadZipFile,
        pickle.UnpicklingError,
        yaml.MarkedYAMLError,  # scanner, parser, composer, constructor: not the dumper's
        UnidentifiedImageError,
        Image.DecompressionBombError,
    )


def _run_guarded(func: Callable[[], int | None]) -> int:
    try:
        return int(func() or 0)
    except UserError as e:
        print(f"scenemtl: error: {one_line(e)}", file=sys.stderr)
        return int(getattr(e, "exit_status", 1))
    except MemoryError:
        # an input or option asked for more memory than there is (the readers bound what
        # they allocate; this is what is left, e.g. a batch too large for this machine)
        print("scenemtl: error: out of memory", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # `scenemtl runs | head`: the reader left, nothing is wrong
        sys.stderr.close()
        return 0
    except OSError as e:
        # disk full, permission denied, a path that is a file: the user's environment
        where = f"{e.filename}: " if e.filename else ""
        print(f"scenemtl: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("scenemtl: interrupted", file=sys.stderr)
        return INTERRUPTED
    except Exception as e:
        if not isinstance(e, _input_errors()):
            raise
        print(
            f"scenemtl: error: unreadable input: {type(e).__name__}: {one_line(e)}", file=sys.stderr
        )
        return 1


def main(argv: Sequence[str] | None = None) -> None:
    """The ``scenemtl`` command (``argv`` None: the process's command line)."""
    command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    # Ctrl-C while the imports or the parser run is as much an interruption as later
    status = _run_guarded(lambda: _dispatch(argv))
    if command_line:
        _exit_now(status)
    raise SystemExit(status)


INTERRUPTED = 130


def _exit_now(status: int) -> NoReturn:
    """Exit without the interpreter's module teardown, whatever the status.

    Tearing down torch and Lightning's modules takes seconds on a busy machine (3.7 s
    measured after a `validate`), and late in it Python puts SIGINT back to its default
    action: a Ctrl-C then killed the process without a word (status -2), a finished
    command looked killed. The work is complete or undone by now (files written
    atomically, staging folders removed on the way up); what remains runs here, with
    Ctrl-C ending it at once with status 130: the threads' shutdown (joining non-daemon
    threads, as the interpreter does) and the atexit handlers (loggers, multiprocessing's
    children)."""
    import atexit
    import signal
    import threading

    def interrupted(signum: int, frame: object) -> None:
        if status != INTERRUPTED:
            with contextlib.suppress(OSError):
                os.write(2, b"scenemtl: interrupted\n")
        os._exit(INTERRUPTED)

    signal.signal(signal.SIGINT, interrupted)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    shutdown = getattr(threading, "_shutdown", None)  # what Py_FinalizeEx calls first
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(status)


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] in LIGHTNING_COMMANDS:
        from scenemtl.commands.lightning import run_lightning_cli
        from scenemtl.yamlfile import bound_lightning_yaml

        bound_lightning_yaml(argv)
        return int(run_lightning_cli(argv) or 0)
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)

"""``scenemtl study report``: a study's runs as a table, figures and Δm.

Each run is reported at its best validation by its monitor (the course's convention);
a variant is the mean ± sample standard deviation of that over its seeds. Only finished
runs count; the report lists the others with their status.

Δm (Maninis et al. 2019, as used by MTAN, Nash-MTL and FAMO) is the average over the
task metrics of the signed relative difference to the single-task baselines, in %::

    Δm = 100/K * Σ_k (-1)^{l_k} (M_k - B_k) / B_k      (l_k = 1 if lower is better)

with M_k the variant's metric and B_k the baseline's (the mean over its seeds). Positive
is better. Its ± is the standard deviation over the variant's seeds of the same formula
with each seed's metrics (the baselines' own spread is not folded in).
"""

from __future__ import annotations

import contextlib
import io
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scenemtl.atomic import atomic_write_bytes
from scenemtl.errors import UserError
from scenemtl.reporting.metrics import GRADER, Headline, delta_m, headline_of
from scenemtl.reporting.run_dir import RunFamily
from scenemtl.reporting.runs import RunSummary, finished_run, read_metrics, summarize_run
from scenemtl.reporting.tables import format_table
from scenemtl.studies.spec import StudySpec, Variant


@dataclass
class VariantResult:
    """One variant's runs (one per seed) and their aggregate."""

    variant: Variant
    runs: dict[int, RunSummary] = field(default_factory=dict)
    """seed -> the newest finished run (or the newest run, to show its status)."""

    @property
    def finished(self) -> list[RunSummary]:
        return [r for r in self.runs.values() if r.status == "finished" and r.best]

    def values(self, metric: str) -> list[float]:
        return [v for r in self.finished if (v := r.best.get(metric)) is not None]

    def mean(self, metric: str) -> float | None:
        values = self.values(metric)
        return statistics.fmean(values) if values else None

    def std(self, metric: str) -> float | None:
        values = self.values(metric)
        return statistics.stdev(values) if len(values) > 1 else None

    def parameters(self) -> int | None:
        for r in self.finished:
            n = r.record.get("parameters")
            if isinstance(n, int):
                return n
        return None

    def train_minutes(self) -> float | None:
        times = [
            t for r in self.finished if isinstance(t := r.record.get("train_seconds"), float | int)
        ]
        return statistics.fmean(times) / 60 if times else None


def collect(spec: StudySpec, runs_root: str | os.PathLike) -> list[VariantResult]:
    """Every variant of ``spec`` with the runs its seeds have under ``runs_root``."""
    study_dir = spec.study_dir(runs_root)
    results = []
    for variant in spec.all_variants:
        result = VariantResult(variant)
        for seed in spec.seeds:
            family = RunFamily(study_dir / variant.name, f"seed_{seed}")
            run = finished_run(family)
            versions = family.versions()
            if run is None and versions:
                run = versions[-1]
            if run is not None:
                result.runs[seed] = summarize_run(run.path)
        results.append(result)
    return results


def headlines(results: Sequence[VariantResult]) -> dict[str, Headline]:
    """Metric -> its label, unit and direction, as the runs recorded them for their tasks
    (the first run that has a task speaks for it; the grader: higher is better)."""
    found = {GRADER: headline_of({}, GRADER)}
    for r in results:
        for run in r.finished:
            for task in run.tasks:
                found.setdefault(task, run.headline(task))
    return found


def task_metrics(results: Sequence[VariantResult]) -> list[str]:
    """The headline metric of every task the compared variants learn, in order."""
    metrics: list[str] = []
    for r in results:
        for run in r.finished:
            metrics += [t for t in run.tasks if t not in metrics]
    return metrics


def delta_against(
    metrics: dict[str, float | None], baselines: dict[str, float], lower: dict[str, bool]
) -> float | None:
    """Δm (%, positive = better) over the metrics that both sides have; None if none."""
    shared = {m: not lower[m] for m, v in metrics.items() if v is not None and baselines.get(m)}
    return delta_m(metrics, baselines, shared) if shared else None


def pareto_front(points: Sequence[tuple[float, float]], maximize: tuple[bool, bool]) -> list[int]:
    """Indices of the points no other point dominates, sorted by the first coordinate."""

    def at_least(a: float, b: float, up: bool) -> bool:
        return a >= b if up else a <= b

    front = []
    for i, p in enumerate(points):
        dominated = any(
            j != i
            and at_least(q[0], p[0], maximize[0])
            and at_least(q[1], p[1], maximize[1])
            and (q[0] != p[0] or q[1] != p[1])
            for j, q in enumerate(points)
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


@dataclass
class Report:
    spec: StudySpec
    results: list[VariantResult]
    metrics: list[str]
    baselines: dict[str, float]
    delta: dict[str, tuple[float | None, float | None]]
    macs: dict[str, float | None]
    headlines: dict[str, Headline] = field(default_factory=dict)
    """Metric -> its label, unit and direction (:func:`headlines`)."""

    def headline(self, metric: str) -> Headline:
        return self.headlines.get(metric) or headline_of({}, metric)

    def higher_is_better(self, metric: str) -> bool:
        return self.headline(metric).higher_is_better

    def title(self, metric: str) -> str:
        """The metric with its label, e.g. "semseg mean IoU (%)"."""
        return self.headline(metric).title(metric)

    figures: list[Path] = field(default_factory=list)

    def rows(self) -> list[dict[str, str]]:
        rows = []
        for r in self.results:
            name = r.variant.name
            row = {"variant": name, "runs": f"{len(r.finished)}/{len(self.spec.seeds)}"}
            for m in [*self.metrics, GRADER]:
                row[self.title(m)] = _pm(r.mean(m), r.std(m))
            dm, dm_std = self.delta.get(name, (None, None))
            row["Δm (%)"] = "" if r.variant.baseline_of else _pm(dm, dm_std, signed=True)
            params = r.parameters()
            row["params (M)"] = "" if params is None else f"{params / 1e6:.2f}"
            macs = self.macs.get(name)
            row["GMACs"] = "" if macs is None else f"{macs / 1e9:.2f}"
            minutes = r.train_minutes()
            row["train min/run"] = "" if minutes is None else f"{minutes:.1f}"
            rows.append(row)
        return rows


def _pm(mean: float | None, std: float | None, signed: bool = False) -> str:
    if mean is None:
        return ""
    text = f"{mean:+.2f}" if signed else f"{mean:.2f}"
    return text if std is None else f"{text} ± {std:.2f}"


def _variant_macs(run: RunSummary) -> float | None:
    """MACs of one forward at the run's full image size (validation input)."""
    from scenemtl.engine.complexity import run_macs  # torch: only for the report's GMACs

    return run_macs(run.path)


def build_report(spec: StudySpec, runs_root: str | os.PathLike) -> Report:
    results = collect(spec, runs_root)
    compared = [r for r in results if not r.variant.baseline_of]
    metrics = task_metrics(compared)
    found = headlines(results)
    lower = {m: not found[m].higher_is_better for m in metrics}
    baselines: dict[str, float] = {}
    for r in results:
        task = r.variant.baseline_of
        if task and (value := r.mean(task)) is not None:
            baselines[task] = value
    delta: dict[str, tuple[float | None, float | None]] = {}
    # Δm over a subset of the tasks would not be the Δm the table's header promises
    complete = all(m in baselines for m in metrics)
    for r in compared if complete else ():
        means = {m: r.mean(m) for m in metrics}
        per_seed = [
            delta_against({m: run.best.get(m) for m in metrics}, baselines, lower)
            for run in r.finished
        ]
        per_seed = [d for d in per_seed if d is not None]
        spread = statistics.stdev(per_seed) if len(per_seed) > 1 else None
        delta[r.variant.name] = (delta_against(means, baselines, lower), spread)
    macs = {}
    for r in results:
        macs[r.variant.name] = _variant_macs(r.finished[0]) if r.finished else None
    return Report(spec, results, metrics, baselines, delta, macs, found)


# --------------------------------------------------------------------------------------
# figures


def _curves(result: VariantResult, metric: str) -> dict[int, list[float]]:
    """epoch -> the seeds' validation values of ``metric``."""
    by_epoch: dict[int, list[float]] = {}
    for run in result.finished:
        for row in read_metrics(run.path):
            value, epoch = row.get(f"val/{metric}"), row.get("epoch")
            if value and epoch:
                with contextlib.suppress(ValueError):
                    by_epoch.setdefault(int(float(epoch)), []).append(float(value))
    return by_epoch


def plot_curves(report: Report, out: Path) -> list[Path]:
    """One PNG per metric: each variant's mean validation curve over seeds, min-max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    paths = []
    for metric in [*report.metrics, GRADER]:
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
        drawn = 0
        for i, r in enumerate(report.results):
            curves = _curves(r, metric)
            if not curves:
                continue
            epochs = sorted(curves)
            mean = [statistics.fmean(curves[e]) for e in epochs]
            style = "--" if r.variant.baseline_of else "-"
            color = f"C{i % 10}"
            x = [e + 1 for e in epochs]
            ax.plot(x, mean, style, color=color, label=r.variant.name, marker="o", ms=3)
            ax.fill_between(
                x,
                [min(curves[e]) for e in epochs],
                [max(curves[e]) for e in epochs],
                color=color,
                alpha=0.15,
                lw=0,
            )
            drawn += 1
        if not drawn:
            plt.close(fig)
            continue
        arrow = "higher is better" if report.higher_is_better(metric) else "lower is better"
        ax.set_title(f"{report.spec.name}: validation {report.title(metric)} ({arrow})")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(report.title(metric))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        path = out / f"curves_{metric}.png"
        _save(fig, path)
        paths.append(path)
    return paths


def plot_tradeoff(report: Report, out: Path) -> Path | None:
    """The first two task metrics against each other, per variant (mean ± std over
    seeds), with the Pareto front of the compared variants."""
    if len(report.metrics) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mx, my = report.metrics[:2]
    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    points, names = [], []
    for i, r in enumerate(report.results):
        x, y = r.mean(mx), r.mean(my)
        if x is None or y is None or r.variant.baseline_of:
            continue
        ax.errorbar(
            x,
            y,
            xerr=r.std(mx) or 0,
            yerr=r.std(my) or 0,
            fmt="o",
            color=f"C{i % 10}",
            capsize=3,
            label=r.variant.name,
        )
        ax.annotate(r.variant.name, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        points.append((x, y))
        names.append(r.variant.name)
    for task, value in report.baselines.items():
        if task == mx:
            ax.axvline(value, color="gray", ls=":", lw=1)
            ax.annotate(
                f"single-task {task}",
                (value, ax.get_ylim()[0]),
                fontsize=7,
                rotation=90,
                va="bottom",
                ha="right",
                color="gray",
            )
        elif task == my:
            ax.axhline(value, color="gray", ls=":", lw=1)
            ax.annotate(
                f"single-task {task}",
                (ax.get_xlim()[0], value),
                fontsize=7,
                va="bottom",
                color="gray",
            )
    if points:
        front = pareto_front(points, (report.higher_is_better(mx), report.higher_is_better(my)))
        # the front's points joined in order of the first metric, ringed: no staircase,
        # whose attainable corner would depend on the two directions
        xs, ys = [points[i][0] for i in front], [points[i][1] for i in front]
        ax.plot(xs, ys, "k--", lw=1, alpha=0.6)
        ax.scatter(xs, ys, s=160, facecolors="none", edgecolors="k", label="Pareto front")
    ax.set_xlabel(report.title(mx) + (" →" if report.higher_is_better(mx) else " ←"))
    ax.set_ylabel(report.title(my) + (" ↑" if report.higher_is_better(my) else " ↓"))
    ax.set_title(f"{report.spec.name}: {mx} vs {my} at the best validation (mean ± std)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / f"tradeoff_{mx}_{my}.png"
    _save(fig, path)
    return path


def plot_cost(report: Report, out: Path) -> Path | None:
    """The grader (or first metric) of each variant against its MACs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = GRADER if any(r.mean(GRADER) is not None for r in report.results) else None
    metric = metric or (report.metrics[0] if report.metrics else None)
    if metric is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    drawn = 0
    for i, r in enumerate(report.results):
        macs, value = report.macs.get(r.variant.name), r.mean(metric)
        if macs is None or value is None:
            continue
        ax.errorbar(
            macs / 1e9, value, yerr=r.std(metric) or 0, fmt="o", color=f"C{i % 10}", capsize=3
        )
        ax.annotate(
            r.variant.name,
            (macs / 1e9, value),
            textcoords="offset points",
            xytext=(5, 4),
            fontsize=8,
        )
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("GMACs per image (forward, full validation image)")
    ax.set_ylabel(report.title(metric))
    ax.set_title(f"{report.spec.name}: {report.title(metric)} against cost")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / f"cost_{metric}.png"
    _save(fig, path)
    return path


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


# --------------------------------------------------------------------------------------
# the report files


def _status_lines(report: Report) -> list[str]:
    lines = []
    for r in report.results:
        for seed in report.spec.seeds:
            run = r.runs.get(seed)
            if run is None:
                lines.append(f"- {r.variant.name} seed {seed}: not run")
            elif run.status != "finished":
                why = f" ({run.record.get('error')})" if run.record.get("error") else ""
                lines.append(f"- {r.variant.name} seed {seed}: {run.status}{why} — {run.path}")
    return lines


def write_report(
    spec: StudySpec, runs_root: str | os.PathLike, out: str | os.PathLike | None = None
) -> tuple[Report, Path, str]:
    """Write report.md, results.csv, results.tex and the PNGs; returns the table (md)."""
    study_dir = spec.study_dir(runs_root)
    if not study_dir.is_dir():
        raise UserError(
            f"no runs of study {spec.name} under {runs_root} (run `scenemtl study run "
            f"{spec.path}{' --preset ' + spec.preset if spec.preset else ''}` first)"
        )
    report = build_report(spec, runs_root)
    out_dir = Path(out) if out is not None else study_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    report.figures = plot_curves(report, out_dir)
    for extra in (plot_tradeoff(report, out_dir), plot_cost(report, out_dir)):
        if extra is not None:
            report.figures.append(extra)
    rows = report.rows()
    table = format_table(rows, "md")
    atomic_write_bytes(out_dir / "results.csv", (format_table(rows, "csv") + "\n").encode())
    atomic_write_bytes(out_dir / "results.tex", (format_table(rows, "latex") + "\n").encode())
    lines = [f"# Study `{spec.name}`", ""]
    if spec.description:
        lines += [spec.description, ""]
    finished = sum(len(r.finished) for r in report.results)
    total = len(report.results) * len(spec.seeds)
    lines += [
        f"{finished} of {total} runs finished; seeds {', '.join(map(str, spec.seeds))}. "
        f"Each run at its best validation by {spec.monitor or 'its monitor'}; "
        "mean ± sample std over seeds.",
        "",
        table,
        "",
    ]
    missing = [m for m in report.metrics if m not in report.baselines]
    if report.baselines and missing:
        lines += [
            f"No Δm: no finished single-task baseline for {', '.join(missing)} "
            f"(Δm averages over every task: {', '.join(report.metrics)}).",
            "",
        ]
    elif report.baselines:
        base = ", ".join(f"{t} {v:.2f}" for t, v in report.baselines.items())
        lines += [
            f"Δm: mean signed relative difference (%) to the single-task baselines ({base}) "
            f"over {', '.join(report.metrics)}; positive is better (Maninis et al. 2019).",
            "",
        ]
    status = _status_lines(report)
    if status:
        lines += ["Runs not counted:", "", *status, ""]
    for fig in report.figures:
        lines += [f"![{fig.stem}]({fig.name})", ""]
    atomic_write_bytes(out_dir / "report.md", "\n".join(lines).encode())
    return report, out_dir, table

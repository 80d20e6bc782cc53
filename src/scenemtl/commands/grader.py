"""``scenemtl grade SUBMISSION.zip --gt ROOT``: score a submission's predictions.

A submission is untrusted input. The grader

* reads members straight from the archive into memory (nothing is extracted to disk)
  and never unpickles anything: only ``predictions/`` (and ``manifest.json``, if
  present, to check hashes) are read; the checkpoint and source are not touched;
* rejects, with one line naming the member: absolute paths, ``..`` components, links and
  other non-regular entries, encrypted members, members larger than a size cap or
  inflating more than a compression-ratio cap (counted on the bytes actually
  decompressed, not on the headers), missing, duplicate or unexpected prediction files,
  images that are not PNG or have the wrong size or mode, semseg labels outside the
  ground truth's class table and 255, depth predictions that are invalid (0) where the
  ground truth is valid, normals that are not encoded unit vectors or are invalid where
  the ground truth has a normal;
* scores with the metric classes training uses (:class:`~scenemtl.metrics.MultiTaskMetrics`).

The ground truth's ``dataset.json`` defines the tasks and the class table
(:func:`~scenemtl.tasks.dataset_task_specs`): a 7-class dataset grades 7-class
predictions. The tasks graded are those the submission has a ``predictions/<task>/``
folder for (all of its ids must be there): a semseg-only submission is scored on semseg
alone. The course's ``grader`` metric needs both ``semseg`` and ``depth``; other tasks
(``normals``) are reported alongside and do not enter it. Ground truth
label values outside the class table are refused with one line naming the GT file.

A semseg prediction of 255 ("no class") is allowed; at a labelled pixel it counts as a
miss of the ground-truth class (in that class's union, in no other class's), which
training never needs because an argmax always names a class.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import re
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from scenemtl.argtypes import positive_float
from scenemtl.commands.submission import MANIFEST_NAME, PREDICTIONS_DIR, prediction_name
from scenemtl.errors import DataFormatError, UserError

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy as np

    from scenemtl.tasks.base import Task

# torch, the tasks and the metrics are imported where they are used: `scenemtl --help`
# and the other tools build this module's parser and should not pay for loading torch.

MiB = 2**20

_PREDICTION = re.compile(r"^(0|[1-9][0-9]*)\.png$")
_DRIVE = re.compile(r"^[A-Za-z]:")
_ZIP_ENCRYPTED = 0x1


class SubmissionError(UserError):
    """A submission archive is malformed or hostile; the message names the member."""


@dataclass(frozen=True)
class GradeLimits:
    """Caps applied to every member the grader reads.

    Attributes:
        max_member_bytes: largest decompressed size of one member.
        max_ratio: largest decompressed/compressed size ratio (zip bombs).
        ratio_min_bytes: the ratio is only enforced once a member has inflated past this
            many bytes: small members cannot exhaust anything, and a tiny PNG of a
            constant image legitimately deflates well.
    """

    max_member_bytes: int = 64 * MiB
    max_ratio: float = 200.0
    ratio_min_bytes: int = 1 * MiB

    def __post_init__(self) -> None:
        if self.max_member_bytes <= 0 or not self.max_ratio >= 1 or self.ratio_min_bytes < 0:
            raise UserError(
                f"grade limits must be positive (size cap {self.max_member_bytes} bytes, "
                f"ratio cap {self.max_ratio})"
            )


# --------------------------------------------------------------------------------------
# reading the archive


def _fail(name: str, problem: str) -> SubmissionError:
    return SubmissionError(f"submission member {name!r}: {problem}")


def check_member_name(info: zipfile.ZipInfo) -> None:
    """Reject names and entry types that could escape or confuse an extraction.

    Raises:
        SubmissionError: absolute path, drive letter, ``..`` component, NUL byte,
            symlink or other non-regular entry, encrypted member.
    """
    name = info.filename
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        raise _fail(name, "absolute path")
    if ".." in re.split(r"[\\/]", name):
        raise _fail(name, "'..' path component")
    if "\x00" in name:
        raise _fail(name, "NUL byte in name")
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if stat.S_ISLNK(mode):
        raise _fail(name, "symbolic link entry")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise _fail(name, f"special file entry (mode {oct(mode)})")
    if info.flag_bits & _ZIP_ENCRYPTED:
        raise _fail(name, "encrypted member")


def read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limits: GradeLimits) -> bytes:
    """One member's bytes, decompressed in chunks under the size and ratio caps.

    The declared sizes are checked first (cheap rejection), then the bytes actually
    produced by the decompressor, because headers can lie. The compressed size used for
    the ratio is bounded by the archive's own size, so overstating it does not help.
    """
    name = info.filename
    archive_bytes = os.fstat(zf.fp.fileno()).st_size if zf.fp is not None else info.compress_size
    compressed = max(min(info.compress_size, archive_bytes), 1)

    def check(size: int, declared: bool) -> None:
        how = "declared" if declared else "decompressed"
        if size > limits.max_member_bytes:
            raise _fail(
                name, f"{how} size {size} bytes exceeds the cap of {limits.max_member_bytes} bytes"
            )
        if size > limits.ratio_min_bytes and size > limits.max_ratio * compressed:
            raise _fail(
                name,
                f"{how} compression ratio {size / compressed:.0f}:1 exceeds the cap of "
                f"{limits.max_ratio:.0f}:1",
            )

    check(info.file_size, declared=True)
    out = bytearray()
    try:
        with zf.open(info) as f:
            while chunk := f.read(256 * 1024):
                out += chunk
                check(len(out), declared=False)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError) as e:
        raise _fail(name, f"cannot be read ({e})") from None
    except NotImplementedError as e:  # e.g. an unsupported compression method
        raise _fail(name, f"cannot be read ({e})") from None
    return bytes(out)


_ZIP_STARTS = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header; an empty archive
_EOCD = b"PK\x05\x06"
_EOCD_SIZE = 22


def _what_is(head: bytes) -> str:
    """A few words on what a file that is not a zip archive is (for the error line)."""
    if head.startswith(b"\x1f\x8b"):
        return "a gzip file"
    if head.startswith((b"BZh", b"\xfd7zXZ", b"7z\xbc\xaf")):
        return "a bzip2, xz or 7z file"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "a tar archive"
    if not head:
        return "an empty file"
    return f"it starts with {head[:8]!r}"


def _open_archive(zip_path: Path) -> zipfile.ZipFile:
    """The submission as a zip archive, and only a zip archive: the file must start with
    a zip header and end with the archive's end record. ``zipfile`` alone also opens a
    zip inside a tar, or after or before other data (it searches for the end record);
    grading what happens to be embedded would score a file the user did not mean."""
    if zip_path.is_dir():
        raise SubmissionError(
            f"submission {zip_path} is a folder; grade reads the .zip file a run writes "
            "(submission.zip in its run directory)"
        )
    if not zip_path.exists():
        raise SubmissionError(f"submission {zip_path} not found")
    if not zip_path.is_file():
        raise SubmissionError(f"submission {zip_path} is not a regular file")
    with open(zip_path, "rb") as f:
        head = f.read(512)
    if not head.startswith(_ZIP_STARTS):
        raise SubmissionError(f"submission {zip_path} is not a zip archive ({_what_is(head)})")
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as e:
        raise SubmissionError(
            f"submission {zip_path} is not a readable zip archive ({e})"
        ) from None
    size = zip_path.stat().st_size
    end = size - _EOCD_SIZE - len(zf.comment)
    with open(zip_path, "rb") as f:
        f.seek(max(end, 0))
        tail = f.read(4)
    offsets = [i.header_offset for i in zf.infolist()]
    if end < 0 or tail != _EOCD or (offsets and min(offsets) != 0):
        zf.close()
        raise SubmissionError(
            f"submission {zip_path} holds a zip archive with other data before or after "
            "it (an archive inside another, or appended); grade only a plain .zip file"
        )
    return zf


def _index_predictions(
    zf: zipfile.ZipFile, tasks: Sequence[str], size: int
) -> dict[str, dict[int, zipfile.ZipInfo]]:
    """task -> id -> member for the tasks the submission predicts (those with anything
    under ``predictions/<task>/``), in the order of ``tasks``.

    Rejects unexpected, duplicate and missing prediction files, and a submission that
    predicts none of the tasks.
    """
    found: dict[str, dict[int, zipfile.ZipInfo]] = {t: {} for t in tasks}
    folders: set[str] = set()
    allowed_dirs = {f"{PREDICTIONS_DIR}/", *(f"{PREDICTIONS_DIR}/{t}/" for t in found)}
    for info in zf.infolist():
        name = info.filename
        if not name.startswith(f"{PREDICTIONS_DIR}/"):
            continue
        if info.is_dir():
            if name not in allowed_dirs:
                raise _fail(name, f"unexpected folder under {PREDICTIONS_DIR}/")
            folders.add(name.split("/")[1])
            continue
        parts = name.split("/")
        match = _PREDICTION.match(parts[2]) if len(parts) == 3 else None
        if parts[1] not in found or match is None:
            raise _fail(
                name,
                f"unexpected file; {PREDICTIONS_DIR}/ holds only {{task}}/{{id}}.png for the "
                f"tasks {', '.join(tasks)}",
            )
        index = int(match.group(1))
        if index >= size:
            raise _fail(name, f"id {index} is not in the split (ids 0..{size - 1})")
        if index in found[parts[1]]:
            raise _fail(name, "duplicate entry")
        found[parts[1]][index] = info
    present = {t: members for t, members in found.items() if members or t in folders}
    if not present:
        nested = [i.filename for i in zf.infolist() if f"/{PREDICTIONS_DIR}/" in i.filename]
        if nested:
            raise _fail(
                prediction_name(tasks[0], 0),
                f"missing: {PREDICTIONS_DIR}/ must be at the top of the archive, found "
                f"{nested[0]!r} (was the archive repacked?)",
            )
        raise _fail(
            prediction_name(tasks[0], 0),
            f"missing: the archive predicts no task ({PREDICTIONS_DIR}/<task>/ for one of "
            f"{', '.join(tasks)})",
        )
    for task, members in present.items():
        missing = [i for i in range(size) if i not in members]
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise _fail(prediction_name(task, missing[0]), f"missing{more}")
    return present


def _manifest_hashes(zf: zipfile.ZipFile, limits: GradeLimits) -> dict[str, str]:
    """member name -> sha256 from manifest.json (empty without a manifest)."""
    infos = [i for i in zf.infolist() if i.filename == MANIFEST_NAME]
    if not infos:
        return {}
    if len(infos) > 1:
        raise _fail(MANIFEST_NAME, "duplicate entry")
    try:
        manifest = json.loads(read_member(zf, infos[0], limits).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _fail(MANIFEST_NAME, f"not valid JSON ({e})") from None
    members = manifest.get("members", {}) if isinstance(manifest, dict) else None
    if not isinstance(members, dict):
        raise _fail(MANIFEST_NAME, "'members' is not an object of name -> {sha256, bytes}")
    return {
        k: v["sha256"]
        for k, v in members.items()
        if isinstance(v, dict) and isinstance(v.get("sha256"), str)
    }


def _decode_png(
    name: str, payload: bytes, modes: tuple[str, ...], size_hw: tuple[int, int]
) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(payload))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise _fail(name, f"not a decodable image ({e})") from None
    with image:
        if image.format != "PNG":
            raise _fail(name, f"is {image.format}, not PNG")
        h, w = size_hw
        # before decoding any pixel: a huge canvas in a small file must not be inflated
        if image.size != (w, h):
            raise _fail(name, f"size {image.size[0]}x{image.size[1]}, expected {w}x{h} (WxH)")
        if image.mode not in modes:
            raise _fail(name, f"mode {image.mode}, expected one of {', '.join(modes)}")
        try:
            image.load()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise _fail(name, f"not a decodable image ({e})") from None
        return image.copy()


# --------------------------------------------------------------------------------------
# grading


@dataclass
class Grade:
    """The outcome of :func:`grade_submission`."""

    tasks: list[Task]
    """The tasks graded (those the submission predicts), in the dataset's order."""
    metrics: dict[str, float]
    """As training names them (``semseg``, ``semseg_iou/<class>``, ``depth``,
    ``depth_mae``, ..., ``grader``): floats, NaN where undefined."""


def grade_submission(
    zip_path: str | os.PathLike,
    gt_root: str | os.PathLike,
    split: str = "test",
    limits: GradeLimits | None = None,
) -> Grade:
    """Score a submission's predictions against a dataset split's ground truth.

    Args:
        zip_path: the submission archive.
        gt_root: dataset root; its ``dataset.json`` defines the tasks and the class table
            and its ``split`` holds their ground truth.
        split: the split the predictions are of.
        limits: size and ratio caps (default :class:`GradeLimits`).

    Returns:
        the tasks graded (those with a ``predictions/<task>/`` folder) and their metrics,
        plus ``grader`` when both ``semseg`` and ``depth`` are graded.

    Raises:
        SubmissionError: anything wrong with the archive (message names the member).
        UserError: a missing or malformed ground truth (message names the file).
    """
    import torch

    from scenemtl.data.format import label_path, read_info
    from scenemtl.tasks import build_tasks, dataset_task_specs

    limits = limits or GradeLimits()
    zip_path, gt_root = Path(zip_path), Path(gt_root)
    info = read_info(gt_root)
    size = info.split_size(split)
    if not info.has_gt(split):
        raise UserError(f"{gt_root}: split {split!r} has no ground truth to grade against")
    if size == 0:
        raise UserError(f"{gt_root}: split {split!r} is empty; nothing to grade")
    available = {t.name: t for t in build_tasks(dataset_task_specs(info))}
    with _open_archive(zip_path) as zf:
        for member in zf.infolist():
            check_member_name(member)
        found = _index_predictions(zf, list(available), size)
        tasks = [available[name] for name in found]
        metrics = _submission_metrics(tasks)
        hashes = _manifest_hashes(zf, limits)
        for index in range(size):
            paths = {t.name: label_path(gt_root, split, t.name, index) for t in tasks}
            # a declared-partial task without this sample's file: no label, not scored
            labelled = [
                t for t in tasks if t.name not in info.partial_tasks or paths[t.name].exists()
            ]
            targets = {t.name: t.read_target(paths[t.name]) for t in labelled}
            preds: dict[str, np.ndarray] = {}
            for task in labelled:
                member = found[task.name][index]
                payload = read_member(zf, member, limits)
                expected = hashes.get(member.filename)
                if expected is not None and hashlib.sha256(payload).hexdigest() != expected:
                    raise _fail(member.filename, f"sha256 differs from {MANIFEST_NAME}")
                preds[task.name] = _read_prediction(
                    task, member.filename, payload, targets[task.name]
                )
            for name, pred in preds.items():
                metrics.tasks[name].update(
                    torch.from_numpy(pred)[None], torch.from_numpy(targets[name])[None]
                )
    return Grade(tasks=tasks, metrics={k: float(v) for k, v in metrics.compute().items()})


def grade(
    zip_path: str | os.PathLike,
    gt_root: str | os.PathLike,
    split: str = "test",
    limits: GradeLimits | None = None,
) -> dict[str, float]:
    """The metrics of :func:`grade_submission` (same arguments and errors)."""
    return grade_submission(zip_path, gt_root, split=split, limits=limits).metrics


def _submission_metrics(tasks: Sequence[Task]) -> Any:
    """The training's metrics of ``tasks``, each task's as it grades a submission
    (:meth:`~scenemtl.tasks.base.Task.make_grader_metric`: segmentation takes 255)."""
    from scenemtl.metrics import MultiTaskMetrics

    metrics = MultiTaskMetrics(tasks)
    for task in tasks:
        metrics.tasks[task.name] = task.make_grader_metric()
    return metrics


# --------------------------------------------------------------------------------------
# reading predictions: what the grader accepts from untrusted files, per kind of task


def _read_prediction(task: Task, name: str, payload: bytes, target: np.ndarray) -> np.ndarray:
    """A submitted prediction of ``task`` as [H,W] (or [C,H,W]) values, or one line naming
    the member."""
    image = _decode_png(name, payload, task.prediction_modes, target.shape[-2:])
    try:
        return task.read_prediction(image, target)
    except DataFormatError as e:
        raise _fail(name, str(e)) from None


# --------------------------------------------------------------------------------------
# command line


def format_report(metrics: dict[str, float], tasks: Sequence[Task]) -> str:
    """Each graded task's headline metric, then the course grader when defined; one per
    line."""
    from scenemtl.metrics import GRADER

    rows = [
        (
            t.name,
            metrics[t.name],
            t.headline_label or ("higher is better" if t.higher_is_better else "lower is better"),
        )
        for t in tasks
    ]
    if GRADER in metrics:
        rows.append((GRADER, metrics[GRADER], ""))
    width = max(len(name) for name, _, _ in rows) + 2
    return "\n".join(f"{name:<{width}}{value:7.2f}   {what}".rstrip() for name, value, what in rows)


def _json_safe(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no NaN


def cmd_grade(args: argparse.Namespace) -> int:
    """``scenemtl grade``: print the scores (``--json``: every metric, NaN as null)."""
    limits = GradeLimits(
        max_member_bytes=int(args.max_member_mib * MiB), max_ratio=float(args.max_ratio)
    )
    result = grade_submission(args.submission, args.gt, split=args.split, limits=limits)
    if args.json:
        print(json.dumps({k: _json_safe(v) for k, v in result.metrics.items()}, indent=2))
    else:
        print(format_report(result.metrics, result.tasks))
    return 0


def add_grade_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``grade`` to an argparse subparsers object (from ``add_subparsers()``)."""
    parser = subparsers.add_parser(
        "grade",
        help="score a submission.zip against a dataset's ground truth",
        description="Score the predictions/ of a submission.zip against the ground truth "
        "of a dataset split. The archive is treated as untrusted: it is read in memory, "
        "nothing is unpickled or extracted.",
    )
    parser.add_argument("submission", metavar="SUBMISSION.zip")
    parser.add_argument("--gt", required=True, metavar="ROOT", help="dataset root with GT")
    parser.add_argument("--split", default="test", help="split of ROOT (default: test)")
    parser.add_argument("--json", action="store_true", help="all metrics as JSON")
    parser.add_argument(
        "--max-member-mib",
        type=positive_float,
        default=GradeLimits.max_member_bytes / MiB,
        help="largest decompressed member, MiB (default 64)",
    )
    parser.add_argument(
        "--max-ratio",
        type=positive_float,
        default=GradeLimits.max_ratio,
        help="largest compression ratio of a member (default 200)",
    )
    parser.set_defaults(func=cmd_grade)
    return parser

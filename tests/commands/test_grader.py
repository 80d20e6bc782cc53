"""The grader: scores, and one rejection per kind of hostile or broken archive."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import pickle
import shutil
import stat
import struct
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scenemtl.commands.grader import (
    GradeLimits,
    SubmissionError,
    add_grade_parser,
    grade,
    grade_submission,
)
from scenemtl.data.format import (
    IGNORE_INDEX,
    METERS16,
    decode_depth,
    encode_depth,
    label_path,
    read_depth,
    read_info,
    read_semseg,
    write_info,
)
from scenemtl.errors import DataFormatError, UserError
from scenemtl.metrics import MultiTaskMetrics
from scenemtl.tasks import build_tasks, legacy_task_specs
from tests.helpers import write_random_dataset
from tests.hostile import assert_refused

SIZE_HW = (12, 20)
N = 3


@pytest.fixture(scope="module")
def gt_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("grader") / "gt"
    write_random_dataset(root, sizes={"test": N}, image_size=SIZE_HW, seed=3)
    # leave the last two classes out of the ground truth: their IoU is undefined (NaN)
    for i in range(N):
        path = label_path(root, "test", "semseg", i)
        labels = np.asarray(Image.open(path))
        Image.fromarray(np.where(labels == IGNORE_INDEX, labels, labels % 17)).save(path)
    return root


def gt_members(
    root: Path, split: str = "test", tasks: tuple[str, ...] = ("semseg", "depth")
) -> list[tuple[str, bytes]]:
    """The ground truth's own PNG files, named as predictions."""
    out = []
    for i in range(N):
        for task in tasks:
            out.append(
                (f"predictions/{task}/{i}.png", label_path(root, split, task, i).read_bytes())
            )
    return out


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def pack(path: Path, members, compression=zipfile.ZIP_DEFLATED) -> Path:
    """Write members (name or ZipInfo, bytes) as given, duplicates included."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about duplicate names
        with zipfile.ZipFile(path, "w", compression=compression) as zf:
            for name, payload in members:
                zf.writestr(name, payload)
    return path


def replace(members, name, payload):
    return [(n, payload if n == name else p) for n, p in members]


def patch_header(
    data: bytes, name: str, flag_bits: int | None = None, file_size: int | None = None
):
    """Rewrite fields of a member's local and central headers (zipfile cannot write lies)."""
    raw = bytearray(data)
    target = name.encode()
    for sig, name_len_at, name_at, flags_at, size_at in (
        (b"PK\x03\x04", 26, 30, 6, 22),  # local file header
        (b"PK\x01\x02", 28, 46, 8, 24),  # central directory header
    ):
        start = 0
        while (idx := raw.find(sig, start)) >= 0:
            (n,) = struct.unpack_from("<H", raw, idx + name_len_at)
            if bytes(raw[idx + name_at : idx + name_at + n]) == target:
                if flag_bits is not None:
                    (old,) = struct.unpack_from("<H", raw, idx + flags_at)
                    struct.pack_into("<H", raw, idx + flags_at, old | flag_bits)
                if file_size is not None:
                    struct.pack_into("<I", raw, idx + size_at, file_size)
            start = idx + 4
    return bytes(raw)


def load_gt(root: Path, i: int):
    return (
        read_semseg(label_path(root, "test", "semseg", i)),
        read_depth(label_path(root, "test", "depth", i)),
    )


# --------------------------------------------------------------------------------------
# scores


def test_ground_truth_as_submission_scores_perfectly(tmp_path, gt_root):
    m = grade(pack(tmp_path / "s.zip", gt_members(gt_root)), gt_root)
    assert m["semseg"] == 100.0
    assert m["depth"] == 0.0
    assert m["grader"] == 100.0
    ious = [v for k, v in m.items() if k.startswith("semseg_iou/")]
    assert ious[:17] == [100.0] * 17 and all(math.isnan(v) for v in ious[17:])
    assert m["depth_delta1"] == 100.0 and m["depth_mae"] == 0.0


def test_reencoded_ground_truth_is_perfect_up_to_quantization(tmp_path, gt_root):
    # GT in 8-bit disparity, limited to codes >= 2 (<= 232 m) so that 16-bit meters
    # (<= 256 m) hold every depth; re-encoded as meters x 256, each pixel is off by at
    # most 1/512 m, i.e. |log error| <= 1/2048 at the 4 m minimum: SI-logRMSE < 0.05
    root = tmp_path / "gt"
    shutil.copytree(gt_root, root)
    for i in range(N):
        path = label_path(root, "test", "depth", i)
        code = np.asarray(Image.open(path))
        Image.fromarray(np.where(code > 0, np.maximum(code, 2), 0).astype(np.uint8)).save(path)
    members = []
    for name, payload in gt_members(root):
        if "/depth/" in name:
            depth = decode_depth(Image.open(io.BytesIO(payload)))
            assert depth.max() < 256
            payload = png(np.asarray(encode_depth(depth, METERS16)))
        members.append((name, payload))
    m = grade(pack(tmp_path / "s.zip", members), root)
    assert m["semseg"] == 100.0
    assert 0.0 < m["depth"] < 0.05
    assert m["grader"] == pytest.approx(100.0, abs=0.05)


def test_scores_equal_the_training_metrics(tmp_path, gt_root):
    rng = np.random.default_rng(0)
    members, reference = [], MultiTaskMetrics(build_tasks(legacy_task_specs()))
    for i in range(N):
        gt_sem, gt_depth = load_gt(gt_root, i)
        sem = rng.integers(0, 19, SIZE_HW).astype(np.uint8)
        sem[:4] = gt_sem[:4]  # some agreement, so IoUs are not all 0
        depth = np.exp(rng.uniform(np.log(5.0), np.log(80.0), SIZE_HW))
        depth_png = np.asarray(encode_depth(depth, METERS16))
        members += [
            (f"predictions/semseg/{i}.png", png(sem)),
            (f"predictions/depth/{i}.png", png(depth_png)),
        ]
        reference.update(
            {"semseg": torch.from_numpy(sem.astype(np.int64))[None],
             "depth": torch.from_numpy(decode_depth(Image.fromarray(depth_png)))[None]},
            {"semseg": torch.from_numpy(gt_sem.astype(np.int64))[None],
             "depth": torch.from_numpy(gt_depth)[None]},
        )  # fmt: skip
    got = grade(pack(tmp_path / "s.zip", members), gt_root)
    want = {k: float(v) for k, v in reference.compute().items()}
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-12, nan_ok=True), key
    assert 0 < got["semseg"] < 100 and got["depth"] > 1


def test_semseg_255_is_a_miss_of_the_ground_truth_class(tmp_path, gt_root):
    gt_sem, _ = load_gt(gt_root, 0)
    cls = int(np.bincount(gt_sem[gt_sem != IGNORE_INDEX]).argmax())
    pred = gt_sem.copy()
    where = np.argwhere(gt_sem == cls)[:3]
    pred[tuple(where.T)] = IGNORE_INDEX
    members = replace(gt_members(gt_root), "predictions/semseg/0.png", png(pred))
    m = grade(pack(tmp_path / "s.zip", members), gt_root)
    total = sum(int((load_gt(gt_root, i)[0] == cls).sum()) for i in range(N))
    name = [k for k in m if k.startswith("semseg_iou/")][cls]
    assert m[name] == pytest.approx(100.0 * (total - 3) / total)
    # no other class pays for the abstention
    assert all(
        v == 100.0 or math.isnan(v)
        for k, v in m.items()
        if k.startswith("semseg_iou/") and k != name
    )


def test_manifest_is_optional_but_its_hashes_are_checked(tmp_path, gt_root):
    members = gt_members(gt_root)
    hashes = {n: {"sha256": hashlib.sha256(p).hexdigest(), "bytes": len(p)} for n, p in members}
    good = [*members, ("manifest.json", json.dumps({"members": hashes}).encode())]
    assert grade(pack(tmp_path / "good.zip", good), gt_root)["semseg"] == 100.0
    hashes["predictions/depth/1.png"]["sha256"] = "0" * 64
    bad = [*members, ("manifest.json", json.dumps({"members": hashes}).encode())]
    with pytest.raises(SubmissionError, match=r"predictions/depth/1\.png.*sha256 differs"):
        grade(pack(tmp_path / "bad.zip", bad), gt_root)


class _Trap:
    """Unpickling this creates a file: proof that something was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_nothing_is_unpickled_or_extracted(tmp_path, gt_root):
    marker = tmp_path / "unpickled"
    trap = pickle.dumps(_Trap(marker))
    members = [*gt_members(gt_root), ("best.ckpt", trap), ("source.zip", b"not even a zip")]
    zip_path = pack(tmp_path / "s.zip", members)
    before = sorted(tmp_path.rglob("*"))
    assert grade(zip_path, gt_root)["grader"] == 100.0
    assert not marker.exists()
    assert sorted(tmp_path.rglob("*")) == before


# --------------------------------------------------------------------------------------
# rejections: each one line naming the member


def _symlink(name):
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def _fifo(name):
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFIFO | 0o644) << 16
    return info


def _semseg(value=0, size=SIZE_HW, mode="L"):
    arr = np.full(size, value, np.uint8)
    return png(np.stack([arr] * 3, -1)) if mode == "RGB" else png(arr)


def _jpeg():
    buffer = io.BytesIO()
    Image.fromarray(np.zeros(SIZE_HW, np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


S0, D0 = "predictions/semseg/0.png", "predictions/depth/0.png"

# (case id, edit of the member list, member named in the error, phrase in the error)
HOSTILE = [
    ("absolute path", lambda m: [*m, ("/etc/cron.d/x", b"x")], "/etc/cron.d/x", "absolute path"),
    ("drive letter", lambda m: [*m, ("C:/evil.png", b"x")], "C:/evil.png", "absolute path"),
    ("dot-dot", lambda m: [*m, ("predictions/../../evil", b"x")], "predictions/../../evil", "'..'"),
    ("backslash dot-dot", lambda m: [*m, ("a\\..\\..\\b", b"x")], "a\\\\..\\\\..\\\\b", "'..'"),
    ("symlink", lambda m: [*m, (_symlink("link"), b"/etc/passwd")], "link", "symbolic link"),
    ("fifo", lambda m: [*m, (_fifo("pipe"), b"")], "pipe", "special file"),
    ("missing id", lambda m: [x for x in m if x[0] != D0], D0, "missing"),
    ("duplicate id", lambda m: [*m, (S0, _semseg())], S0, "duplicate"),
    ("id beyond split", lambda m: [*m, (f"predictions/depth/{N}.png", b"x")],
     f"predictions/depth/{N}.png", "not in the split"),
    ("leading zero", lambda m: [*m, ("predictions/semseg/01.png", b"x")],
     "predictions/semseg/01.png", "unexpected file"),
    ("extra file", lambda m: [*m, ("predictions/notes.txt", b"x")], "predictions/notes.txt",
     "unexpected file"),
    ("unknown task", lambda m: [*m, ("predictions/normals/0.png", b"x")],
     "predictions/normals/0.png", "unexpected file"),
    ("extra folder", lambda m: [*m, ("predictions/semseg/old/", b"")], "predictions/semseg/old/",
     "unexpected folder"),
    ("nested in a folder", lambda m: [("sub/" + n, p) for n, p in m], S0, "top of the archive"),
    ("wrong size", lambda m: replace(m, S0, _semseg(size=(SIZE_HW[0] + 1, SIZE_HW[1]))), S0,
     "size 20x13, expected 20x12"),
    ("semseg RGB", lambda m: replace(m, S0, _semseg(mode="RGB")), S0, "mode RGB"),
    ("depth RGB", lambda m: replace(m, D0, _semseg(mode="RGB")), D0, "mode RGB"),
    ("semseg 16-bit", lambda m: replace(m, S0, png(np.zeros(SIZE_HW, np.uint16))), S0, "mode I"),
    ("label 19", lambda m: replace(m, S0, _semseg(19)), S0, "label values [19]"),
    ("label 254", lambda m: replace(m, S0, _semseg(254)), S0, "label values [254]"),
    ("jpeg", lambda m: replace(m, S0, _jpeg()), S0, "not PNG"),
    ("garbage", lambda m: replace(m, D0, b"\x89PNG garbage"), D0, "not a decodable image"),
    ("truncated png", lambda m: replace(m, D0, dict(m)[D0][:60]), D0, "not a decodable image"),
    ("depth holes", lambda m: replace(m, D0, png(np.zeros(SIZE_HW, np.uint8))), D0,
     "depth 0 (invalid)"),
    ("bad manifest", lambda m: [*m, ("manifest.json", b"{not json")], "manifest.json",
     "not valid JSON"),
]  # fmt: skip


@pytest.mark.parametrize(
    "edit, member, phrase", [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE]
)
def test_hostile_archive_is_rejected_naming_the_member(
    tmp_path, gt_root, capsys, edit, member, phrase
):
    zip_path = pack(tmp_path / "s.zip", edit(gt_members(gt_root)))
    # through the command: one line, exit 1, no traceback, nothing extracted or changed
    argv = ["grade", zip_path, "--gt", gt_root]
    line = assert_refused(argv, capsys, [phrase], watch=[tmp_path, gt_root])
    assert f"{member!r}" in line or member in line, line


def test_encrypted_member_is_rejected(tmp_path, gt_root):
    raw = pack(tmp_path / "plain.zip", gt_members(gt_root)).read_bytes()
    path = tmp_path / "enc.zip"
    path.write_bytes(patch_header(raw, D0, flag_bits=0x1))
    with pytest.raises(SubmissionError, match=rf"'{D0}': encrypted member"):
        grade(path, gt_root)


def test_member_over_the_size_cap_is_rejected(tmp_path, gt_root):
    members = gt_members(gt_root)
    biggest = max(len(p) for _, p in members)
    zip_path = pack(tmp_path / "s.zip", members, compression=zipfile.ZIP_STORED)
    limits = GradeLimits(max_member_bytes=biggest - 1)
    with pytest.raises(SubmissionError, match=r"declared size \d+ bytes exceeds the cap"):
        grade(zip_path, gt_root, limits=limits)
    assert grade(zip_path, gt_root, limits=GradeLimits(max_member_bytes=biggest))["semseg"] == 100


def test_zip_bomb_is_rejected_by_compression_ratio(tmp_path, gt_root):
    bomb = b"\0" * (3 * 2**20)  # deflates about 1000:1
    zip_path = pack(tmp_path / "s.zip", replace(gt_members(gt_root), S0, bomb))
    with pytest.raises(SubmissionError, match=rf"'{S0}': declared compression ratio \d+:1"):
        grade(zip_path, gt_root)


def test_understated_size_header_is_not_trusted(tmp_path, gt_root):
    # the header claims 100 bytes; the stream inflates to 3 MiB: reading must stop at the
    # claim and fail the integrity check, never hand 3 MiB (or 100 wrong bytes) onwards
    raw = pack(tmp_path / "plain.zip", replace(gt_members(gt_root), S0, b"\0" * (3 * 2**20)))
    path = tmp_path / "lying.zip"
    path.write_bytes(patch_header(raw.read_bytes(), S0, file_size=100))
    with pytest.raises(SubmissionError, match=rf"'{S0}': cannot be read"):
        grade(path, gt_root)


@pytest.mark.parametrize(
    "content, what",
    [
        (b"", "not a zip archive (an empty file)"),
        (b"PK\x03\x04 not really", "not a readable zip archive"),
        (b"hello world\n", "not a zip archive (it starts with b'hello wo')"),
    ],
)
def test_non_zip_input_is_rejected(tmp_path, gt_root, capsys, content, what):
    path = tmp_path / "s.zip"
    path.write_bytes(content)
    argv = ["grade", path, "--gt", gt_root]
    culprits = [str(path), what]
    assert_refused(argv, capsys, culprits, watch=[tmp_path, gt_root])


def test_ground_truth_that_is_not_a_dataset_is_one_line(tmp_path, gt_root, capsys):
    zip_path = pack(tmp_path / "s.zip", gt_members(gt_root))
    for bad in (tmp_path / "nope", zip_path):  # missing, and a file
        assert_refused(["grade", zip_path, "--gt", bad], capsys, str(bad), watch=[tmp_path])
    broken = tmp_path / "broken"
    shutil.copytree(gt_root, broken)
    (broken / "dataset.json").write_text("[1, 2]")
    culprit = str(broken / "dataset.json")
    assert_refused(["grade", zip_path, "--gt", broken], capsys, culprit, watch=[tmp_path])


def test_missing_submission_and_split_without_gt(tmp_path, gt_root):
    with pytest.raises(SubmissionError, match="not found"):
        grade(tmp_path / "nope.zip", gt_root)
    no_gt = tmp_path / "nogt"
    write_random_dataset(no_gt, sizes={"test": 1}, image_size=SIZE_HW, test_gt=False)
    with pytest.raises(UserError, match="has no ground truth"):
        grade(pack(tmp_path / "s.zip", gt_members(gt_root)), no_gt)


# --------------------------------------------------------------------------------------
# the dataset defines the tasks; the submission picks which of them it is graded on


def with_classes(root: Path, n: int, wrap_labels: bool = True) -> Path:
    """Give a dataset root an n-class table (labels wrapped into 0..n-1 unless told)."""
    info = read_info(root)
    info.classes = [{"name": f"c{k}", "color": [k, 2 * k, 3 * k]} for k in range(n)]
    write_info(root, info)
    if wrap_labels:
        for i in range(info.split_size("test")):
            path = label_path(root, "test", "semseg", i)
            labels = np.asarray(Image.open(path))
            Image.fromarray(np.where(labels == IGNORE_INDEX, labels, labels % n)).save(path)
    return root


def test_seven_class_ground_truth_grades_a_seven_class_submission(tmp_path, gt_root):
    root = tmp_path / "gt7"
    shutil.copytree(gt_root, root)
    with_classes(root, 7)
    members = gt_members(root)
    m = grade(pack(tmp_path / "s.zip", members), root)
    assert m["semseg"] == 100.0 and m["grader"] == 100.0
    assert [k for k in m if k.startswith("semseg_iou/")] == [f"semseg_iou/c{k}" for k in range(7)]
    # a label that is a class for Cityscapes but not for this table is refused
    pred = read_semseg(label_path(root, "test", "semseg", 1)).copy()
    pred[0, 0] = 7
    with pytest.raises(SubmissionError) as exc:
        grade(
            pack(tmp_path / "bad.zip", replace(members, "predictions/semseg/1.png", png(pred))),
            root,
        )
    message = str(exc.value)
    assert "predictions/semseg/1.png" in message and "label values [7]" in message
    assert "7-class table" in message and "\n" not in message


def test_ground_truth_labels_outside_the_table_name_the_file(tmp_path, gt_root, capsys):
    root = tmp_path / "gt7"
    shutil.copytree(gt_root, root)
    with_classes(root, 7, wrap_labels=False)  # labels up to 16 stay: the GT is broken
    zip_path = pack(tmp_path / "s.zip", gt_members(gt_root))
    with pytest.raises(DataFormatError) as exc:
        grade(zip_path, root)
    message = str(exc.value)
    assert str(label_path(root, "test", "semseg", 0)) in message
    assert "outside the 7-class table" in message and "\n" not in message
    # through the command line: one line, exit status 1, no traceback
    from scenemtl.cli import _run_guarded

    args = parse(["grade", str(zip_path), "--gt", str(root)])
    assert _run_guarded(lambda: args.func(args)) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "semseg/0.png" in err


@pytest.mark.parametrize("task", ["semseg", "depth"])
def test_single_task_submission_is_graded_on_that_task(tmp_path, gt_root, task):
    result = grade_submission(pack(tmp_path / "s.zip", gt_members(gt_root, tasks=(task,))), gt_root)
    assert [t.name for t in result.tasks] == [task]
    m = result.metrics
    assert m[task] == (100.0 if task == "semseg" else 0.0)
    assert "grader" not in m
    other = "depth" if task == "semseg" else "semseg"
    assert not [k for k in m if k.startswith(other)]


def test_submission_without_any_task_or_with_an_empty_task_folder(tmp_path, gt_root):
    with pytest.raises(SubmissionError, match=r"'predictions/semseg/0\.png': missing: the archive"):
        grade(pack(tmp_path / "none.zip", [("best.ckpt", b"x")]), gt_root)
    # a task folder without its files is a task predicted and missing, not a task skipped
    members = [*gt_members(gt_root, tasks=("semseg",)), ("predictions/depth/", b"")]
    with pytest.raises(SubmissionError, match=rf"'predictions/depth/0\.png': missing and {N - 1}"):
        grade(pack(tmp_path / "empty.zip", members), gt_root)


# --------------------------------------------------------------------------------------
# command line


def parse(argv):
    parser = argparse.ArgumentParser(prog="scenemtl")
    add_grade_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_prints_three_metrics_or_json(tmp_path, gt_root, capsys):
    zip_path = str(pack(tmp_path / "s.zip", gt_members(gt_root)))
    args = parse(["grade", zip_path, "--gt", str(gt_root)])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["semseg", "100.00"],
        ["depth", "0.00"],
        ["grader", "100.00"],
    ]
    args = parse(["grade", zip_path, "--gt", str(gt_root), "--json"])
    assert args.func(args) == 0
    data = json.loads(capsys.readouterr().out)  # strict JSON: NaN must have become null
    assert data["grader"] == 100.0 and data["depth_rmse"] == 0.0
    per_class = {k: v for k, v in data.items() if k.startswith("semseg_iou/")}
    assert len(per_class) == 19 and None in per_class.values()
    assert set(per_class.values()) <= {100.0, None}


def test_cli_limits_reach_the_grader(tmp_path, gt_root):
    zip_path = str(pack(tmp_path / "s.zip", gt_members(gt_root), compression=zipfile.ZIP_STORED))
    args = parse(["grade", zip_path, "--gt", str(gt_root), "--max-member-mib", "0.0001"])
    with pytest.raises(SubmissionError, match="exceeds the cap of 104 bytes"):
        args.func(args)
    with pytest.raises(SystemExit):
        parse(["grade", zip_path, "--gt", str(gt_root), "--max-ratio", "-3"])


def test_cli_lists_the_headline_of_each_graded_task(tmp_path, gt_root, capsys):
    zip_path = str(pack(tmp_path / "s.zip", gt_members(gt_root, tasks=("semseg",))))
    args = parse(["grade", zip_path, "--gt", str(gt_root)])
    assert args.func(args) == 0
    assert capsys.readouterr().out.splitlines() == ["semseg   100.00   mean IoU (%)"]
    zip_path = str(pack(tmp_path / "d.zip", gt_members(gt_root, tasks=("depth",))))
    args = parse(["grade", zip_path, "--gt", str(gt_root), "--json"])
    assert args.func(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["depth"] == 0.0 and "grader" not in data and "semseg" not in data


# --------------------------------------------------------------------------------------
# grade reads a zip file and only that: it says what it got instead


def _tar_of(path: Path, member: Path) -> Path:
    import tarfile

    with tarfile.open(path, "w") as tf:
        tf.add(member, arcname=member.name)
    return path


def _gzip_of(path: Path, member: Path) -> Path:
    import gzip

    path.write_bytes(gzip.compress(member.read_bytes()))
    return path


@pytest.mark.parametrize(
    "wrap, what",
    [
        (lambda d, z: z.parent, "is a folder"),
        (lambda d, z: _tar_of(d / "s.tar", z), "not a zip archive (a tar archive)"),
        (lambda d, z: _gzip_of(d / "s.zip.gz", z), "not a zip archive (a gzip file)"),
        # zipfile opens both of these: it searches for the end record
        (
            lambda d, z: (d / "a.zip").write_bytes(z.read_bytes() + b"\0" * 1024) and d / "a.zip",
            "other data before or after it",
        ),
        (
            lambda d, z: (d / "b.zip").write_bytes(z.read_bytes() + z.read_bytes()) and d / "b.zip",
            "other data before or after it",
        ),
    ],
    ids=["folder", "tar", "gzip", "trailing-data", "zip-after-zip"],
)
def test_grade_names_what_it_got_when_not_a_plain_zip(tmp_path, gt_root, capsys, wrap, what):
    inner = tmp_path / "in" / "submission.zip"
    inner.parent.mkdir()
    pack(inner, gt_members(gt_root))
    assert grade(inner, gt_root)["semseg"] == pytest.approx(100.0)  # the plain zip grades
    out = tmp_path / "out"
    out.mkdir()
    target = wrap(out, inner)
    assert zipfile.is_zipfile(target) or not target.is_file() or what.startswith("not a zip")
    assert_refused(["grade", target, "--gt", gt_root], capsys, [str(target), what], [tmp_path])

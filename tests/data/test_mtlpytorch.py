"""NYUD-v2 and PASCAL-Context in Multi-Task-Learning-PyTorch's layout, read in place, on
tiny trees written here in the published formats (tests/data/mtl_trees.py)."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from scipy import ndimage

from scenemtl.data.check import check_dataset
from scenemtl.data.datamodule import SceneDataModule, open_info
from scenemtl.data.edgemaps import label_boundaries, laplacian_nonzero
from scenemtl.data.mtlfiles import read_mat
from scenemtl.data.mtlpytorch import BenchDataset, BenchInfo, bench_layout, read_bench_info
from scenemtl.data.pascal import NORMALS_VALID_LABELS, PART_GROUPS, PASCAL_CANVAS
from scenemtl.errors import DataFormatError, UserError
from scenemtl.tasks import build_tasks, dataset_task_specs, select_tasks
from tests.data.mtl_trees import NYUD_SIZE, part_anno, write_nyud_tree, write_pascal_tree

# A float32 vector renormalized from float32 or 8-bit inputs is within a few float32 ulps
# of the float64 answer: |error| <= 4 * 2**-24 per component for unit vectors.
UNIT_ATOL = 4 * 2.0**-24


@pytest.fixture
def nyud(tmp_path):
    root = tmp_path / "NYUD_MT"
    return root, write_nyud_tree(root)


@pytest.fixture
def nyud_invpt(tmp_path):
    root = tmp_path / "NYUDv2"
    return root, write_nyud_tree(root, invpt=True)


@pytest.fixture
def pascal(tmp_path):
    root = tmp_path / "PASCAL_MT"
    return root, write_pascal_tree(root)


def _dataset(root, split="train", tasks=None):
    info = read_bench_info(root)
    specs = select_tasks(dataset_task_specs(info), tasks)
    return BenchDataset(root, split, info, build_tasks(specs))


def _unit(v: np.ndarray, axis: int) -> np.ndarray:
    v = v.astype(np.float64)
    return v / np.linalg.norm(v, axis=axis, keepdims=True)


# ---------------------------------------------------------------------------- layout


def test_layouts_are_told_apart(nyud, pascal, tmp_path):
    assert bench_layout(nyud[0]).name == "nyud"
    assert bench_layout(pascal[0]).name == "pascal_context"
    assert bench_layout(tmp_path) is None
    assert isinstance(open_info(nyud[0]), BenchInfo)
    assert open_info(pascal[0], "pascal_context").layout == "pascal_context"
    with pytest.raises(DataFormatError, match="not a nyud release"):
        open_info(pascal[0], "nyud")


def test_task_specs_name_the_papers_tasks(nyud, pascal):
    n = read_bench_info(nyud[0])
    assert list(n.task_specs) == ["semseg", "depth", "normals", "boundaries"]
    assert len(n.task_specs["semseg"]["classes"]) == 40
    assert n.task_specs["boundaries"] == {"kind": "boundaries", "max_dist": 0.011}
    assert n.splits == {"train": {"size": 3, "gt": True}, "val": {"size": 2, "gt": True}}
    p = read_bench_info(pascal[0])
    assert list(p.task_specs) == ["semseg", "human_parts", "saliency", "normals", "boundaries"]
    assert [c["name"] for c in p.task_specs["human_parts"]["classes"]][1:3] == ["head", "torso"]
    assert p.task_specs["semseg"]["classes"][15]["name"] == "person"
    # VOC's palette: aeroplane is (128, 0, 0), person (192, 128, 128)
    assert p.task_specs["semseg"]["classes"][1]["color"] == [128, 0, 0]
    assert p.task_specs["semseg"]["classes"][15]["color"] == [192, 128, 128]
    assert p.task_specs["boundaries"]["max_dist"] == 0.0075
    assert tuple(p.image_size) == PASCAL_CANVAS
    assert p.partial_tasks == ["human_parts"] and n.partial_tasks == []


def test_part_groups_cover_pascal_parts_person_names():
    assert len(PART_GROUPS) == 24 and set(PART_GROUPS.values()) == set(range(1, 7))
    assert PART_GROUPS["lhand"] == PART_GROUPS["rlarm"] == 4
    assert len(NORMALS_VALID_LABELS) == 170 and 427 in NORMALS_VALID_LABELS


# ---------------------------------------------------------------------------- NYUD


def test_nyud_targets_as_the_loaders_read_them(nyud):
    root, written = nyud
    ds = _dataset(root)
    for i, image_id in enumerate(ds.ids):
        w = written[image_id]
        s = ds[i]
        assert int(s["index"]) == i and s["rgb"].shape == (3, *NYUD_SIZE)
        decoded = np.asarray(Image.open(root / "images" / f"{image_id}.jpg").convert("RGB"))
        assert torch.equal(s["rgb"], torch.from_numpy(decoded.transpose(2, 0, 1).copy()))
        expected = w["segmentation"].astype(np.int64) - 1
        expected[expected == -1] = 255
        assert torch.equal(s["semseg"], torch.from_numpy(expected))
        assert torch.equal(s["depth"], torch.from_numpy(w["depth"]))  # stored float32 as is
        n = w["normals"]
        valid = np.linalg.norm(n, axis=-1) > 0
        got = s["normals"].numpy().transpose(1, 2, 0)
        np.testing.assert_allclose(got[valid], _unit(n[valid], -1), rtol=0, atol=UNIT_ATOL)
        assert (got[~valid] == 0).all()
        assert torch.equal(s["boundaries"], torch.from_numpy(w["edge"].astype(np.int64)))


def test_nyud_invpt_copy_pngs(nyud_invpt):
    root, written = nyud_invpt
    ds = _dataset(root)
    for i, image_id in enumerate(ds.ids):
        w, s = written[image_id], ds[i]
        assert torch.equal(s["rgb"], torch.from_numpy(w["rgb"].transpose(2, 0, 1).copy()))
        code = np.asarray(Image.open(root / "normals" / f"{image_id}.png"), dtype=np.float64)
        expected = _unit(2 * code / 255 - 1, -1)
        got = s["normals"].numpy().transpose(1, 2, 0)
        np.testing.assert_allclose(got, expected, rtol=0, atol=UNIT_ATOL)
        assert torch.equal(s["boundaries"], torch.from_numpy(w["edge"].astype(np.int64)))


def test_nyud_datamodule_reports_val_as_test(nyud):
    dm = SceneDataModule(
        root=str(nyud[0]), tasks=["semseg", "depth"], crop_size=None, num_workers=0
    )
    dm.setup("fit")
    assert len(dm.dataset("train")) == 3 and dm.dataset("test") is dm.dataset("val")
    batch = next(iter(dm.train_dataloader()))
    assert {"rgb", "index", "semseg", "depth"} <= set(batch)
    # DataLoader workers started by "spawn" get the dataset pickled
    import pickle

    copy = pickle.loads(pickle.dumps(dm.dataset("val")))
    assert torch.equal(copy[1]["depth"], dm.dataset("val")[1]["depth"])
    assert dm.info.stats["depth_m"]["mean"] > 0  # the depth task's statistics, top level


# ---------------------------------------------------------------------------- PASCAL


def test_pascal_targets_as_the_loaders_read_them(pascal):
    root, written = pascal
    ds = _dataset(root)
    fill = {"semseg": 255, "human_parts": 255, "saliency": 255, "boundaries": 255}
    k = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=np.float64)
    for i, image_id in enumerate(ds.ids):
        w, s = written[image_id], ds[i]
        h, wd = w["semseg"].shape
        assert s["rgb"].shape == (3, *PASCAL_CANVAS) and (s["rgb"][:, h:] == 0).all()
        for name, value in fill.items():
            if name in s:  # padding is "not labelled"
                assert (s[name][h:] == value).all() and (s[name][:, wd:] == value).all()
        assert torch.equal(s["semseg"][:h, :wd], torch.from_numpy(w["semseg"].astype(np.int64)))
        if w["parts"] is None:
            assert "human_parts" not in s  # a person without parts: no label at all
        else:
            assert torch.equal(s["human_parts"][:h, :wd], torch.from_numpy(w["parts"]))
        sal = (w["saliency"] >= 128).astype(np.int64)  # v / 255 > 0.5
        assert torch.equal(s["saliency"][:h, :wd], torch.from_numpy(sal))
        # OpenCV's Laplacian (scipy's "mirror" is BORDER_REFLECT_101) then skimage's thin
        lap = ndimage.convolve(w["label_map"].astype(np.float64), k, mode="mirror") != 0
        from skimage.morphology import thin

        edges = thin(lap).astype(np.int64)
        assert torch.equal(s["boundaries"][:h, :wd], torch.from_numpy(edges))
        valid = np.isin(w["label_map"], sorted(NORMALS_VALID_LABELS))
        expected = _unit(2 * w["normals_png"].astype(np.float64) / 255 - 1, -1)
        got = s["normals"][:, :h, :wd].numpy().transpose(1, 2, 0)
        np.testing.assert_allclose(got[valid], expected[valid], rtol=0, atol=UNIT_ATOL)
        assert (got[~valid] == 0).all() and (s["normals"][:, h:] == 0).all()


def test_laplacian_edges_on_thin_images():
    """A one-pixel-high map reflects nothing (OpenCV repeats the pixel): a change is an
    edge on both sides of it."""
    row = np.array([[1, 1, 2, 2]])
    assert laplacian_nonzero(row).tolist() == [[False, True, True, False]]
    assert label_boundaries(np.full((5, 6), 7)).sum() == 0


def test_parts_of_later_people_paint_over_earlier_ones(tmp_path):
    size = (6, 8)
    a = np.zeros(size, bool)
    a[:, :5] = True
    b = np.zeros(size, bool)
    b[:, 3:] = True
    anno = part_anno(
        "x.jpg",
        [
            {"class": "person", "class_ind": 15, "mask": a, "parts": [("torso", a)]},
            {"class": "person", "class_ind": 15, "mask": b, "parts": [("rlleg", b)]},
        ],
    )
    root = tmp_path / "PASCAL_MT"
    write_pascal_tree(root, {"train": 1})
    image_id = "2008_000000"
    Image.new("RGB", size[::-1]).save(root / "JPEGImages" / f"{image_id}.jpg")
    scipy.io.savemat(root / "human_parts" / f"{image_id}.mat", {"anno": anno})
    from scenemtl.data.pascal import read_parts

    expected = np.where(b, 6, np.where(a, 2, 0))
    assert np.array_equal(read_parts(root, image_id, size), expected)
    # the loaders take an image only if some person's mask has pixels
    empty = np.zeros(size, bool)
    anno = part_anno(
        "x.jpg", [{"class": "person", "class_ind": 15, "mask": empty, "parts": [("torso", a)]}]
    )
    scipy.io.savemat(root / "human_parts" / f"{image_id}.mat", {"anno": anno})
    assert read_parts(root, image_id, size) is None


# ---------------------------------------------------------------------------- check, stats


def test_data_check_and_stats_on_both_trees(nyud, pascal, capsys):
    from scenemtl.cli import main

    for root in (nyud[0], pascal[0]):
        assert check_dataset(root) == []
        with pytest.raises(SystemExit) as exc:
            main(["data", "stats", "--root", str(root)])
        assert exc.value.code in (0, None)
    out = capsys.readouterr().out
    assert "nyud: 3 train images sampled" in out and "otherprop" in out
    assert "human_parts (2 labelled images)" in out and "lower leg" in out
    assert not (nyud[0] / "dataset.json").exists()  # nothing written into a release
    info = read_bench_info(pascal[0])
    freq = info.stats["human_parts"]["human_parts_class_pixel_frequency"]
    parts = [w["parts"] for w in pascal[1].values() if w["split"] == "train"]
    counts = np.bincount(np.concatenate([p.ravel() for p in parts if p is not None]), None, 7)
    np.testing.assert_allclose(freq, counts / counts.sum(), rtol=1e-12)


def _one_line(text: str) -> str:
    assert "\n" not in text
    return text


@pytest.mark.parametrize(
    "tree, mutate, message",
    [
        ("nyud", lambda r: (r / "depth" / "img_5002.npy").unlink(), "file not found"),
        ("nyud", lambda r: np.save(r / "depth" / "img_5001.npy", np.ones((3, 3))), "differs"),
        ("nyud", lambda r: np.save(r / "edge" / "img_5001.npy", np.full((24, 32), 2.0)), "[0, 1]"),
        (
            "nyud",
            lambda r: Image.fromarray(np.full((24, 32), 41, np.uint8)).save(
                r / "segmentation" / "img_5001.png"
            ),
            "outside 0..40",
        ),
        ("nyud", lambda r: (r / "gt_sets" / "val.txt").write_text("../etc/passwd\n"), "not an"),
        ("nyud", lambda r: (r / "gt_sets" / "val.txt").write_text("a\na\n"), "more than once"),
        ("pascal", lambda r: (r / _mat(r)).write_bytes(b"garbage" * 30), "not a MATLAB 5"),
        (
            "pascal",
            lambda r: scipy.io.savemat(r / _mat(r), {"Labels": np.zeros((20, 28))}),
            "no variable 'LabelMap'",
        ),
        (
            "pascal",
            lambda r: scipy.io.savemat(r / _mat(r), {"LabelMap": np.full((20, 28), 460.0)}),
            "outside 0..459",
        ),
        (
            "pascal",
            lambda r: scipy.io.savemat(
                r / "human_parts" / "2008_000000.mat",
                {"anno": part_anno("x", [_person_with("tail", (20, 28))])},
            ),
            "unknown part 'tail'",
        ),
        (
            "pascal",
            lambda r: scipy.io.savemat(
                r / "human_parts" / "2008_000000.mat",
                {"anno": part_anno("x", [_person_with("head", (5, 5))])},
            ),
            "expected a 20x28 mask",
        ),
        (
            "pascal",
            lambda r: Image.new("RGB", (600, 10)).save(r / "JPEGImages" / "2008_000000.jpg"),
            "exceeds the 512x512 canvas",
        ),
    ],
)
def test_a_bad_file_is_one_line_naming_it(nyud, pascal, tree, mutate, message):
    root = {"nyud": nyud, "pascal": pascal}[tree][0]
    mutate(root)
    problems = check_dataset(root)
    assert problems and message in _one_line(problems[0]), problems
    with pytest.raises(DataFormatError) as exc:  # the reader says the same
        info = read_bench_info(root)
        for split in info.ids:
            ds = _dataset(root, split)
            for i in range(len(ds)):
                ds[i]
    assert message in _one_line(str(exc.value))


def _mat(root) -> str:
    return "pascal-context/trainval/2008_000000.mat"


def _person_with(part: str, size: tuple[int, int]) -> dict:
    mask = np.ones(size, bool)
    return {"class": "person", "class_ind": 15, "mask": mask, "parts": [(part, mask)]}


def test_a_deflate_bomb_is_refused_before_scipy_reads_it(pascal, monkeypatch):
    """A MAT v5 file whose compressed element inflates past the bound (lowered here to
    1 MiB so the file stays small) is one line, and nothing that large is allocated."""
    import scenemtl.data.mtlfiles as files

    monkeypatch.setattr(files, "MAX_MAT_DECOMPRESSED", 1 << 20)
    header = b"MATLAB 5.0 MAT-file, test".ljust(116, b" ") + b"\0" * 8 + b"\x00\x01IM"
    body = zlib.compress(b"\0" * (2 << 20))
    tag = np.array([15, len(body)], dtype="<u4").tobytes()
    path = pascal[0] / _mat(pascal[0])
    path.write_bytes(header + tag + body)
    problems = check_dataset(pascal[0])
    assert len(problems) == 2  # boundaries and normals read the LabelMap
    assert "inflates to more than 1048576 bytes" in _one_line(problems[0])


def test_read_mat_refuses_hdf5(tmp_path):
    path = tmp_path / "x.mat"
    path.write_bytes(b"MATLAB 7.3 MAT-file".ljust(128, b" ") + b"\x89HDF\r\n")
    with pytest.raises(DataFormatError, match="v7.3/HDF5"):
        read_mat(path, ("LabelMap",))


def test_unknown_task_of_a_release_is_refused(nyud):
    info = read_bench_info(nyud[0])
    with pytest.raises(UserError, match="no task 'saliency'"):
        BenchDataset(nyud[0], "train", info, build_tasks({"saliency": {"kind": "saliency"}}))


@pytest.mark.parametrize(
    "module, bound, path, message",
    [
        ("mtlfiles", "MAX_MAT_BYTES", "pascal-context/trainval/2008_000001.mat", "for a .mat"),
        ("mtlpytorch", "MAX_LIST_BYTES", "ImageSets/Context/train.txt", "bytes, more than 16"),
    ],
)
def test_file_sizes_are_bounded_before_reading(pascal, monkeypatch, module, bound, path, message):
    """A .mat file or split list larger than its bound (lowered to 16 bytes here) is one
    line naming it, checked from its size before anything is read."""
    import importlib

    monkeypatch.setattr(importlib.import_module(f"scenemtl.data.{module}"), bound, 16)
    assert (pascal[0] / path).stat().st_size > 16
    problems = check_dataset(pascal[0])
    # every file of that kind is over the bound now: each is named, in one line
    assert problems and all(message in _one_line(p) for p in problems)
    assert any(p.startswith(f"{pascal[0] / path}:") for p in problems)


def test_a_one_bit_edge_png_reads_as_on_off(nyud_invpt):
    root, written = nyud_invpt
    image_id = "img_5001"
    edge = written[image_id]["edge"] > 0
    Image.fromarray(edge).save(root / "edge" / f"{image_id}.png")  # mode "1"
    assert Image.open(root / "edge" / f"{image_id}.png").mode == "1"
    from scenemtl.data.nyud import read_edges

    assert np.array_equal(read_edges(root, image_id, NYUD_SIZE), edge.astype(np.int64))

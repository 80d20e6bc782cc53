"""The study file: resolution order of options, baselines, presets, and refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from scenemtl.errors import UserError
from scenemtl.studies.spec import format_value, load_study, monitor_args, presets_of
from scenemtl.tasks import options_of_learned_tasks

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, doc: dict, name: str = "s.yaml") -> Path:
    (tmp_path / "base.yaml").write_text("model: {lr: 0.1}\n")
    (tmp_path / "arm.yaml").write_text("model: {lr: 0.2}\n")
    (tmp_path / "small.yaml").write_text("data: {batch_size: 2}\n")
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def doc(**extra) -> dict:
    return {
        "config": "base.yaml",
        "overrides": {"trainer.max_epochs": 10, "model.lr": 0.3},
        "seeds": [0, 1],
        "variants": [
            {"name": "a"},
            {"name": "b", "config": "arm.yaml", "overrides": {"model.lr": 0.5}},
        ],
        **extra,
    }


def test_option_order_and_preset(tmp_path):
    path = write(
        tmp_path,
        doc(
            presets={
                "cpu": {
                    "config": "small.yaml",
                    "seeds": [3],
                    "overrides": {"model.lr": 0.01, "trainer.max_epochs": 2},
                    "variant_overrides": {"a": {"model.lr": 0.02}},
                }
            }
        ),
    )
    full = load_study(path)
    assert full.name == "s" and full.seeds == (0, 1)
    assert full.variant("a").overrides == {"trainer.max_epochs": 10, "model.lr": 0.3}
    assert full.variant("b").overrides["model.lr"] == 0.5  # the variant's own wins
    cpu = load_study(path, "cpu")
    assert cpu.name == "s-cpu" and cpu.seeds == (3,)
    a, b = cpu.variant("a"), cpu.variant("b")
    # configs: study's, variant's, preset's; overrides: study < preset < variant < preset's variant
    assert [c.name for c in b.configs] == ["base.yaml", "arm.yaml", "small.yaml"]
    assert a.overrides == {"trainer.max_epochs": 2, "model.lr": 0.02}
    assert b.overrides == {"trainer.max_epochs": 2, "model.lr": 0.5}
    assert cpu.cells() == [("a", 3), ("b", 3)]
    args = b.cli_args()
    assert args[:6] == [
        "--config",
        str(tmp_path / "base.yaml"),
        "--config",
        str(tmp_path / "arm.yaml"),
        "--config",
        str(tmp_path / "small.yaml"),
    ]
    assert "--model.lr=0.5" in args and "--trainer.max_epochs=2" in args
    assert presets_of(path) == ["cpu"]


def test_baselines_are_single_task_copies_of_a_variant(tmp_path):
    path = write(
        tmp_path,
        doc(monitor="val/grader", baselines={"variant": "b", "tasks": ["semseg", "depth"]}),
    )
    spec = load_study(path)
    names = [v.name for v in spec.all_variants]
    assert names == ["a", "b", "single_semseg", "single_depth"]
    single = spec.variant("single_depth")
    assert single.baseline_of == "depth"
    assert single.overrides == {
        **spec.variant("b").overrides,
        "data.tasks": ["depth"],
        "model.loss_weights": None,
    }
    assert single.configs == spec.variant("b").configs
    # the grader needs both tasks: baselines keep their own monitor
    assert monitor_args(spec, spec.variant("a")) == [
        "--run.monitor=val/grader",
        "--run.monitor_mode=max",
    ]
    assert monitor_args(spec, single) == []


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.001, "0.001"),
        ([False, True], "[false, true]"),
        ({"semseg": 0.25}, "{semseg: 0.25}"),
        ("adam", "adam"),
        (None, "null"),
        (1e-05, "1.0e-05"),
    ],
)
def test_values_reach_the_command_line_as_yaml(value, text):
    assert format_value(value) == text
    assert yaml.safe_load(format_value(value)) == value


def test_search_space(tmp_path):
    search = {
        "trials": 5,
        "space": {
            "model.lr": {"low": 1e-4, "high": 1e-1, "log": True},
            "model.optimizer": ["sgd", "adam"],
            "data.batch_size": {"low": 2, "high": 8, "step": 2},
        },
    }
    spec = load_study(write(tmp_path, doc(search=search)))
    lr, opt, bs = spec.search.space
    assert spec.search.trials == 5
    assert lr.log and not lr.is_int and opt.choices == ("sgd", "adam") and bs.is_int


@pytest.mark.parametrize(
    ("change", "culprit"),
    [
        ({"colour": 1}, "unknown key 'colour'"),
        ({"seeds": []}, "seeds"),
        ({"seeds": [0, 0]}, "seed twice"),
        ({"variants": []}, "variants"),
        ({"variants": [{"name": "a"}, {"name": "a"}]}, "'a' named twice"),
        ({"variants": [{"name": "single_x"}]}, "baselines' prefix"),
        ({"variants": [{"name": "a b"}]}, "'a b' is not a name"),
        ({"variants": [{"name": "a", "config": "missing.yaml"}]}, "missing.yaml not found"),
        ({"overrides": {"run.name": "x"}}, "set by the study itself"),
        ({"overrides": {"model lr": 1}}, "not a dotted option name"),
        ({"baselines": {"variant": "zzz", "tasks": ["semseg"]}}, "no variant 'zzz'"),
        ({"baselines": {"tasks": "semseg"}}, "baselines.tasks"),
        ({"search": {"space": {"model.lr": {"low": 1, "high": 0.1}}}}, "low must be below high"),
        ({"search": {"space": {"model.lr": {"low": 0, "high": 1, "log": True}}}}, "low > 0"),
        ({"search": {"space": {}}}, "no option to search"),
        ({"presets": {"cpu": {"variants": ["zzz"]}}}, "no variant 'zzz'"),
        ({"monitor_mode": "up"}, "monitor_mode"),
        (
            {"search": {"space": {"data.batch_size": {"low": 4, "high": 16, "step": 0.5}}}},
            "an integer range needs an integer step, got 0.5",
        ),
        ({"presets": {"cpu": {"seeds": []}}}, r"presets\.cpu\.seeds must be"),
    ],
)
def test_bad_study_files_are_one_line(tmp_path, change, culprit):
    path = write(tmp_path, doc(**change))
    preset = "cpu" if "presets" in change else None
    with pytest.raises(UserError, match=culprit.replace("(", r"\(").replace("'", "'")) as e:
        load_study(path, preset)
    assert str(path) in str(e.value)


def test_unknown_preset_and_missing_file(tmp_path):
    path = write(tmp_path, doc(presets={"cpu": {}}))
    with pytest.raises(UserError, match="no preset 'gpu'; presets: cpu"):
        load_study(path, "gpu")
    with pytest.raises(UserError, match="not found"):
        load_study(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("variants: [\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_study(tmp_path / "bad.yaml")


@pytest.mark.parametrize("study", sorted((REPO / "studies").glob("*.yaml")))
def test_builtin_studies_load_with_every_preset(study):
    if study.name == "cpu.yaml":  # the presets' shared partial config, not a study
        return
    for preset in [None, *presets_of(study)]:
        spec = load_study(study, preset)
        assert spec.cells()
        for v in spec.all_variants:
            assert all(c.is_file() for c in v.configs)


def test_baselines_leave_the_other_tasks_options_to_the_run(tmp_path):
    """A baseline is its variant plus ``data.tasks`` (and the default loss weights): the
    options the variant sets for other tasks reach the run, which ignores them, as any
    ``--data.tasks`` run does (through the CLI: tests/test_cli.py)."""
    path = write(
        tmp_path,
        doc(
            variants=[
                {"name": "a", "config": "opts.yaml", "overrides": {"model.depth_space": "log"}}
            ],
            baselines={"variant": "a", "tasks": ["semseg", "normals"]},
        ),
    )
    options = {"normals": {"loss": "cosine"}, "depth": {"loss": "l1"}}
    (tmp_path / "opts.yaml").write_text(yaml.safe_dump({"model": {"task_options": options}}))
    spec = load_study(path)
    variant = spec.variant("a")
    provided = ["semseg", "depth", "normals"]
    kinds = {"semseg": "segmentation", "depth": "depth", "normals": "normals"}
    expected = {"semseg": {}, "normals": {"normals": {"loss": "cosine"}}}
    for task, want in expected.items():
        single = spec.variant(f"single_{task}")
        assert single.configs == variant.configs
        assert single.overrides == {
            **variant.overrides,
            "data.tasks": [task],
            "model.loss_weights": None,
        }
        flat = {"depth_space": single.overrides["model.depth_space"]}
        assert options_of_learned_tasks({task: {"kind": kinds[task]}}, provided, options, flat) == (
            want,
            {},
        )
    # the depth run keeps its options, the flat one over task_options' entry
    assert options_of_learned_tasks(
        {"depth": {"kind": "depth"}}, provided, options, flat, {"depth": 2.0}
    ) == (
        {"depth": {"loss": "l1", "space": "log"}},
        {"depth": 2.0},
    )

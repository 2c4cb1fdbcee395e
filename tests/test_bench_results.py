"""Measured runs: metrics and both mean conventions, provenance, and exact re-runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

from bench_support import make_vtab_folder, tiny_config, write_config  # noqa: E402

from peft_atlas.bench.config import parse_config  # noqa: E402
from peft_atlas.bench.results import summarize  # noqa: E402
from peft_atlas.bench.runner import run_experiment  # noqa: E402
from peft_atlas.cli import main  # noqa: E402
from peft_atlas.measured import MeasuredRun, TaskRecord, load_measured_runs, read_measured_run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _result(task: str, group: str, top1: float) -> TaskRecord:
    return TaskRecord(
        task=task, group=group, top1=top1, test_correct=0, selected_epoch=1, selection="val200", history=[],
        trainable_parameters=0, total_parameters=0, num_train=0, num_val=0, num_test=0, data_source="",
        dataset_fingerprint="", wall_time_s=0.0, data_time_s=0.0, max_rss_bytes=None,
        cuda_max_allocated_bytes=None, world_size=1, device="cpu",
    )


def test_both_mean_conventions() -> None:
    metrics = summarize([_result("a", "natural", 90.0), _result("b", "natural", 70.0), _result("c", "structured", 50.0)])
    assert metrics.group_means == {"natural": 80.0, "structured": 50.0}
    assert metrics.mean_of_tasks == pytest.approx(70.0)
    assert metrics.mean_of_group_means == pytest.approx(65.0)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, MeasuredRun]:
    """`peft-atlas bench` on a config under <tmp>/benchmarks/experiments/lora/tiny.yaml."""
    tmp = tmp_path_factory.mktemp("bench")
    data = make_vtab_folder(tmp / "vtab")
    config = write_config(tmp / "benchmarks" / "experiments" / "lora" / "tiny.yaml", tiny_config(None))
    assert main(["bench", str(config), "--data-root", str(data), "--seed", "3", "--quiet"]) == 0
    path = tmp / "benchmarks" / "measured" / "lora" / "tiny-seed3.json"
    return path, read_measured_run(path)


def test_measured_run_records_the_provenance(cli_run: tuple[Path, MeasuredRun]) -> None:
    path, run = cli_run
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["format"] == "peft-atlas-bench-result" and doc["format_version"] == 1
    assert doc["tasks"][0]["prepare"] is None  # LoRA is applied, not prepared from data
    assert doc["seed"] == 3 and doc["config"]["seed"] == 3
    assert doc["config"]["data"]["tasks"] == ["cifar100"] and doc["config"]["data"]["root"].endswith("vtab")
    assert doc["config"]["train"]["lr"] == 0.01 and doc["config"]["train"]["optimizer"] == "adamw"  # defaults filled
    protocol = doc["protocol"]
    assert (protocol["data"]["train_split"], protocol["data"]["val_split"], protocol["data"]["test_split"]) == (
        "train800", "val200", "test")
    assert protocol["selection"] == "val200" and protocol["normalization"]["mean"] == [0.485, 0.456, 0.406]
    assert protocol["optimizer"]["name"] == "adamw" and protocol["epochs"] == 2 and protocol["seed"] == 3
    assert set(doc["metrics"]) == {"top1", "group_means", "mean_of_tasks", "mean_of_group_means"}
    task = doc["tasks"][0]
    assert len(task["dataset_fingerprint"]) == 64 and task["trainable_parameters"] > 0
    assert doc["trainable_parameters"] == {"cifar100": task["trainable_parameters"]}
    assert doc["wall_time_s"] > 0 and doc["peak_memory"]["max_rss_bytes"] > 0
    assert doc["hardware"]["cpu_cores"] >= 1 and "cpu" in doc["hardware"] and "gpu" in doc["hardware"]
    assert doc["versions"]["torch"] and doc["versions"]["timm"]
    assert set(doc["git"]) == {"commit", "dirty"}
    assert doc["command"].startswith("peft-atlas bench ") and "tiny.yaml --seed 3 --data-root " in doc["command"]


def _assert_reruns_exactly(run: MeasuredRun, where: str) -> None:
    config = parse_config(run.config.model_dump(mode="json"), where)
    results = run_experiment(config, quiet=True)
    assert summarize(results) == run.metrics, f"{where}: re-run metrics differ"
    for result, recorded in zip(results, run.tasks, strict=True):
        assert result.dataset_fingerprint == recorded.dataset_fingerprint, f"{where}: data changed"
        assert (result.test_correct, result.selected_epoch) == (recorded.test_correct, recorded.selected_epoch)
        assert [e.val_top1 for e in result.history] == [e.val_top1 for e in recorded.history]
        assert result.prepare == recorded.prepare


def _committed_cheap_runs() -> list[Path]:
    """Measured runs under benchmarks/measured/ that declare `cheap_to_reproduce: true`."""
    runs, _ = load_measured_runs(REPO)
    return [REPO / loaded.file for loaded in runs if loaded.run.cheap_to_reproduce]


@pytest.mark.parametrize("path", _committed_cheap_runs() or [None], ids=lambda p: p.name if p else "none-committed")
def test_committed_runs_rerun_exactly(path: Path | None, cli_run: tuple[Path, MeasuredRun]) -> None:
    """Re-run each committed measured run that declares `cheap_to_reproduce: true`; while there
    is none, re-run a tiny run written by `peft-atlas bench` during this test run."""
    if path is None:
        path, run = cli_run
    else:
        run = read_measured_run(path)
        root = run.config.data.model_extra.get("root")
        if run.config.data.kind == "vtab-1k" and not Path(root or "").is_dir():
            pytest.skip(f"{path}: its VTAB-1k folder {root} is not on this machine")
    _assert_reruns_exactly(run, str(path))

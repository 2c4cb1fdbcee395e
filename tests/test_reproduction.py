"""The reproduction guarantee, checked: a committed VTAB-micro row re-run on this machine.

The committed linear-probing row (seed 0) is trained again from its recorded config on the
committed backbone, with its thread count, and must land within the tolerance measured by
benchmarks/reproducibility.py and committed in benchmarks/measured/reproducibility.json, on any
machine. That the same machine and thread count give identical numbers is measured by the same
script (its "same" variant), whose record the first test checks. About a minute on one core.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn", reason="VTAB-micro's data needs the bench extra")

from peft_atlas.bench.config import parse_config  # noqa: E402
from peft_atlas.bench.results import summarize  # noqa: E402
from peft_atlas.bench.runner import run_experiment  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ROW = REPO / "benchmarks" / "measured" / "vtab-micro" / "linear-probing-seed0.json"
MEASURED = REPO / "benchmarks" / "measured" / "reproducibility.json"


def test_the_committed_tolerance_covers_every_variant_it_was_measured_on() -> None:
    document = json.loads(MEASURED.read_text(encoding="utf-8"))
    tolerance = document["tolerance"]
    entry = document["methods"]["linear-probing"]
    assert tolerance["row"] == entry["committed"] == ROW.relative_to(REPO).as_posix()
    assert set(entry["variants"]) >= {"same", "2-threads", "generic-kernels"}
    for name, variant in entry["variants"].items():
        for task, difference in variant["difference"].items():
            assert abs(difference) <= tolerance["per_task"][task], (name, task)
        assert abs(variant["mean_of_group_means_difference"]) <= tolerance["mean_of_group_means"], name
    for method, measured in document["methods"].items():
        assert measured["variants"]["same"]["identical"], f"{method}: the same settings gave other numbers"


def test_the_committed_linear_probing_row_reruns_within_the_measured_tolerance() -> None:
    committed = json.loads(ROW.read_text(encoding="utf-8"))
    tolerance = json.loads(MEASURED.read_text(encoding="utf-8"))["tolerance"]
    config = parse_config(committed["config"], str(ROW))
    threads = torch.get_num_threads()
    torch.set_num_threads(committed["hardware"]["torch_threads"])
    try:
        results = run_experiment(config, quiet=True)
    finally:
        torch.set_num_threads(threads)
    metrics = summarize(results).model_dump(mode="json")
    # The backbone and the data are the committed ones: only the arithmetic may differ.
    assert [r.dataset_fingerprint for r in results] == [t["dataset_fingerprint"] for t in committed["tasks"]]
    for task, top1 in committed["metrics"]["top1"].items():
        assert abs(metrics["top1"][task] - top1) <= tolerance["per_task"][task], task
    assert abs(metrics["mean_of_group_means"] - committed["metrics"]["mean_of_group_means"]) <= (
        tolerance["mean_of_group_means"])

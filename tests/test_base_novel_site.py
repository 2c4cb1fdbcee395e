"""Measured base-to-novel runs on the site: the VLM-micro page shows every method's base, novel
and HM over its seeds, the base-to-novel page links to it, and method cards show the runs.
No torch needed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench_support import base_novel_run_document
from peft_atlas.base_novel import finish_row, harmonic_mean, measures
from peft_atlas.cli import main
from peft_atlas.kb import load
from peft_atlas.measured import MeasuredRun
from peft_atlas.render import render_pages
from peft_atlas.spread import aggregate_seeds

REPO = Path(__file__).resolve().parents[1]
RUNS = {"coop": [(90.0, 50.0), (92.0, 54.0)], "cocoop": [(85.0, 70.0), (86.0, 71.0)], "zero-shot-clip": [(70.0, 75.0)]}
"""(base, novel) of each seed of three methods."""


@pytest.fixture
def repo_with_runs(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for part in ("taxonomy", "bib", "reference_impls"):
        shutil.copytree(REPO / part, root / part, ignore=shutil.ignore_patterns("__pycache__", "tests"))
    measured = root / "benchmarks" / "measured" / "vlm-micro"
    measured.mkdir(parents=True)
    for method, seeds in RUNS.items():
        for seed, (base, novel) in enumerate(seeds):
            document = base_novel_run_document(method, seed, base, novel)
            (measured / f"{method}-seed{seed}.json").write_text(json.dumps(document, indent=2))
    return root


def test_measures_and_the_hm_of_the_mean_base_and_novel() -> None:
    runs = [MeasuredRun.model_validate(base_novel_run_document("coop", seed, base, novel))
            for seed, (base, novel) in enumerate(RUNS["coop"])]
    rows = [{"benchmark": "vlm-micro", "impl": "coop", "config_key": "k", "variant": f"coop-seed{i}", "seed": i,
             "file": f"f{i}", "per_task": measures(run.metrics), "group_means": {},
             "mean_of_tasks": run.metrics.base_novel_mean.hm, "mean_of_group_means": run.metrics.base_novel_mean.hm}
            for i, run in enumerate(runs)]
    [row] = [finish_row(r) for r in aggregate_seeds(rows)]
    average = row["base_novel"]["average"]
    assert (average["base"], average["novel"]) == (91.0, 52.0)
    assert average["hm"] == pytest.approx(harmonic_mean(91.0, 52.0))  # not the mean of the seeds' HMs
    assert average["base_std"] == pytest.approx(2 ** 0.5) and average["hm_std"] > 0
    assert row["mean_of_group_means"] == average["hm"] and row["base_novel"]["shapes"]["novel"] == 52.0


def test_the_vlm_micro_page_ranks_every_method_by_its_hm(repo_with_runs: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["--root", str(repo_with_runs), "validate"]) == 0, capsys.readouterr()
    kb, problems = load(repo_with_runs, check_math=False)
    assert problems == []
    pages = render_pages(kb)
    page = pages["results/vlm-micro.md"]
    table = page.split("## Reproduced by this repository", 1)[1]
    lines = [line for line in table.splitlines() if line.startswith("| ") and "Rank" not in line]
    order = [line.split(" | ")[1] for line in lines]
    assert [name.split("]")[0].lstrip("[") for name in order] == ["CoCoOp", "Zero-shot CLIP", "CoOp"]
    cocoop = lines[0]
    assert f"| 85.50 ± 0.71 | 70.50 ± 0.71 | {harmonic_mean(85.5, 70.5):.2f} ± " in cocoop
    assert "| 1 | 70.0 | 75.0 |" not in page and "seed 1" in page and "vlm-micro.yaml --seed 1" in page
    assert 'class="point reproduced"' in page and "## Reported results" not in page
    # the base-to-novel page, with its reported rows, links to VLM-micro; the method card shows the run
    assert "See also: [VLM-micro](vlm-micro.md)" in pages["results/base-to-novel.md"]
    card = pages["methods/coop.md"]
    assert "| [VLM-micro](../results/vlm-micro.md) | coop | 2 | 91.00 ± 1.41 | 52.00 ± 2.83 |" in card

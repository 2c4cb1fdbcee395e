"""Fidelity of VTAB-micro to VTAB-1k: Spearman's rank correlation, the scores on each side, the
methods left out, and the figure on the VTAB-micro results page."""

from __future__ import annotations

import json
import math
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench_support import measured_run_document
from conftest import DORA, REPO, TASKS, edit, write
from peft_atlas.spread import aggregate_seeds
from peft_atlas.fidelity import average_ranks, proxy_fidelity, spearman
from peft_atlas.kb import load
from peft_atlas.render import load_generated_data, measured_rows, render_pages

# VTAB-1k's groups, in benchmarks.yaml order: 7 natural, 4 specialized, 8 structured tasks.
NATURAL, SPECIALIZED, STRUCTURED = TASKS[:7], TASKS[7:11], TASKS[11:]
# VTAB-micro's tasks with their groups, as the harness records them.
MICRO_TASKS = {task["id"]: group["id"]
               for benchmark in yaml.safe_load((REPO / "taxonomy/benchmarks.yaml").read_text())["benchmarks"]
               if benchmark["id"] == "vtab-micro"
               for group in benchmark["groups"] for task in group["tasks"]}


# ---------------------------------------------------------------- ranks and Spearman

def test_ranks_start_at_the_highest_and_ties_share_the_mean_rank():
    # 30 and 30 take ranks 1 and 2 and share 1.5; 20 is 3rd; 10 is 4th.
    assert average_ranks([10.0, 30.0, 20.0, 30.0]) == [4.0, 1.5, 3.0, 1.5]
    assert average_ranks([5.0, 5.0, 5.0]) == [2.0, 2.0, 2.0]
    assert average_ranks([]) == []


def test_spearman_of_the_same_order_is_one_and_of_the_reversed_order_minus_one():
    assert spearman([1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0]) == pytest.approx(1.0)
    # Only the order counts, not the spacing.
    assert spearman([1.0, 2.0, 3.0, 4.0], [0.1, 5.0, 6.0, 90.0]) == pytest.approx(1.0)
    assert spearman([1.0, 2.0, 3.0, 4.0], [40.0, 30.0, 20.0, 10.0]) == pytest.approx(-1.0)


def test_spearman_with_ties_uses_average_ranks():
    # x = [1, 2, 2, 3] ranks (highest first) [4, 2.5, 2.5, 1]; y = [1, 2, 3, 4] ranks [4, 3, 2, 1].
    # Both rank lists have mean 2.5: deviations dx = [1.5, 0, 0, -1.5], dy = [1.5, 0.5, -0.5, -1.5].
    # sum dx*dy = 2.25 + 2.25 = 4.5; sum dx^2 = 4.5; sum dy^2 = 2.25 + 0.25 + 0.25 + 2.25 = 5.
    # rho = 4.5 / sqrt(4.5 * 5) = 3 / sqrt(10) = 0.9487 (the 1 - 6 sum d^2 / (n (n^2 - 1)) shortcut,
    # which ignores ties, would give 1 - 6 * 0.5 / 60 = 0.95 instead).
    assert spearman([1.0, 2.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0]) == pytest.approx(3 / math.sqrt(10))
    # Three items, one swap: ranks [1, 2, 3] against [2, 1, 3] give 1 - 6 * 2 / (3 * 8) = 0.5.
    assert spearman([3.0, 2.0, 1.0], [2.0, 3.0, 1.0]) == pytest.approx(0.5)


@pytest.mark.parametrize("x, y, message", [
    ([1.0, 2.0], [1.0], "must pair up"),
    ([1.0], [1.0], "at least two"),
    ([1.0, 2.0, 3.0], [7.0, 7.0, 7.0], "same score"),
])
def test_spearman_refuses_what_has_no_correlation(x, y, message):
    with pytest.raises(ValueError, match=message):
        spearman(x, y)


# ---------------------------------------------------------------- scores from the knowledge base

def row_yaml(method: str, per_task: dict[str, float], bib: str = "hu2022lora") -> str:
    """One reported VTAB-1k row (mean-of-tasks convention, mean printed only with every task)."""
    tasks = ", ".join(f"{task}: {value}" for task, value in per_task.items())
    mean = f"    mean: {statistics.fmean(per_task.values()):.2f}\n" if len(per_task) == len(TASKS) else ""
    return f"""\
  - method: {method}
    backbone: ViT-B/16
    checkpoint: ImageNet-21k supervised
    protocol: {{mean_convention: mean-of-tasks, selection: val200, data_source: synthetic, selection_evidence: synthetic, image_source: image-files, normalization: imagenet-mean-std, params_per_task: fixed, seeds: {{count: 1, shown: single-run}}}}
    per_task: {{{tasks}}}
{mean}    source: {{bib: {bib}, table: "Table 2"}}
"""


def by_group(natural: float, specialized: float, structured: float) -> dict[str, float]:
    """Per-task numbers equal within each VTAB-1k group."""
    return ({t: natural for t in NATURAL} | {t: specialized for t in SPECIALIZED}
            | {t: structured for t in STRUCTURED})


def add_reported(root: Path, file: str, rows: list[str]) -> None:
    write(root, f"taxonomy/reported/vtab-1k/{file}", "benchmark: vtab-1k\nrows:\n" + "".join(rows))


def add_implemented_method(root: Path, method_id: str, impl: str) -> None:
    """A method (a copy of DoRA's entry) linked by ``impl`` to a registered implementation."""
    if method_id != "lora" and not (root / f"taxonomy/methods/{method_id}.yaml").exists():
        write(root, f"taxonomy/methods/{method_id}.yaml",
              DORA.replace("id: dora", f"id: {method_id}").replace("name: DoRA", f"name: {method_id.upper()}"))
    edit(root, f"taxonomy/methods/{method_id}.yaml", "mergeable: true", f"mergeable: true\nimpl: {impl}")
    (root / "reference_impls").mkdir(exist_ok=True)
    with (root / "reference_impls" / "methods.py").open("a", encoding="utf-8") as registry:
        registry.write(f'register("{impl}", Config, apply)\n')


def add_micro_run(root: Path, impl: str, top1: float, tasks: dict[str, str] | None = None) -> None:
    """A measured VTAB-micro run of ``impl`` with every task (or ``tasks``) at ``top1``."""
    directory = root / "benchmarks/measured/vtab-micro"
    directory.mkdir(parents=True, exist_ok=True)
    document = measured_run_document(impl, kind="micro", tasks=tasks or MICRO_TASKS, top1=top1)
    (directory / f"{impl}.json").write_text(json.dumps(document), encoding="utf-8")


def loaded(root: Path):
    kb, problems = load(root, check_math=False)
    assert [str(p) for p in problems] == []
    return kb


def test_reported_score_is_the_median_over_complete_rows_of_recomputed_group_means(mini_kb):
    """LoRA has the fixture's row (every task 70) and three more: a row whose groups average 80,
    60 and 82 (mean of group means 74, mean of tasks and printed mean 76.63), a row with every
    task 79, and a row missing a task. The median of [70, 74, 79] is 74; their mean would be
    74.33, the mean of tasks or the printed mean 76.63, and counting the partial row 76.5."""
    add_implemented_method(mini_kb, "lora", "lora")
    add_reported(mini_kb, "liu2024dora.yaml", [
        row_yaml("lora", by_group(80.0, 60.0, 82.0), bib="liu2024dora"),
        row_yaml("lora", by_group(79.0, 79.0, 79.0), bib="liu2024dora"),
        row_yaml("lora", {t: 99.0 for t in TASKS[:-1]}, bib="liu2024dora"),
    ])
    add_micro_run(mini_kb, "lora", 55.0)
    kb = loaded(mini_kb)
    [pair] = proxy_fidelity(kb, measured_rows(kb)).pairs
    assert pair.method == "lora" and pair.name == "LoRA"
    assert pair.target_rows == 3 and pair.target_score == pytest.approx(74.0)
    assert pair.proxy_runs == 1 and pair.proxy_score == pytest.approx(55.0)


def test_rows_on_another_backbone_or_pre_training_do_not_count(mini_kb):
    """VTAB-1k's reference setting is ViT-B/16 pre-trained on ImageNet-21k: a ViT-L/16 row and an
    MAE row measure other models and leave the score at the fixture's row (every task 70)."""
    add_implemented_method(mini_kb, "lora", "lora")
    add_reported(mini_kb, "liu2024dora.yaml", [
        row_yaml("lora", by_group(90.0, 90.0, 90.0), bib="liu2024dora").replace("ViT-B/16", "ViT-L/16"),
        row_yaml("lora", by_group(95.0, 95.0, 95.0), bib="liu2024dora").replace(
            "ImageNet-21k supervised", "ImageNet-1k MAE"),
    ])
    add_micro_run(mini_kb, "lora", 55.0)
    kb = loaded(mini_kb)
    [pair] = proxy_fidelity(kb, measured_rows(kb)).pairs
    assert pair.target_rows == 1 and pair.target_score == pytest.approx(70.0)


def test_a_method_without_a_complete_row_or_a_run_is_left_out_with_the_reason(mini_kb):
    add_implemented_method(mini_kb, "lora", "lora")
    add_implemented_method(mini_kb, "dora", "dora")
    add_implemented_method(mini_kb, "ia3", "ia3")
    add_implemented_method(mini_kb, "vera", "vera")
    add_reported(mini_kb, "liu2024dora.yaml", [
        row_yaml("dora", {t: 75.0 for t in TASKS[:-1]}, bib="liu2024dora"),  # 18 of 19 tasks
        row_yaml("dora", {t: 76.0 for t in TASKS[1:]}, bib="liu2024dora"),
        row_yaml("vera", by_group(71.0, 71.0, 71.0), bib="liu2024dora"),
    ])
    for impl in ("lora", "dora", "ia3"):
        add_micro_run(mini_kb, impl, 50.0)
    kb = loaded(mini_kb)
    fidelity = proxy_fidelity(kb, measured_rows(kb))
    assert [p.method for p in fidelity.pairs] == ["lora"]
    assert {m.method: m.reason for m in fidelity.left_out} == {
        "dora": "none of its 2 reported VTAB-1k rows prints all 19 tasks",
        "ia3": "no reported VTAB-1k row",
        "vera": "no VTAB-micro run",
    }


def test_fewer_than_three_methods_give_no_figure_and_the_page_says_why(mini_kb):
    add_implemented_method(mini_kb, "lora", "lora")
    add_implemented_method(mini_kb, "dora", "dora")
    add_reported(mini_kb, "liu2024dora.yaml", [row_yaml("dora", by_group(75.0, 75.0, 75.0), bib="liu2024dora")])
    add_micro_run(mini_kb, "lora", 60.0)
    add_micro_run(mini_kb, "dora", 50.0)
    kb = loaded(mini_kb)
    fidelity = proxy_fidelity(kb, measured_rows(kb))
    assert len(fidelity.pairs) == 2 and fidelity.rho is None
    assert fidelity.reason == ("only 2 methods have both a VTAB-micro run and a reported VTAB-1k row with "
                               "every task, and a rank correlation needs at least 3")
    page = render_pages(kb)["results/vtab-micro.md"]
    assert "**The fidelity figure cannot be computed:** only 2 methods have both" in page
    assert "ρ =" not in page
    # the two methods are still listed, each with its scores
    assert "| [LoRA](../methods/lora.md) | 60.00 | 1 | 70.00 | 1 | 2 |" in page
    assert "| [DoRA](../methods/dora.md) | 50.00 | 2 | 75.00 | 1 | 1 |" in page


def test_three_methods_give_a_figure_on_the_vtab_micro_page(mini_kb):
    # VTAB-micro orders LoRA > DoRA > IA3; VTAB-1k orders DoRA > LoRA > IA3: one swap, rho = 0.5.
    for method_id in ("lora", "dora", "ia3"):
        add_implemented_method(mini_kb, method_id, method_id)
    add_reported(mini_kb, "liu2024dora.yaml", [
        row_yaml("dora", by_group(75.0, 75.0, 75.0), bib="liu2024dora"),
        row_yaml("ia3", by_group(65.0, 65.0, 65.0), bib="liu2024dora"),
    ])
    for impl, top1 in (("lora", 60.0), ("dora", 50.0), ("ia3", 40.0)):
        add_micro_run(mini_kb, impl, top1)
    kb = loaded(mini_kb)
    fidelity = proxy_fidelity(kb, measured_rows(kb))
    assert fidelity.rho == pytest.approx(0.5) and fidelity.reason is None and fidelity.left_out == []
    pages = render_pages(kb)
    assert "**Fidelity: Spearman's ρ = 0.50** over n = 3 methods." in pages["results/vtab-micro.md"]
    assert "## Fidelity" not in pages["results/vtab-1k.md"]


def test_a_run_missing_a_task_does_not_count(mini_kb):
    add_implemented_method(mini_kb, "lora", "lora")
    add_micro_run(mini_kb, "lora", 90.0, tasks=dict(list(MICRO_TASKS.items())[:-1]))
    kb = loaded(mini_kb)
    fidelity = proxy_fidelity(kb, measured_rows(kb))
    assert fidelity.pairs == []
    assert [(m.method, m.reason) for m in fidelity.left_out] == [
        ("lora", f"its VTAB-micro run does not cover all {len(MICRO_TASKS)} tasks")]


# ---------------------------------------------------------------- the repository's data

def test_the_vtab_micro_page_shows_the_fidelity_of_the_committed_data():
    kb, _ = load(REPO, check_math=False)
    fidelity = proxy_fidelity(kb, aggregate_seeds(measured_rows(kb)))  # as the site: seeds averaged
    assert fidelity.rho is not None and len(fidelity.pairs) >= 3, fidelity.reason
    page = render_pages(kb, load_generated_data(REPO))["results/vtab-micro.md"]
    section = page.split("## Fidelity to VTAB-1k", 1)[1].split("\n## ", 1)[0]
    assert f"**Fidelity: Spearman's ρ = {fidelity.rho:.2f}** over n = {len(fidelity.pairs)} methods." in section
    # The table on the page, read back: its ranks give the same figure through the standard
    # library's Pearson correlation, and its scores are the pairs' scores.
    table = re.findall(r"^\| \[([^\]]+)\]\([^)]*\) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| (\d+) \| ([\d.]+) \|$",
                       section, re.M)
    assert len(table) == len(fidelity.pairs)
    proxy_ranks = [float(r[2]) for r in table]
    target_ranks = [float(r[5]) for r in table]
    assert statistics.correlation(proxy_ranks, target_ranks) == pytest.approx(fidelity.rho)
    for (name, proxy_score, _, target_score, rows, _), pair in zip(table, fidelity.pairs):
        assert (name, proxy_score, target_score, int(rows)) == (
            pair.name, f"{pair.proxy_score:.2f}", f"{pair.target_score:.2f}", pair.target_rows)
    for item in fidelity.left_out:
        assert f"{item.name}]" in section and f": {item.reason}." in section


def test_the_fidelity_code_loads_no_numerics_library():
    code = ("import sys, peft_atlas.fidelity, peft_atlas.render; "
            "print([m for m in ('numpy', 'scipy', 'torch') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_a_row_copying_an_earlier_source_counts_once(mini_kb):
    """The mini knowledge base's LoRA row (70 everywhere) printed again by a later paper is one
    result: the median stays over the distinct rows."""
    add_implemented_method(mini_kb, "lora", "lora")
    copied = row_yaml("lora", {t: 70.0 for t in TASKS}, bib="liu2024dora").replace(
        '    source: {bib: liu2024dora, table: "Table 2"}\n',
        '    source: {bib: liu2024dora, table: "Table 2"}\n    copy_of: {bib: hu2022lora, table: "Table 1"}\n')
    add_reported(mini_kb, "liu2024dora.yaml", [copied, row_yaml("lora", by_group(80.0, 80.0, 80.0), bib="liu2024dora")])
    add_micro_run(mini_kb, "lora", 55.0)
    kb = loaded(mini_kb)
    [pair] = proxy_fidelity(kb, measured_rows(kb)).pairs
    assert pair.target_rows == 2 and pair.target_score == pytest.approx(75.0)

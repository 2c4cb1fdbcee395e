"""Every reported parameter count that names a preset is recomputed with that preset.

A row of `taxonomy/reported/**/*.yaml` with `preset: P` claims that the preset P of its method's
reference implementation adds `params_m` million parameters to ViT-B/16, at the precision the
source prints. `preset: <prefix>/*` means the per-task presets `<prefix>/<task>`, averaged over the
benchmark's tasks as the row's mean convention averages accuracies (the mean of the group means,
or the plain mean over tasks); `params_include_head: true` adds each task's classifier head
before averaging. Rows whose count no preset reproduces say why in `no_preset` instead (the
validator checks that).
"""

from __future__ import annotations

import functools
import statistics

import pytest
import yaml

import reference_impls as ri

from .reported import HEAD_CLASSES, PER_CLASS, TAXONOMY, ReportedRow, added_parameters, in_millions, reported_rows

ROWS = [reported for reported in reported_rows() if reported.row.get("preset")]


@functools.cache
def _impl(method: str) -> str | None:
    """The `impl` of a method's taxonomy file."""
    path = TAXONOMY / "methods" / f"{method}.yaml"
    return yaml.safe_load(path.read_text(encoding="utf-8")).get("impl") if path.is_file() else None


@functools.cache
def _groups(benchmark: str) -> dict[str, list[str]]:
    """Task ids of each group of a benchmark, from taxonomy/benchmarks.yaml."""
    document = yaml.safe_load((TAXONOMY / "benchmarks.yaml").read_text(encoding="utf-8"))
    spec = next(b for b in document["benchmarks"] if b["id"] == benchmark)
    return {group["id"]: [task["id"] for task in group["tasks"]] for group in spec["groups"]}


@functools.cache
def _preset_count(impl: str, preset: str) -> int:
    return added_parameters(impl, preset=preset)


def reproduced_count(impl: str, preset: str, benchmark: str, convention: str, include_head: bool) -> float:
    """The count a row's preset stands for, averaged over the benchmark's tasks.

    Args:
        impl: Registry name of the row's implementation.
        preset: The row's preset (`<prefix>/*` for the per-task presets).
        benchmark: The row's benchmark id.
        convention: The row's mean convention.
        include_head: Add each task's classifier head.
    """
    groups = _groups(benchmark)
    per_task = {}
    for task in (t for tasks in groups.values() for t in tasks):
        name = preset[:-1] + task if preset.endswith("/*") else preset
        head = PER_CLASS * HEAD_CLASSES[benchmark][task] if include_head else 0
        per_task[task] = _preset_count(impl, name) + head
    if convention == "mean-of-group-means":
        return statistics.fmean(statistics.fmean(per_task[t] for t in tasks) for tasks in groups.values())
    return statistics.fmean(per_task.values())


@pytest.mark.skipif(not ROWS, reason="taxonomy/reported is not next to the package")
@pytest.mark.parametrize("reported", ROWS, ids=[f"{r.id}:{r.row['preset']}" for r in ROWS])
def test_reported_count_is_reproduced_by_its_preset(reported: ReportedRow) -> None:
    row, where = reported.row, f"{reported.file} row {reported.index} ({reported.row.get('label')})"
    impl = _impl(row["method"])
    assert impl is not None, f"{where}: method {row['method']!r} has no implementation"
    preset, presets = row["preset"], ri.list_presets(impl)
    if preset.endswith("/*"):
        assert any(name.startswith(preset[:-1]) for name in presets), f"{where}: {impl} has no presets {preset}"
    else:
        assert preset in presets, f"{where}: {impl} has no preset {preset!r}; its presets: {presets}"
    printed = row["params_m"]
    count = reproduced_count(impl, preset, reported.benchmark, row["protocol"]["mean_convention"],
                             bool(row.get("params_include_head")))
    ours = in_millions(count, printed)
    assert ours == printed, f"{where}: preset {preset!r} of {impl} gives {count:,.0f} parameters: {ours} M, not {printed} M"


@pytest.mark.skipif(not ROWS, reason="taxonomy/reported is not next to the package")
def test_rows_of_every_kind_name_a_preset() -> None:
    # a single configuration, per-task presets, and a count that includes the head
    assert {r.row["preset"].endswith("/*") for r in ROWS} == {True, False}
    assert any(r.row.get("params_include_head") for r in ROWS)

"""Seeds of a measured result: their mean, their spread, and which differences are ties.

A reproduced number is the mean over the seeds of one configuration, given with the sample
standard deviation of those seeds. Two methods whose difference is within their spread are tied:
their intervals mean ± standard deviation overlap, so the seeds do not order them.

Plain Python on purpose: the docs toolchain has neither numpy nor torch.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from statistics import fmean, stdev

__all__ = ["aggregate_seeds", "mark_ties", "seedless_variant"]

_SEED_SUFFIX = re.compile(r"-seed\d+$")

# Per-seed fields that must agree for runs to be seeds of one configuration.
_SAME_ACROSS_SEEDS = ("benchmark", "impl", "config_key")


def seedless_variant(variant: str) -> str:
    """A run's variant without its seed: ``"lora-seed2"`` gives ``"lora"``."""
    return _SEED_SUFFIX.sub("", variant)


def _mean_and_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value, whose spread is unknown)."""
    return fmean(values), (stdev(values) if len(values) > 1 else None)


def aggregate_seeds(runs: Sequence[dict]) -> list[dict]:
    """Group measured rows that differ only in their seed into one row of means and spreads.

    Args:
        runs: Measured rows as ``render.measured_rows`` builds them; rows are seeds of one
            configuration when benchmark, implementation and ``config_key`` (the configuration
            without its seed) are equal.

    Returns:
        One row per configuration, sorted by benchmark, implementation and variant: the fields of
        its first seed's row, with ``per_task``, ``group_means``, ``mean_of_tasks`` and
        ``mean_of_group_means`` replaced by their means over the seeds; ``per_task_std``,
        ``mean_of_tasks_std`` and ``mean_of_group_means_std`` (sample standard deviations, None
        for one seed); ``seeds`` (sorted); ``runs`` (the per-seed rows, by seed) and
        ``variant`` without its seed suffix.

    Raises:
        ValueError: If two runs of one configuration have the same seed, or the seeds of one
            configuration do not cover the same tasks.
    """
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        groups[tuple(run[field] for field in _SAME_ACROSS_SEEDS)].append(run)
    rows = []
    for members in groups.values():
        members = sorted(members, key=lambda run: run["seed"])
        seeds = [run["seed"] for run in members]
        if len(set(seeds)) != len(seeds):
            files = ", ".join(run["file"] for run in members)
            raise ValueError(f"{files}: runs of one configuration repeat a seed ({seeds}); "
                             "expected each seed once")
        tasks = set(members[0]["per_task"])
        for run in members[1:]:
            if set(run["per_task"]) != tasks:
                raise ValueError(f"{run['file']}: per_task has tasks {sorted(run['per_task'])}, expected the "
                                 f"tasks of {members[0]['file']}: {sorted(tasks)}")
        row = dict(members[0])
        per_task = {task: _mean_and_std([run["per_task"][task] for run in members]) for task in members[0]["per_task"]}
        row["per_task"] = {task: mean for task, (mean, _) in per_task.items()}
        row["per_task_std"] = {task: std for task, (_, std) in per_task.items()}
        row["group_means"] = {group: fmean(run["group_means"][group] for run in members)
                              for group in members[0]["group_means"]}
        for field in ("mean_of_tasks", "mean_of_group_means"):
            row[field], row[f"{field}_std"] = _mean_and_std([run[field] for run in members])
        row.update(seeds=seeds, runs=members, variant=seedless_variant(members[0]["variant"]))
        rows.append(row)
    return sorted(rows, key=lambda row: (row["benchmark"], row["impl"], row["variant"]))


def mark_ties(rows: Sequence[dict], field: str = "mean_of_group_means") -> list[dict]:
    """Rank rows of one benchmark by ``field`` and mark the differences within the spread as ties.

    Two rows are tied when ``|a - b| <= std_a + std_b`` (their intervals mean ± standard
    deviation overlap; a row of one seed counts with no spread). A row's rank is a range: from 1
    plus the number of rows clearly above it, to the number of rows not clearly below it.

    Args:
        rows: Aggregated rows (``aggregate_seeds``) of one benchmark.
        field: The score to rank by; ``f"{field}_std"`` is its spread.

    Returns:
        Copies of the rows, best first, each with ``rank_best``, ``rank_worst`` and ``tied_with``
        (the ``impl`` names of the rows it is tied with, in the order of the ranking).
    """
    def spread(row: dict) -> float:
        return row.get(f"{field}_std") or 0.0

    ordered = sorted(rows, key=lambda row: (-row[field], row["impl"], row["variant"]))
    marked = []
    for row in ordered:
        margins = [(other, row[field] - other[field], spread(row) + spread(other))
                   for other in ordered if other is not row]
        clearly_above = sum(1 for _, difference, margin in margins if -difference > margin)
        clearly_below = sum(1 for _, difference, margin in margins if difference > margin)
        marked.append(dict(row, rank_best=1 + clearly_above, rank_worst=len(ordered) - clearly_below,
                           tied_with=[other["impl"] for other, difference, margin in margins
                                      if abs(difference) <= margin]))
    return marked

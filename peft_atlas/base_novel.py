"""Measured base-to-novel runs on the site: base, novel and HM per task and on average, over seeds.

A measured run of a base-to-novel protocol (`clip-base-to-novel`, `vlm-micro`) records per task
the accuracy on the base classes, on the novel classes and their harmonic mean, and their
averages over the tasks (`metrics.base_novel`, `metrics.base_novel_mean`). For the seed
aggregation of [`spread`][peft_atlas.spread] these become "measures" keyed `<task>.base`,
`<task>.novel`, `<task>.hm` and `average.base`, `average.novel`, `average.hm`; a row's score is
its average HM. After aggregation, `finish_row` restores the convention of the base-to-novel
tables: the HM printed for several seeds is the harmonic mean of the mean base and mean novel
accuracies, and its spread the standard deviation of the seeds' own HMs.

Plain Python on purpose: the docs toolchain has neither numpy nor torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["AVERAGE", "FIELDS", "finish_row", "harmonic_mean", "measures"]

AVERAGE = "average"
"""The key of the averages over the tasks among a row's measures."""
FIELDS = ("base", "novel", "hm")


def harmonic_mean(base: float, novel: float) -> float:
    """HM = 2 B N / (B + N) (0 when both are 0)."""
    return 2 * base * novel / (base + novel) if base + novel else 0.0


def measures(metrics: Any) -> dict[str, float]:
    """A run's base, novel and HM per task and on average, keyed `<task>.<field>` (see the module docstring).

    Args:
        metrics: The run's `Metrics` with `base_novel` and `base_novel_mean` set.
    """
    found = {f"{task}.{field}": getattr(values, field)
             for task, values in metrics.base_novel.items() for field in FIELDS}
    found.update({f"{AVERAGE}.{field}": getattr(metrics.base_novel_mean, field) for field in FIELDS})
    return found


def finish_row(row: dict) -> dict:
    """An aggregated row (`spread.aggregate_seeds`) with its base-to-novel numbers laid out.

    Adds `base_novel`: `{task or "average": {base, novel, hm, base_std, novel_std, hm_std}}`,
    where `hm` is recomputed from the mean base and novel accuracies, and sets the row's score
    (`mean_of_group_means`, and `mean_of_tasks`) to the average HM so computed, keeping the
    standard deviation of the seeds' HMs as its spread.
    """
    means, spreads = row["per_task"], row.get("per_task_std", {})
    tasks = list(dict.fromkeys(key.rsplit(".", 1)[0] for key in means))
    laid_out = {}
    for task in tasks:
        values = {field: means[f"{task}.{field}"] for field in FIELDS}
        values["hm"] = harmonic_mean(values["base"], values["novel"])
        values.update({f"{field}_std": spreads.get(f"{task}.{field}") for field in FIELDS})
        laid_out[task] = values
    average = laid_out[AVERAGE]
    return dict(row, base_novel=laid_out, mean_of_group_means=average["hm"], mean_of_tasks=average["hm"],
                mean_of_group_means_std=average["hm_std"], mean_of_tasks_std=average["hm_std"])

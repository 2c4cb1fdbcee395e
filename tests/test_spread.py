"""Seeds of a measured result: means, spreads and ties (peft_atlas.spread)."""

from __future__ import annotations

import pytest

from peft_atlas.spread import aggregate_seeds, mark_ties, seedless_variant


def _run(impl: str, seed: int, scores: dict[str, float], config: str = "c") -> dict:
    mean = sum(scores.values()) / len(scores)
    return {"benchmark": "b", "impl": impl, "variant": f"{impl}-seed{seed}", "file": f"{impl}-seed{seed}.json",
            "seed": seed, "config_key": config, "per_task": scores, "group_means": {"g": mean},
            "mean_of_tasks": mean, "mean_of_group_means": mean}


def test_seeds_of_one_configuration_become_one_row_of_means_and_sample_deviations() -> None:
    [row] = aggregate_seeds([_run("lora", 2, {"x": 60.0, "y": 80.0}), _run("lora", 0, {"x": 50.0, "y": 70.0}),
                             _run("lora", 1, {"x": 55.0, "y": 75.0})])
    assert row["seeds"] == [0, 1, 2] and row["variant"] == "lora" and [r["seed"] for r in row["runs"]] == [0, 1, 2]
    assert row["per_task"] == {"x": 55.0, "y": 75.0}
    assert row["per_task_std"]["x"] == pytest.approx(5.0)  # sample deviation of 50, 55, 60
    assert row["mean_of_group_means"] == pytest.approx((60 + 65 + 70) / 3)
    assert row["mean_of_group_means_std"] == pytest.approx(5.0)


def test_a_single_seed_has_no_spread_and_other_configurations_stay_apart() -> None:
    rows = aggregate_seeds([_run("lora", 0, {"x": 50.0}), _run("lora", 1, {"x": 52.0}, config="other lr")])
    assert len(rows) == 2 and all(row["mean_of_group_means_std"] is None for row in rows)


def test_a_repeated_seed_or_a_missing_task_is_refused_naming_the_files() -> None:
    with pytest.raises(ValueError, match=r"lora-seed0\.json.*repeat a seed"):
        aggregate_seeds([_run("lora", 0, {"x": 50.0}), _run("lora", 0, {"x": 51.0})])
    with pytest.raises(ValueError, match=r"lora-seed1\.json: per_task has tasks \['x'\], expected"):
        aggregate_seeds([_run("lora", 0, {"x": 50.0, "y": 1.0}), _run("lora", 1, {"x": 51.0})])


def test_differences_within_the_spread_are_ties_with_a_range_of_ranks() -> None:
    def row(impl: str, mean: float, std: float | None) -> dict:
        return {"impl": impl, "variant": impl, "mean_of_group_means": mean, "mean_of_group_means_std": std}

    # a: 70 ± 1 and b: 69 ± 0.5 overlap; c: 60 ± 1 is clearly below both; d has one seed.
    ranked = mark_ties([row("c", 60.0, 1.0), row("b", 69.0, 0.5), row("a", 70.0, 1.0), row("d", 50.0, None)])
    assert [(r["impl"], r["rank_best"], r["rank_worst"], r["tied_with"]) for r in ranked] == [
        ("a", 1, 2, ["b"]), ("b", 1, 2, ["a"]), ("c", 3, 3, []), ("d", 4, 4, [])]
    # Just outside the spread is not a tie: 70 - 68.4 = 1.6 > 1 + 0.5.
    apart = mark_ties([row("a", 70.0, 1.0), row("b", 68.4, 0.5)])
    assert [(r["rank_best"], r["rank_worst"]) for r in apart] == [(1, 1), (2, 2)]


def test_the_seed_suffix_is_dropped_from_the_variant() -> None:
    assert seedless_variant("default-seed12") == "default" and seedless_variant("micro") == "micro"

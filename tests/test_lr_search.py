"""The learning-rate search the laptop suites share: the grid grows past an end holding the best
rate, a failed run stops its method, and a run already there is kept."""

from __future__ import annotations

import json
from pathlib import Path

from peft_atlas.bench import lr_search


def test_the_grid_grows_until_the_best_rate_is_inside_or_the_extensions_run_out(tmp_path: Path) -> None:
    # validation score peaks at 0.3 for "rising" and keeps rising for "steep"; "broken" fails at 0.1
    peaks = {"rising": 0.3, "steep": 100.0, "broken": 0.3}
    ran: list[tuple[str, float]] = []

    def run_candidate(method: str, lr: float) -> Path | None:
        ran.append((method, lr))
        if method == "broken" and lr == 0.1:
            return None
        out = tmp_path / f"{method}-{lr:g}.json"
        out.write_text(json.dumps({"score": -abs(lr - peaks[method])}), encoding="utf-8")
        return out

    scores, files, failed = lr_search.search_rates(
        ["rising", "steep", "broken"], lambda method: [0.01, 0.03, 0.1], run_candidate, lambda run: run["score"],
        grid_size=3, max_extensions=2, step=3.0, jobs=2)
    assert sorted(scores["rising"]) == [0.01, 0.03, 0.1, 0.3, 0.9]  # 0.3 is at an end until 0.9 is tried
    assert lr_search.choose(scores["rising"]) == 0.3
    assert sorted(scores["steep"]) == [0.01, 0.03, 0.1, 0.3, 0.9]  # stopped by max_extensions at an end
    assert failed == {"broken"} and sorted(scores["broken"]) == [0.01, 0.03]
    assert files["rising"][0.3] == tmp_path / "rising-0.3.json"
    assert ("broken", 0.3) not in ran  # a method with a failed run is tuned no further


def test_a_run_is_kept_only_with_the_same_config_and_backbone(tmp_path: Path) -> None:
    config = {"description": "d", "method": {"name": "lora"}, "backbone": {"model": "vit_tiny_patch16_224"},
              "data": {"kind": "micro", "tasks": ["digits"]}, "train": {"epochs": 1}}
    from peft_atlas.bench.config import parse_config

    expected = parse_config(config, "<test>").model_dump(mode="json")
    out = tmp_path / "run.json"
    assert not lr_search.is_same_run(out, expected, "abc")
    out.write_text(json.dumps({"config": config, "backbone_weights": {"sha256": "abc"}}), encoding="utf-8")
    assert lr_search.is_same_run(out, expected, "abc")
    assert not lr_search.is_same_run(out, expected, "other backbone")
    changed = dict(expected, seed=expected["seed"] + 1)
    assert not lr_search.is_same_run(out, changed, "abc")


def test_a_flat_score_grows_the_grid_upwards() -> None:
    """All rates tie (no rate moved the method): the next is above the highest, not below the lowest."""
    flat = {0.01: 75.0, 0.03: 75.0, 0.1: 75.0}
    assert lr_search.choose(flat) == 0.01
    assert lr_search.next_rate(flat, added=0, max_extensions=3, step=3.0) == 0.3
    assert lr_search.next_rate({0.01: 76.0, 0.03: 75.0, 0.1: 75.0}, added=0, max_extensions=3, step=3.0) == 0.00333


def test_a_config_is_checked_before_it_is_written_and_rewritten_only_when_its_text_changes(tmp_path: Path) -> None:
    import pytest

    from peft_atlas.bench.config import ConfigError

    path = tmp_path / "lora" / "micro.yaml"
    data = {"method": {"name": "lora"}, "backbone": {"model": "vit_tiny_patch16_224"},
            "data": {"kind": "micro", "tasks": ["dtd"]}, "train": {"lr": 0.01}}
    lr_search.write_config_file(path, "# header\n", data)
    assert path.read_text(encoding="utf-8").startswith("# header\nmethod:")
    path.write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    before = path.stat().st_mtime_ns
    lr_search.write_config_file(path, "# header\n", data)
    assert path.stat().st_mtime_ns == before
    with pytest.raises(ConfigError, match="bad.yaml"):
        lr_search.write_config_file(tmp_path / "bad.yaml", "# header\n", {**data, "train": {"lr": "fast"}})
    assert not (tmp_path / "bad.yaml").exists()

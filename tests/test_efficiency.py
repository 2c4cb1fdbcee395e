"""benchmarks/efficiency.py: method classes, statistics, sanity checks, a tiny run and its page."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from conftest import REPO
from peft_atlas.kb import load
from peft_atlas.render import EFFICIENCY_FORMAT, render_pages

spec = importlib.util.spec_from_file_location("efficiency", REPO / "benchmarks" / "efficiency.py")
efficiency = importlib.util.module_from_spec(spec)
spec.loader.exec_module(efficiency)

TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}


def figure(median: float, half_width: float = 0.02) -> dict:
    return {"median": median, "p25": median - half_width, "p75": median + half_width}


def row(method: str, train: float = 0.8, inference: float = 1.1, merged: float | None = 1.0) -> dict:
    return {"method": method, "train_vs_full": figure(train), "memory_vs_full": figure(0.7),
            "inference_vs_plain": figure(inference), "merged_vs_plain": None if merged is None else figure(merged)}


def test_every_registered_method_is_classified():
    import reference_impls as ri

    registered = set(ri.list_methods(backbone="vit"))
    assert set(efficiency.FORWARD) == registered
    assert set(efficiency.GRADIENT) == registered
    assert set(efficiency.FORWARD.values()) == {"adds", "same"}
    assert set(efficiency.GRADIENT.values()) == {"backbone", "last-blocks", "none"}


def test_format_is_the_one_the_site_shows():
    assert (efficiency.FORMAT, efficiency.FORMAT_VERSION) == EFFICIENCY_FORMAT


def test_summary_is_the_median_and_the_interquartile_range():
    assert efficiency.summary([1.0, 2.0, 3.0, 4.0, 5.0]) == {"median": 3.0, "p25": 2.0, "p75": 4.0}
    assert efficiency.ratios([2.0, 3.0], [1.0, 2.0]) == [2.0, 1.5]
    with pytest.raises(ValueError):
        efficiency.ratios([1.0], [1.0, 2.0])  # rounds are paired, never mixed


def test_consistent_figures_pass_the_checks():
    rows = [row("lora", train=0.8, inference=1.05, merged=1.0),
            row("vpt-shallow", train=0.7, inference=1.2, merged=None),
            row("linear-probing", train=0.35, inference=1.0, merged=1.01),
            row("partial-k", train=0.3, inference=0.98)]
    assert efficiency.check(rows, tolerance=0.03) == []


def test_a_method_that_adds_to_the_forward_pass_cannot_be_faster_unmerged():
    failures = efficiency.check([row("vpt-shallow", inference=0.36, merged=None)], tolerance=0.03)
    assert len(failures) == 1 and "vpt-shallow" in failures[0] and "0.36x (IQR 0.34-0.38)" in failures[0]
    # within the tolerance, and a method that leaves the forward pass as it is, pass
    assert efficiency.check([row("vpt-shallow", inference=0.97, merged=None)], tolerance=0.03) == []
    assert efficiency.check([row("linear-probing", inference=0.9, merged=1.0)], tolerance=0.03) == []


def test_a_merged_method_is_the_plain_backbone():
    failures = efficiency.check([row("lora", merged=1.12)], tolerance=0.03)
    assert len(failures) == 1 and "lora: merged inference 1.12x (IQR 1.10-1.14)" in failures[0]
    assert efficiency.check([row("bitfit", inference=1.0, merged=0.86)], tolerance=0.03) != []
    assert efficiency.check([row("lora", merged=1.04)], tolerance=0.03) == []  # IQR 1.02-1.06 +/- 0.03


def test_a_gradient_through_the_backbone_is_not_cheaper_than_one_outside_it():
    rows = [row("vpt-shallow", train=0.2, merged=None), row("side-tuning", train=0.4, merged=None)]
    failures = efficiency.check(rows, tolerance=0.03)
    assert len(failures) == 1
    assert "vpt-shallow: train step 0.20x" in failures[0] and "side-tuning at 0.40x" in failures[0]
    # the last blocks only (partial-k) are outside the rule; overlapping spreads pass
    assert efficiency.check([row("partial-k", train=0.2), row("lst", train=0.4, merged=None)], tolerance=0.03) == []
    assert efficiency.check([row("lora", train=0.42), row("lst", train=0.45, merged=None)], tolerance=0.03) == []


def test_a_control_outside_the_tolerance_rejects_the_run():
    noisy = row("full-finetuning", train=1.10, inference=1.0, merged=1.0)
    failures = efficiency.check([noisy], tolerance=0.05)
    assert len(failures) == 1 and "full-finetuning: train_vs_full 1.10x" in failures[0]
    assert "noise exceeds the tolerance" in failures[0]
    assert efficiency.check([row("full-finetuning", train=1.04, inference=0.97, merged=1.0)], tolerance=0.05) == []
    # the same figures on another method are no control: a train step may differ from full FT
    assert efficiency.check([row("bitfit", train=1.10, inference=1.0, merged=1.0)], tolerance=0.05) == []


def test_a_rejected_document_is_not_written(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(efficiency.tempfile, "tempdir", str(tmp_path))  # where the rejected one is kept
    document = {"conditions": {"tolerance": 0.03}, "methods": [row("vpt-deep", inference=0.5, merged=None)]}
    out = tmp_path / "efficiency.json"
    assert efficiency.publish(document, out) == 1
    assert not out.exists()
    assert "vpt-deep: unmerged inference 0.50x" in capsys.readouterr().err
    assert len(list(tmp_path.glob("efficiency-rejected-*.json"))) == 1
    document["methods"] = [row("vpt-deep", inference=1.2, merged=None)]
    assert efficiency.publish(document, out) == 0
    assert json.loads(out.read_text())["methods"][0]["method"] == "vpt-deep"


def test_an_unknown_method_is_refused():
    assert efficiency.main(["--methods", "no-such-method"]) == 2


@pytest.mark.slow
def test_a_tiny_run_writes_every_figure_and_the_page_shows_it(tmp_path):
    out = tmp_path / "efficiency.json"
    # Times of a model this small are noise, so the checks are switched off (--tolerance 100):
    # this test covers the mechanics; the rules are tested above with synthetic figures.
    command = [sys.executable, str(REPO / "benchmarks/efficiency.py"), "--model", "vit_tiny_patch16_224",
               "--model-kwargs", json.dumps(TINY), "--batch-size", "2", "--rounds", "3", "--warmup", "1",
               "--threads", "1", "--tolerance", "100", "--methods", "lora", "linear-probing", "vpt-shallow",
               "--out", str(out)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    document = json.loads(out.read_text(encoding="utf-8"))
    assert (document["format"], document["format_version"]) == EFFICIENCY_FORMAT
    conditions = document["conditions"]
    assert conditions["model"] == "vit_tiny_patch16_224" and conditions["image_size"] == 32
    assert (conditions["batch_size"], conditions["rounds"], conditions["warmup"], conditions["threads"]) == (2, 3, 1, 1)
    for key in ("torch", "timm", "cpu", "date", "git_commit", "wall_time_s"):
        assert conditions[key] not in (None, ""), key
    rows = {r["method"]: r for r in document["methods"]}
    assert list(rows) == ["full-finetuning", "lora", "linear-probing", "vpt-shallow"]  # the control first
    assert len(document["baseline"]["peaks_mb"]) == 3  # start, middle, end
    for name, measured in rows.items():
        assert measured["trainable"] > 0 and measured["peak_mb"] > 0
        for key in ("full_train_s", "train_s", "plain_inference_s", "inference_s"):
            assert len(measured["rounds"][key]) == 3 and min(measured["rounds"][key]) > 0, (name, key)
        for key in efficiency.FIGURES[:3]:
            assert measured[key]["p25"] <= measured[key]["median"] <= measured[key]["p75"], (name, key)
    assert rows["vpt-shallow"]["merged_vs_plain"] is None and "merged_inference_s" not in rows["vpt-shallow"]["rounds"]
    assert len(rows["lora"]["rounds"]["merged_inference_s"]) == 3
    assert rows["linear-probing"]["trainable"] < rows["lora"]["trainable"]

    kb, _ = load(REPO)
    page = render_pages(kb, {"efficiency": document})["efficiency.md"]
    assert "Measurement pending" not in page and "vit_tiny_patch16_224" in page
    lora = rows["lora"]["train_vs_full"]
    assert f"{lora['median']:.2f} ({lora['p25']:.2f}–{lora['p75']:.2f})" in page
    assert "--methods lora linear-probing vpt-shallow" in page


def test_a_document_of_the_old_format_shows_no_figures():
    kb, _ = load(REPO)
    old = {"full_finetuning": {"train_step_s": 13.918, "peak_rss_mb": 2952.3}, "plain_inference_s": 3.122,
           "rows": [{"method": "vpt-shallow", "inference_vs_plain": 0.3612, "train_vs_full": 0.1734}]}
    page = render_pages(kb, {"efficiency": old})["efficiency.md"]
    assert "Measurement pending" in page
    assert not any(figure in page for figure in ("13.92", "0.36", "0.17", "3.12"))

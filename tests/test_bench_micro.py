"""VTAB-micro: its tasks are deterministic and well-formed, its backbone cache is keyed correctly."""

from __future__ import annotations

import importlib.util
import json
import shutil
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("sklearn")
pytest.importorskip("skimage")
pytest.importorskip("mlxtend")

from peft_atlas.bench import micro, micro_pretrain  # noqa: E402
from peft_atlas.bench.micro_data import NUM_TRAIN, NUM_VAL, _balanced_split  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = micro_pretrain.PretrainConfig(
    model_kwargs={"img_size": 32, "patch_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 1},
    steps=3, batch_size=8, warmup_steps=1, eval_size=16,
)


@lru_cache(maxsize=None)
def task(name: str, seed: int = 0, selection: str = "val200") -> micro.TaskData:
    return micro.load_micro_task(name, seed, selection=selection)


@pytest.mark.parametrize("name", list(micro.MICRO_TASKS))
def test_task_shapes_labels_and_balance(name: str) -> None:
    data = task(name)
    assert data.name == name and data.group == micro.MICRO_TASKS[name]
    expected = {"faces": (80, 20, 100)}.get(name, (NUM_TRAIN, NUM_VAL, None))
    for split, size in zip((data.train, data.val, data.test), expected):
        images, labels = split.images, split.labels
        assert images.dtype == torch.float32 and images.shape[1:] == (3, 32, 32)
        assert size is None or len(split) == size
        assert -1.0 <= float(images.min()) and float(images.max()) <= 1.0  # mean 0.5, std 0.5
        counts = torch.bincount(labels, minlength=data.num_classes)
        assert int(labels.min()) >= 0 and len(counts) == data.num_classes
        if size is not None:  # train800 and val200 are balanced to one example
            assert int(counts.max()) - int(counts.min()) <= 1, counts
        else:  # a test split of every example left follows the source's balance
            assert int(counts.max()) <= 1.2 * int(counts.min()), counts
    image, label = data.train[0]
    assert image.shape == (3, 32, 32) and isinstance(label, int)
    assert data.source and len(data.fingerprint) == 64


@pytest.mark.parametrize("name", ["digits", "faces", "textures", "dsprites_ori"])
def test_tasks_are_deterministic_per_seed(name: str) -> None:
    again = micro.load_micro_task(name, 0)
    assert again.fingerprint == task(name).fingerprint
    assert torch.equal(again.train.images, task(name).train.images)
    assert micro.load_micro_task(name, 1).fingerprint != task(name).fingerprint


def test_fingerprint_covers_selection_and_preprocessing() -> None:
    full = task("digits", 0, "last-epoch")
    assert len(full.train) == NUM_TRAIN + NUM_VAL and full.val is None
    assert full.fingerprint != task("digits").fingerprint
    assert micro.load_micro_task("digits", image_size=24).fingerprint != task("digits").fingerprint


def test_balanced_split_is_disjoint_and_balanced() -> None:
    labels = np.repeat(np.arange(3), [50, 40, 30])
    parts = _balanced_split(labels, {"train": 30, "val": 10, "test": None}, np.random.default_rng(0))
    assert sum(len(p) for p in parts.values()) == len(labels)
    assert len(np.unique(np.concatenate(list(parts.values())))) == len(labels)
    assert np.bincount(labels[parts["train"]]).tolist() == [10, 10, 10]
    with pytest.raises(ValueError, match="class 2 has"):
        _balanced_split(labels, {"train": 99}, np.random.default_rng(0))


def test_unknown_task_and_bad_selection_are_clear_errors() -> None:
    with pytest.raises(KeyError, match="valid tasks: digits"):
        micro.load_micro_task("cifar100")
    with pytest.raises(ValueError, match="selection"):
        micro.load_micro_task("faces", selection="best-test")


def test_cache_key_follows_the_config() -> None:
    key = micro_pretrain.checkpoint_key(micro.DEFAULT_PRETRAIN)
    assert key == micro_pretrain.checkpoint_key(micro_pretrain.PretrainConfig())
    assert key != micro_pretrain.checkpoint_key(replace(micro.DEFAULT_PRETRAIN, steps=1000))
    wider = {**micro.DEFAULT_PRETRAIN.model_kwargs, "embed_dim": 192}
    assert key != micro_pretrain.checkpoint_key(replace(micro.DEFAULT_PRETRAIN, model_kwargs=wider))
    with pytest.raises(ValueError, match="img_size"):
        micro_pretrain.PretrainConfig(image_size=24)


def test_pretraining_smoke_run_is_cached_and_loadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import timm

    monkeypatch.setenv("PEFT_ATLAS_CACHE", str(tmp_path))
    rng_before = torch.random.get_rng_state()
    path = micro.micro_backbone_checkpoint(TINY)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # callers' randomness untouched
    key = micro_pretrain.checkpoint_key(TINY)
    assert path == tmp_path / "micro" / f"{key}.safetensors"
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["config"]["steps"] == 3 and 0 <= sidecar["pretraining"]["eval_top1"] <= 100

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached checkpoint should be reused")

    monkeypatch.setattr(micro, "pretrain", no_training)
    assert micro.micro_backbone_checkpoint(TINY) == path

    from safetensors.torch import load_file

    state = load_file(str(path))
    assert not any(k.startswith("head.") for k in state)
    spec = micro.micro_backbone_config(TINY)
    model = timm.create_model(spec["model"], num_classes=5, **spec["model_kwargs"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert sorted(missing) == ["head.bias", "head.weight"] and not unexpected


def _no_training(*args: object, **kwargs: object) -> None:
    raise AssertionError("no pretraining expected here")


def test_a_committed_backbone_is_used_first_and_its_hash_verified(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PEFT_ATLAS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(micro.ANEW_VARIABLE, raising=False)
    committed = tmp_path / "committed"
    pretrained = micro.micro_backbone_weights(TINY, committed_dir=committed)
    assert pretrained.origin == "pretrained" and pretrained.sha256 == micro.file_sha256(pretrained.path)
    assert json.loads(pretrained.path.with_suffix(".json").read_text())["sha256"] == pretrained.sha256
    committed.mkdir()
    for suffix in (".safetensors", ".json"):
        shutil.copyfile(pretrained.path.with_suffix(suffix), committed / f"{pretrained.key}{suffix}")
    monkeypatch.setattr(micro, "pretrain", _no_training)

    weights = micro.micro_backbone_weights(TINY, committed_dir=committed)
    assert (weights.origin, weights.path, weights.sha256) == (
        "committed", committed / f"{pretrained.key}.safetensors", pretrained.sha256)
    assert micro.micro_backbone_weights(TINY, committed_dir=tmp_path / "none").origin == "cache"
    monkeypatch.setenv(micro.ANEW_VARIABLE, "1")  # skips the committed file
    assert micro.micro_backbone_weights(TINY, committed_dir=committed).origin == "cache"

    monkeypatch.delenv(micro.ANEW_VARIABLE)
    changed = bytearray(weights.path.read_bytes())
    changed[-1] ^= 1
    weights.path.write_bytes(bytes(changed))
    with pytest.raises(micro.CheckpointHashError, match=rf"{weights.path.name}: sha256 [0-9a-f]+ differs from 'sha256'"):
        micro.micro_backbone_weights(TINY, committed_dir=committed)
    (committed / f"{pretrained.key}.json").write_text("{}")
    with pytest.raises(micro.CheckpointHashError, match=rf"{pretrained.key}.json: cannot read field 'sha256'"):
        micro.micro_backbone_weights(TINY, committed_dir=committed)


def test_pretraining_anew_says_whether_it_equals_the_committed_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("PEFT_ATLAS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(micro.ANEW_VARIABLE, "1")
    committed = tmp_path / "committed"
    committed.mkdir()
    key = micro_pretrain.checkpoint_key(TINY)
    (committed / f"{key}.json").write_text(json.dumps({"sha256": "0" * 64}))
    weights = micro.micro_backbone_weights(TINY, quiet=False, committed_dir=committed)
    assert f"(sha256 {weights.sha256[:12]}) differs from the committed one (sha256 000000000000)" in capsys.readouterr().out
    (committed / f"{key}.json").write_text(json.dumps({"sha256": weights.sha256}))
    micro.micro_backbone_weights(TINY, quiet=False, committed_dir=committed)
    assert "equals the committed one" in capsys.readouterr().out


def test_the_benchmark_recipe_has_its_committed_backbone() -> None:
    key = micro_pretrain.checkpoint_key(micro.DEFAULT_PRETRAIN)
    weights = micro.committed_backbone(key)  # also verifies the hash
    assert weights is not None, (
        f"no committed backbone for recipe key {key} in {micro.COMMITTED_DIR}: the pretraining config or "
        "code changed; run `python -m peft_atlas.bench.micro --commit` and re-run VTAB-micro")
    record = json.loads(weights.path.with_suffix(".json").read_text())
    assert record["config"] == micro.DEFAULT_PRETRAIN.to_json() and record["key"] == key


def test_a_run_records_its_backbone_weights_by_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from peft_atlas.bench import results
    from peft_atlas.bench.config import BackboneConfig

    monkeypatch.setenv("PEFT_ATLAS_CACHE", str(tmp_path))
    weights = micro.micro_backbone_weights(TINY)
    by_path = results.backbone_weights(BackboneConfig(model=TINY.model, checkpoint=str(weights.path)))
    assert (by_path.origin, by_path.sha256, by_path.key) == ("file", weights.sha256, None)
    monkeypatch.setattr(results, "micro_backbone_weights", lambda: weights)
    micro_record = results.backbone_weights(BackboneConfig(model=TINY.model, checkpoint="micro"))
    assert (micro_record.checkpoint, micro_record.origin, micro_record.key) == ("micro", "pretrained", weights.key)
    assert results.backbone_weights(BackboneConfig(model=TINY.model)) is None


def test_pretraining_is_deterministic() -> None:
    first, _ = micro_pretrain.pretrain(replace(TINY, steps=2))
    second, _ = micro_pretrain.pretrain(replace(TINY, steps=2))
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_runner_trains_on_a_micro_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = pytest.importorskip("peft_atlas.bench.runner")
    from peft_atlas.bench.config import parse_config

    monkeypatch.setenv("PEFT_ATLAS_CACHE", str(tmp_path))
    checkpoint = micro.micro_backbone_checkpoint(TINY)
    config = parse_config({
        "method": {"name": "lora"},
        "backbone": {"model": TINY.model, "checkpoint": str(checkpoint), "model_kwargs": TINY.model_kwargs},
        "data": {"kind": "micro", "tasks": ["faces"]},
        "train": {"epochs": 1, "batch_size": 40, "device": "cpu"},
    }, "<test>")
    [result] = runner.run_experiment(config, quiet=True)
    assert result.task == "faces" and result.num_train == 80 and result.num_test == 100
    assert 0 <= result.top1 <= 100 and result.selected_epoch == 1


def _suite():
    spec = importlib.util.spec_from_file_location("vtab_micro", REPO / "benchmarks" / "vtab_micro.py")
    suite = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(suite)
    return suite


def test_learning_rates_are_chosen_on_val200_only() -> None:
    suite = _suite()
    assert suite.candidate_rates("lora") == [0.00333, 0.01, 0.03]
    assert suite.candidate_rates("full-finetuning") == [0.000333, 0.001, 0.003]

    def task(val: list[float], selected: int, top1: float) -> dict:
        return {"selected_epoch": selected, "top1": top1, "history": [{"val_top1": v} for v in val]}

    run = {"tasks": [task([50.0, 70.0, 60.0], 2, 10.0), task([80.0, 90.0], 2, 99.0)]}
    assert suite.val200_score(run) == 80.0  # (70 + 90) / 2: the selected epochs' val200, never top1
    assert suite.choose({0.003: 61.0, 0.01: 63.5, 0.03: 62.0}) == 0.01
    assert suite.choose({0.003: 63.5, 0.01: 63.5, 0.03: 62.0}) == 0.003  # a tie goes to the lower rate


def test_the_grid_grows_past_an_end_that_holds_the_best_rate() -> None:
    suite = _suite()
    assert suite.extension({0.003: 61.0, 0.01: 63.5, 0.03: 62.0}, added=0) is None  # interior optimum
    assert suite.extension({0.003: 61.0, 0.01: 62.0, 0.03: 63.0}, added=0) == 0.09
    assert suite.extension({0.003: 64.0, 0.01: 62.0, 0.03: 63.0}, added=0) == 0.001
    assert suite.extension({0.003: 61.0, 0.01: 62.0, 0.03: 63.0}, added=suite.MAX_EXTENSIONS) is None


def test_committed_micro_seeds_are_named_by_seed_and_have_no_gaps() -> None:
    """Each method's results files are `<method>-seed<N>.json` for N = 0, 1, ..., k-1 (the suite
    runs `SEEDS` in order, so a suite cut short leaves a prefix, never a gap)."""
    suite = _suite()
    seeds: dict[str, set[int]] = {}
    for path in sorted(suite.MEASURED.glob("*.json")):
        run = json.loads(path.read_text())
        assert path.name == f"{run['method']}-seed{run['seed']}.json", f"{path.name}: seed {run['seed']}"
        seeds.setdefault(run["method"], set()).add(run["seed"])
    assert seeds
    for method, found in seeds.items():
        assert found == set(suite.SEEDS[:len(found)]), f"{method}: seeds {sorted(found)}"


def test_committed_runs_use_the_learning_rate_chosen_for_them() -> None:
    suite = _suite()
    selected = suite.read_selected()
    for path in sorted(suite.MEASURED.glob("*.json")):
        run = json.loads(path.read_text())
        entry = selected.get(run["method"])
        if entry is None:
            continue
        assert entry["chosen"] in entry["candidates"] and set(entry["val200"]) == set(entry["candidates"])
        assert suite.choose(entry["val200"]) == entry["chosen"], run["method"]
        if entry["chosen"] in (min(entry["candidates"]), max(entry["candidates"])):  # the grid grew as far as allowed
            assert len(entry["candidates"]) == len(suite.LR_FACTORS) + suite.MAX_EXTENSIONS, run["method"]
        assert run["config"]["train"]["lr"] == entry["chosen"], f"{path.name} ran at another rate than {suite.SELECTED.name} chose"
        if run["seed"] == 0:  # the selection ran seed 0: its winner is that run
            assert round(suite.val200_score(run), 3) == entry["val200"][entry["chosen"]], path.name


def test_suite_configs_are_valid_and_match_the_benchmark() -> None:
    import reference_impls as ri
    from peft_atlas.bench.config import parse_config

    suite = _suite()
    listed = [m for methods in suite.LR_GROUPS.values() for m in methods]
    assert len(listed) == len(set(listed)) and set(listed) <= set(ri.list_methods(backbone="vit"))  # catches renames
    for method in ri.list_methods(backbone="vit"):
        config = parse_config(suite.experiment(method, list(micro.MICRO_TASKS)), method)
        assert config.backbone.checkpoint == "micro" and config.data.image_size == micro.MICRO_IMAGE_SIZE
    benchmarks = yaml.safe_load((REPO / "taxonomy" / "benchmarks.yaml").read_text())["benchmarks"]
    [entry] = [b for b in benchmarks if b["id"] == "vtab-micro"]
    groups = {t["id"]: g["id"] for g in entry["groups"] for t in g["tasks"]}
    assert groups == micro.MICRO_TASKS and list(groups) == list(micro.MICRO_TASKS)


def test_every_committed_micro_run_names_the_committed_backbone() -> None:
    weights = micro.committed_backbone(micro_pretrain.checkpoint_key(micro.DEFAULT_PRETRAIN))
    assert weights is not None
    runs = sorted((REPO / "benchmarks" / "measured" / "vtab-micro").glob("*.json"))
    assert runs
    for path in runs:
        recorded = json.loads(path.read_text()).get("backbone_weights")
        assert recorded is not None and recorded["sha256"] == weights.sha256, (
            f"{path.name} ran on another backbone than the committed one; re-run it with benchmarks/vtab_micro.py")

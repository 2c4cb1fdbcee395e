"""VLM-micro: its images, captions and task are deterministic and well-formed, its CLIP model is
pretrained once, cached, committed with its hash and verified, and its suite's configs fit."""

from __future__ import annotations

import importlib.util
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip", reason="VLM-micro needs open_clip (pip install open_clip_torch)")

import reference_impls as ri  # noqa: E402

from peft_atlas.bench import vlm_micro, vlm_micro_pretrain, vlm_micro_render  # noqa: E402
from peft_atlas.bench.micro import ANEW_VARIABLE, CheckpointHashError, file_sha256  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = vlm_micro_pretrain.VlmPretrainConfig(
    embed_dim=16,
    vision_cfg={"image_size": 32, "patch_size": 16, "width": 32, "layers": 1, "head_width": 16},
    text_cfg={"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    steps=2, batch_size=8, warmup_steps=1, eval_size=16,
)


@pytest.fixture(scope="module")
def task() -> vlm_micro.ClipTaskData:
    return vlm_micro.load_vlm_micro_task("shapes", 0)


def test_the_task_cuts_64_colour_shape_classes_into_base_and_novel_halves(task) -> None:
    names = vlm_micro.classnames()
    assert len(names) == 64 and names[0] == "red circle" and names[-1] == "pink heart"
    assert task.classnames == names[:32] and task.novel_classnames == names[32:]
    assert {name.split()[1] for name in task.classnames} == {"circle", "square", "triangle", "cross"}
    assert {name.split()[1] for name in task.novel_classnames} == {"diamond", "star", "ring", "heart"}
    assert (len(task.train), len(task.val), len(task.test), len(task.novel_test)) == (512, 128, 800, 800)
    for split, classes, per_class in ((task.train, 32, 16), (task.val, 32, 4), (task.novel_test, 32, 25)):
        assert torch.bincount(split.labels, minlength=classes).tolist() == [per_class] * classes
        assert split.images.shape[1:] == (3, 32, 32) and -1.0 <= float(split.images.min()) <= float(split.images.max()) <= 1.0
    assert task.shots == 16 and len(task.fingerprint) == 64 and "novel" in task.source


def test_the_seed_draws_the_shots_and_nothing_else(task) -> None:
    again, other = vlm_micro.load_vlm_micro_task("shapes", 0), vlm_micro.load_vlm_micro_task("shapes", 1)
    assert again.fingerprint == task.fingerprint and torch.equal(again.train.images, task.train.images)
    assert other.fingerprint != task.fingerprint and not torch.equal(other.train.images, task.train.images)
    for split in ("val", "test", "novel_test"):
        assert torch.equal(getattr(other, split).images, getattr(task, split).images), split
    with pytest.raises(KeyError, match="valid tasks: turned, shapes, turned-dev"):
        vlm_micro.load_vlm_micro_task("cifar")


def test_the_benchmark_task_turns_every_image_a_quarter_turn() -> None:
    """`turned` draws what a plain upright task would draw and turns it exactly (no resampling),
    anticlockwise: a triangle pointing up points left."""
    assert vlm_micro.BENCHMARK_TASKS == ("turned",)
    turned, upright = vlm_micro.VLM_MICRO_TASKS["turned"], vlm_micro.VlmMicroTask("upright", "plain")
    labels = torch.arange(0, 64, 9)
    images = vlm_micro._draw(turned, torch.Generator().manual_seed(3), labels)
    assert torch.equal(images, torch.rot90(vlm_micro._draw(upright, torch.Generator().manual_seed(3), labels), 1, (2, 3)))
    corner = torch.zeros(1, 1, 3, 3)
    corner[0, 0, 0, 2] = 1  # top right ...
    assert torch.rot90(corner, turned.quarter_turns, (2, 3))[0, 0, 0, 0] == 1  # ... goes to top left
    task = vlm_micro.load_vlm_micro_task("turned", 0)
    assert "quarter turn" in task.source and task.classnames == vlm_micro.classnames()[:32]


def test_images_and_captions_are_drawn_from_the_generator() -> None:
    def draw(seed: int, style: str) -> torch.Tensor:
        labels = torch.arange(8)
        return vlm_micro_render.draw(torch.Generator().manual_seed(seed), labels, labels, labels % 5, labels % 2, style)

    first = draw(0, "plain")
    assert first.dtype == torch.uint8 and first.shape == (8, 3, 32, 32)
    assert torch.equal(first, draw(0, "plain")) and not torch.equal(first, draw(1, "plain"))
    assert not torch.equal(first, draw(0, "textured"))
    with pytest.raises(ValueError, match="unknown style 'sketch'"):
        draw(0, "sketch")
    generator = torch.Generator().manual_seed(0)
    captions = {vlm_micro_render.caption(generator, 0, 0, 0, 1) for _ in range(200)}
    assert all("red circle" in c for c in captions) and len(captions) > 8
    assert "a photo of a large red circle at the top left." in captions and "red circle" in captions


def test_pretraining_is_cached_committed_and_verified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PEFT_ATLAS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(ANEW_VARIABLE, raising=False)
    committed = tmp_path / "committed"
    rng_before = torch.random.get_rng_state()
    weights = vlm_micro.vlm_micro_weights(TINY, committed_dir=committed)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # callers' randomness untouched
    assert weights.origin == "pretrained" and weights.path.parent == tmp_path / "cache" / "vlm-micro"
    record = json.loads(weights.path.with_suffix(".json").read_text())
    assert record["sha256"] == weights.sha256 == file_sha256(weights.path) and record["config"] == TINY.to_json()
    assert 0 <= record["pretraining"]["zero_shot_top1_plain"] <= 100 and record["versions"]["open_clip"]
    model = vlm_micro.build_vlm_micro(weights.path, TINY)
    ri.apply(model, "zero-shot-clip", classnames=["red circle", "blue star"])  # an open_clip CLIP the methods accept

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("no pretraining expected here")

    monkeypatch.setattr(vlm_micro, "pretrain", no_training)
    assert vlm_micro.vlm_micro_weights(TINY, committed_dir=committed).origin == "cache"
    committed.mkdir()
    for suffix in (".safetensors", ".json"):
        shutil.copyfile(weights.path.with_suffix(suffix), committed / f"{weights.key}{suffix}")
    assert vlm_micro.vlm_micro_weights(TINY, committed_dir=committed).origin == "committed"
    monkeypatch.setenv(ANEW_VARIABLE, "1")
    assert vlm_micro.vlm_micro_weights(TINY, committed_dir=committed).origin == "cache"
    monkeypatch.delenv(ANEW_VARIABLE)
    changed = bytearray((committed / f"{weights.key}.safetensors").read_bytes())
    changed[-1] ^= 1
    (committed / f"{weights.key}.safetensors").write_bytes(bytes(changed))
    with pytest.raises(CheckpointHashError, match="differs from 'sha256'"):
        vlm_micro.vlm_micro_weights(TINY, committed_dir=committed)


def test_pretraining_is_deterministic_and_keeps_only_the_rows_it_trained() -> None:
    first, _ = vlm_micro_pretrain.pretrain(TINY)
    second, metrics = vlm_micro_pretrain.pretrain(TINY)
    assert all(torch.equal(first[k], second[k]) for k in first)
    ids = first[vlm_micro_pretrain.EMBEDDING_IDS]
    assert metrics["tokens_seen"] == len(ids) < 100 and first[vlm_micro_pretrain.EMBEDDING_ROWS].shape == (len(ids), 32)
    dense = vlm_micro_pretrain.dense_state(first, 49408)["token_embedding.weight"]
    assert dense.shape == (49408, 32) and int((dense.abs().sum(1) > 0).sum()) == len(ids)


def test_the_key_follows_the_recipe_and_the_code() -> None:
    key = vlm_micro_pretrain.checkpoint_key(vlm_micro.DEFAULT_PRETRAIN)
    same = vlm_micro_pretrain.VlmPretrainConfig(text_cfg=dict(vlm_micro.RECIPES["text-6x128"].text_cfg))
    assert key == vlm_micro_pretrain.checkpoint_key(same)
    assert key != vlm_micro_pretrain.checkpoint_key(vlm_micro.RECIPES["text-3x64"])
    assert key != vlm_micro_pretrain.checkpoint_key(replace(vlm_micro.DEFAULT_PRETRAIN, steps=401))
    with pytest.raises(ValueError, match="image_size must be 32"):
        vlm_micro_pretrain.VlmPretrainConfig(vision_cfg={"image_size": 64, "patch_size": 8, "width": 8, "layers": 1})


@pytest.mark.parametrize("recipe", sorted(vlm_micro.RECIPES))
def test_every_recipe_has_its_committed_clip_model(recipe: str) -> None:
    config = vlm_micro.RECIPES[recipe]
    key = vlm_micro_pretrain.checkpoint_key(config)
    weights = vlm_micro.committed_backbone(key, vlm_micro.COMMITTED_DIR)  # also verifies the hash
    assert weights is not None, (
        f"no committed VLM-micro CLIP for recipe {recipe} (key {key}) in {vlm_micro.COMMITTED_DIR}: the pretraining "
        f"config, pretraining code or renderer changed; run `python -m peft_atlas.bench.vlm_micro --recipe {recipe} "
        "--commit` and re-run the suite")
    record = json.loads(weights.path.with_suffix(".json").read_text())
    assert record["config"] == config.to_json() and record["key"] == key


def _suite():
    spec = importlib.util.spec_from_file_location("vlm_micro_suite", REPO / "benchmarks" / "vlm_micro.py")
    suite = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(suite)
    return suite


def test_every_method_of_the_suite_fits_the_vlm_micro_clip(task) -> None:
    from peft_atlas.bench.config import parse_config

    suite = _suite()
    assert suite.methods() == ri.list_methods(backbone="clip")
    listed = [m for members in suite.LR_GROUPS.values() for m in members]
    assert len(listed) == len(set(listed)) and set(listed) == {m for m in suite.methods() if suite.trains(m)}
    model_cfg = vlm_micro.DEFAULT_PRETRAIN.model_cfg()
    for method in suite.methods():
        config = parse_config(suite.experiment(method), method)
        assert config.backbone.clip == "vlm-micro" and config.data.kind == "vlm-micro"
        import open_clip

        model = open_clip.CLIP(**model_cfg)  # random weights: only whether the options fit matters
        options = {**config.method.options, "classnames": task.classnames}
        if ri.get_spec(method).needs_data:
            ri.prepare(model, method, [(task.train.images[:4], task.train.labels[:4])], **options)
        else:
            ri.apply(model, method, **options)
        assert (ri.trainable_parameters(model) > 0) == suite.trains(method), method


def test_learning_rates_are_chosen_on_the_validation_split_only() -> None:
    suite = _suite()
    assert suite.candidate_rates("coop") == [0.01, 0.03, 0.09]

    def run(val: list[float], test: float) -> dict:
        return {"tasks": [{"top1": test, "history": [{"val_top1": v} for v in val], "novel": {"top1": test}}]}

    assert suite.val_score(run([50.0, 70.0, 60.0], 99.0)) == 60.0  # the last epoch's validation accuracy
    assert suite.choose({0.01: 60.0, 0.03: 62.0, 0.1: 62.0}) == 0.03  # a tie goes to the lower rate
    assert suite.extension({0.01: 60.0, 0.03: 61.0, 0.1: 62.0}, added=0) == 0.3
    assert suite.extension({0.01: 63.0, 0.03: 61.0, 0.1: 62.0}, added=1) == 0.00333
    assert suite.extension({0.01: 60.0, 0.03: 63.0, 0.1: 62.0}, added=0) is None


def test_committed_runs_have_every_seed_the_chosen_rate_and_the_committed_model() -> None:
    suite = _suite()
    runs = sorted(suite.MEASURED.glob("*.json"))
    if not runs:
        pytest.skip("no committed VLM-micro run yet")
    weights = vlm_micro.committed_backbone(vlm_micro_pretrain.checkpoint_key(vlm_micro.DEFAULT_PRETRAIN),
                                           vlm_micro.COMMITTED_DIR)
    selected = suite.read_selected()
    seeds: dict[str, set[int]] = {}
    for path in runs:
        run = json.loads(path.read_text())
        assert path.name == f"{run['method']}-seed{run['seed']}.json"
        assert run["backbone_weights"]["sha256"] == weights.sha256, f"{path.name}: another CLIP model"
        entry = selected.get(run["method"])
        if entry is not None:
            assert suite.choose(entry["val"]) == entry["chosen"] == run["config"]["train"]["lr"], path.name
        seeds.setdefault(run["method"], set()).add(run["seed"])
    assert set(seeds) == set(suite.methods()) and all(found >= set(suite.SEEDS) for found in seeds.values()), seeds


def test_a_method_runs_base_to_novel_on_vlm_micro() -> None:
    """Zero-shot CLIP on the committed model: the harness end to end, in seconds."""
    from peft_atlas.bench.config import parse_config
    from peft_atlas.bench.runner import run_experiment

    config = parse_config({"method": {"name": "zero-shot-clip"}, "backbone": {"clip": "vlm-micro"},
                           "data": {"kind": "vlm-micro"}, "train": {"device": "cpu", "eval_batch_size": 500}}, "zs")
    [result] = run_experiment(config, quiet=True)
    assert result.task == "turned" and result.num_test == 800 and result.novel.num_test == 800
    assert result.selected_epoch == 0 and result.novel.reinitialized == []
    chance = 100 / 32
    assert result.top1 > 2 * chance and result.novel.top1 > 2 * chance  # the pretrained model knows the words


def test_the_development_split_shares_no_class_half_image_or_seed_with_the_benchmark() -> None:
    """`turned-dev` cuts the shapes another way, draws its own images and runs its own seeds."""
    suite = _suite()
    dev, benchmark = vlm_micro.load_vlm_micro_task("turned-dev", 100), vlm_micro.load_vlm_micro_task("turned", 0)
    shapes = {name.split()[1] for name in dev.classnames}
    assert shapes == {"circle", "triangle", "diamond", "ring"}
    assert {name.split()[1] for name in dev.novel_classnames} == {"square", "cross", "star", "heart"}
    assert len(dev.classnames) == len(dev.novel_classnames) == 32 and not set(dev.classnames) & set(dev.novel_classnames)
    assert shapes != {name.split()[1] for name in benchmark.classnames}
    assert "the development split" in dev.source and "(circle, triangle, diamond, ring)" in dev.source
    assert not set(vlm_micro.DEV_SEEDS) & set(suite.SEEDS)
    # the same red circles (label 0 of both) are drawn from other streams
    assert not torch.equal(dev.test.images[:25], benchmark.test.images[:25])
    assert torch.equal(dev.test.labels, benchmark.test.labels)


def test_committed_benchmark_runs_were_made_on_the_images_the_task_draws_today() -> None:
    """Every committed run's dataset fingerprint is the one `turned` gives for its seed now."""
    suite = _suite()
    runs = [json.loads(path.read_text()) for path in sorted(suite.MEASURED.glob("*.json"))]
    if not runs:
        pytest.skip("no committed VLM-micro run yet")
    expected = {seed: vlm_micro.load_vlm_micro_task("turned", seed).fingerprint for seed in {r["seed"] for r in runs}}
    for run in runs:
        assert run["tasks"][0]["dataset_fingerprint"] == expected[run["seed"]], (run["method"], run["seed"])


def test_design_trials_change_only_what_they_say_on_the_development_split() -> None:
    suite = _suite()
    assert "suite" in suite.DEV_TRIALS and "1 point" in suite.DEV_RULE
    for trial, changes in suite.DEV_TRIALS.items():
        assert changes["recipe"] in vlm_micro.RECIPES, trial
        for method in changes.get("methods", suite.methods()):
            data, benchmark = suite.dev_experiment(method, trial), suite.experiment(method)
            assert data["data"]["tasks"] == ["turned-dev"] and data["backbone"]["recipe"] == changes["recipe"]
            expected_train = {**benchmark["train"], "lr": suite.RATES_TEXT_3X64.get(method, suite.DEFAULT_LR),
                              **changes.get("train", {})}
            assert data["train"] == expected_train, (trial, method)
            assert data["method"]["options"] == {**benchmark["method"]["options"], **changes.get("options", {})}
    own = suite.dev_experiment("coop", "coop-own-schedule")["train"]
    assert (own["epochs"], own["batch_size"]) == (200, 32)


def test_the_config_schema_knows_every_recipe() -> None:
    import typing

    from peft_atlas.bench.config import VlmMicroRecipe

    assert set(typing.get_args(VlmMicroRecipe)) == set(vlm_micro.RECIPES)
    assert vlm_micro.DEFAULT_PRETRAIN == vlm_micro.RECIPES[vlm_micro.DEFAULT_RECIPE]
    with pytest.raises(KeyError, match="valid recipes: text-3x64, text-6x128"):
        vlm_micro.recipe_config("text-1x1")


def test_committed_trial_runs_are_their_configs_on_their_recipes_model() -> None:
    suite = _suite()
    runs = sorted(suite.TRIALS.glob("*/*.json"))
    if not runs:
        pytest.skip("no committed design trial yet")
    sha = {name: vlm_micro.committed_backbone(vlm_micro_pretrain.checkpoint_key(config), vlm_micro.COMMITTED_DIR)
           for name, config in vlm_micro.RECIPES.items()}
    for path in runs:
        run = json.loads(path.read_text())
        trial = path.parent.name
        assert path.name == f"{run['method']}-seed{run['seed']}.json" and run["seed"] in vlm_micro.DEV_SEEDS
        expected = suite.dev_experiment(run["method"], trial)
        assert run["config"]["data"]["tasks"] == ["turned-dev"], path
        assert run["config"]["backbone"]["recipe"] == expected["backbone"]["recipe"], path
        assert {**run["config"]["train"], **expected["train"]} == run["config"]["train"], path  # the rest: defaults
        assert run["config"]["method"]["options"] == expected["method"]["options"], path
        assert run["backbone_weights"]["sha256"] == sha[expected["backbone"]["recipe"]].sha256, path


def test_the_drift_of_an_untrained_coop_prompt_is_none() -> None:
    """CoOp's context starts as the words "a photo of a": before training, every class feature is the
    hand-written prompt's (cosine 1 up to float32 rounding of the normalization) and both
    classifiers agree on every test image, base and novel."""
    spec = importlib.util.spec_from_file_location("vlm_micro_drift", REPO / "benchmarks" / "vlm_micro_drift.py")
    drift = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(drift)
    result = drift.drift("coop", 100, "suite", train=False)
    for half in ("base", "novel"):
        assert result[half]["cos_min"] == pytest.approx(1.0, abs=1e-5), half
        assert result[half]["top1_learned"] == result[half]["top1_hand"], half

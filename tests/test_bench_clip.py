"""The CLIP protocols of the harness: configs, image folders, K shots, base and novel classes,
the run and its measured-results file. Small generated PNG folders and the tiny random CLIP;
nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip", reason="the CLIP protocols need open_clip (pip install open_clip_torch)")

import reference_impls as ri  # noqa: E402
from bench_support import CLIP_CLASSES, CLIP_SPLITS, TINY_CLIP, clip_config, make_clip_folder, write_config  # noqa: E402

from peft_atlas.bench import clip_data  # noqa: E402
from peft_atlas.bench.clip_runner import evaluate_clip, transfer_to_classes  # noqa: E402
from peft_atlas.bench.config import CLIP_MEAN, ClipBackboneConfig, ConfigError, load_config, parse_config  # noqa: E402
from peft_atlas.bench.runner import resolve_config, run_experiment  # noqa: E402
from peft_atlas.bench.vtab import DataError  # noqa: E402
from peft_atlas.cli import main  # noqa: E402
from peft_atlas.measured import read_measured_run  # noqa: E402


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip_folder(tmp_path_factory.mktemp("clip"))


def _error(tmp_path: Path, config: dict) -> ConfigError:
    path = write_config(tmp_path / "bad.yaml", config)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value


# ---------------------------------------------------------------- configs


def test_a_clip_config_takes_the_clip_defaults(data_root: Path) -> None:
    config = parse_config(clip_config(data_root), "test")
    assert isinstance(config.backbone, ClipBackboneConfig) and config.backbone.clip == "custom"
    assert config.train.selection == "last-epoch" and config.data.mean == CLIP_MEAN
    resolved = resolve_config(parse_config(clip_config(data_root, data={"kind": "clip-base-to-novel"}), "test"))
    assert resolved.data.shots == 16 and resolved.data.tasks == list(clip_data.BASE_TO_NOVEL_TASKS)
    micro = resolve_config(parse_config({**clip_config(None, kind="vlm-micro"), "data": {"kind": "vlm-micro"}}, "t"))
    assert (micro.data.image_size, micro.data.mean, micro.data.tasks) == (32, [0.5, 0.5, 0.5], ["turned"])


@pytest.mark.parametrize("case, field, expected", [
    ("vit-method", "method.name", "method 'lora' acts on vit models; data.kind 'clip-base-to-novel' trains open_clip"),
    ("timm-backbone", "backbone", "needs a CLIP backbone: clip: <open_clip model name>"),
    ("clip-backbone-on-vtab", "backbone.clip", "trains a timm vision transformer: give backbone.model"),
    ("val200", "train.selection", "report the model after the last epoch: expected 'last-epoch', got 'val200'"),
    ("classnames", "method.options", "classnames are not an option here"),
    ("unknown-clip", "backbone.clip", "unknown open_clip model 'ViT-Q-99'"),
    ("unknown-tag", "backbone", "open_clip has no pretrained tag 'nowhere' for ViT-B-16 (valid tags: openai"),
    ("custom-without-cfg", "backbone", "clip: custom needs model_cfg"),
    ("shots-on-vtab", "data.shots", "shots are read by the CLIP protocols only"),
    ("bad-option", "method.options", "n_ctxx"),
    ("clip-field", "backbone.pretrain", "unknown field 'pretrain' (expected one of: clip, pretrained, checkpoint, model_cfg, recipe)"),
    ("timm-field", "backbone.pretrain", "unknown field 'pretrain' (expected one of: model, pretrained, checkpoint"),
    ("recipe-off-micro", "backbone", "recipe is only read with clip: vlm-micro (clip is 'ViT-B-16')"),
    ("unknown-recipe", "backbone.recipe", "Input should be 'text-3x64' or 'text-6x128'"),
])
def test_a_config_that_does_not_fit_its_kind_names_file_line_and_field(
        tmp_path: Path, case: str, field: str, expected: str) -> None:
    config = clip_config(None)
    if case == "vit-method":
        config["method"] = {"name": "lora"}
    elif case == "timm-backbone":
        config["backbone"] = {"model": "vit_tiny_patch16_224"}
    elif case == "clip-backbone-on-vtab":
        config["method"] = {"name": "lora"}
        config["data"] = {"kind": "vtab-1k", "tasks": ["cifar100"]}
    elif case == "val200":
        config["train"]["selection"] = "val200"
    elif case == "classnames":
        config["method"]["options"] = {"classnames": ["a", "b"]}
    elif case == "unknown-clip":
        config["backbone"] = {"clip": "ViT-Q-99"}
    elif case == "unknown-tag":
        config["backbone"] = {"clip": "ViT-B-16", "pretrained": "nowhere"}
    elif case == "custom-without-cfg":
        config["backbone"] = {"clip": "custom"}
    elif case == "shots-on-vtab":
        config["method"] = {"name": "lora"}
        config["backbone"] = {"model": "vit_tiny_patch16_224"}
        config["data"] = {"kind": "vtab-1k", "tasks": ["cifar100"], "shots": 4}
    elif case == "bad-option":
        config["method"]["options"] = {"n_ctxx": 3}
    elif case == "clip-field":
        config["backbone"] = {"clip": "ViT-B-16", "pretrain": "openai"}
    elif case == "recipe-off-micro":
        config["backbone"] = {"clip": "ViT-B-16", "recipe": "text-3x64"}
    elif case == "unknown-recipe":
        config["backbone"] = {"clip": "vlm-micro", "recipe": "text-9x9"}
    elif case == "timm-field":  # the timm backbone of a ViT run still lists its own fields
        config["method"] = {"name": "lora"}
        config["backbone"] = {"model": "vit_tiny_patch16_224", "pretrain": True}
        config["data"] = {"kind": "vtab-1k", "tasks": ["cifar100"]}
    error = _error(tmp_path, config)
    [problem] = [p for p in error.problems if p.field == field]
    assert problem.file.endswith("bad.yaml") and problem.line > 0 and expected in problem.message, str(error)


def test_every_problem_of_a_clip_config_is_reported_at_once(tmp_path: Path) -> None:
    config = clip_config(None, method="lora")
    config["train"]["selection"] = "val200"
    config["train"]["epochs"] = "2"
    fields = {p.field for p in _error(tmp_path, config).problems}
    assert {"method.name", "train.selection", "train.epochs"} <= fields


# ---------------------------------------------------------------- data


@pytest.mark.parametrize("layout", ["split files", "class folders"])
def test_both_layouts_give_the_same_task(tmp_path: Path, layout: str) -> None:
    root = make_clip_folder(tmp_path, layout=layout)
    task = clip_data.load_clip_task(root, "pets", protocol="few-shot", shots=2, seed=0, image_size=32)
    assert task.classnames == list(CLIP_CLASSES) and task.novel_classnames is None
    assert len(task.train) == 2 * len(CLIP_CLASSES) and len(task.val) == 2 * len(CLIP_CLASSES)
    assert len(task.test) == CLIP_SPLITS["test"] * len(CLIP_CLASSES)
    image, label = task.train[0]
    assert image.shape == (3, 32, 32) and label == 0
    labels = sorted(task.test[i][1] for i in range(len(task.test)))
    assert labels == sorted(list(range(len(CLIP_CLASSES))) * CLIP_SPLITS["test"])


def test_base_to_novel_cuts_the_classes_in_label_order(data_root: Path) -> None:
    task = clip_data.load_clip_task(data_root, "pets", protocol="base-to-novel", shots=2, seed=0, image_size=32)
    # 5 classes: ceil(5 / 2) = 3 base classes, 2 novel ones renumbered from 0
    assert task.classnames == list(CLIP_CLASSES[:3]) and task.novel_classnames == list(CLIP_CLASSES[3:])
    assert {task.train[i][1] for i in range(len(task.train))} == {0, 1, 2}
    assert {task.val[i][1] for i in range(len(task.val))} == {0, 1, 2}
    assert len(task.test) == 3 * CLIP_SPLITS["test"] and len(task.novel_test) == 2 * CLIP_SPLITS["test"]
    assert {task.novel_test[i][1] for i in range(len(task.novel_test))} == {0, 1}
    # the novel test images are those of the last two classes
    few_shot = clip_data.load_clip_task(data_root, "pets", protocol="few-shot", shots=2, seed=0, image_size=32)
    novel_paths = [p for p, y in few_shot.test.entries if y >= 3]
    assert [p for p, _ in task.novel_test.entries] == novel_paths
    assert clip_data.base_novel_split(4) == (range(2), range(2, 4))


def test_shots_are_drawn_per_class_with_the_seed(data_root: Path) -> None:
    def load(shots: int, seed: int) -> clip_data.ClipTaskData:
        return clip_data.load_clip_task(data_root, "pets", protocol="few-shot", shots=shots, seed=seed, image_size=32)

    one, again, other = load(2, 0), load(2, 0), load(2, 1)
    assert one.train.entries == again.train.entries and one.fingerprint == again.fingerprint
    assert one.fingerprint != other.fingerprint
    many = load(5, 0)  # more shots than the 3 training images of a class: drawn with replacement
    counts = [sum(1 for _, y in many.train.entries if y == c) for c in range(len(CLIP_CLASSES))]
    assert counts == [5] * len(CLIP_CLASSES) and len(many.train.entries) > len(set(many.train.entries))
    assert all(path.startswith(f"images/train_{label}_") for path, label in many.train.entries)
    assert len(many.val) == 4 * len(CLIP_CLASSES)  # min(5, 4) = 4 drawn from the 2 images of each class
    assert clip_data.val_shots(16) == 4 and clip_data.val_shots(1) == 1


@pytest.mark.parametrize("case, expected", [
    ("no-names", "classnames.txt: not found"),
    ("label-out-of-range", "test.txt: label 9 of images/x.png has no class name"),
    ("duplicate-name", "class name 'cat' is given twice"),
    ("no-train-image", "class 4 ('tulip') has no train image"),
    ("no-layout", "expected split files (train.txt"),
])
def test_a_broken_data_folder_is_a_clear_error(tmp_path: Path, case: str, expected: str) -> None:
    root = make_clip_folder(tmp_path)
    directory = root / "pets"
    if case == "no-names":
        (directory / "classnames.txt").unlink()
    elif case == "label-out-of-range":
        with (directory / "test.txt").open("a") as handle:
            handle.write("images/x.png 9\n")
    elif case == "duplicate-name":
        (directory / "classnames.txt").write_text("cat\ncat\nsea turtle\nfire truck\ntulip\n")
    elif case == "no-train-image":
        lines = (directory / "train.txt").read_text().splitlines()
        (directory / "train.txt").write_text("\n".join(line for line in lines if not line.endswith(" 4")) + "\n")
    elif case == "no-layout":
        (directory / "train.txt").unlink()
    with pytest.raises(DataError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        clip_data.load_clip_task(root, "pets", protocol="base-to-novel", shots=2, seed=0, image_size=32)


def test_a_class_folder_without_a_name_is_a_clear_error(tmp_path: Path) -> None:
    root = make_clip_folder(tmp_path, layout="class folders")
    names = (root / "pets" / "classnames.txt").read_text().splitlines()
    (root / "pets" / "classnames.txt").write_text("\n".join(names[:-1]) + "\n")
    with pytest.raises(DataError, match=r"classnames.txt: no line for the class folder\(s\) c4_tulip"):
        clip_data.load_clip_task(root, "pets", protocol="few-shot", shots=1, seed=0, image_size=32)


def _fake_coop(root: Path) -> None:
    """CoOp's layout for three data sets: a split file (OxfordPets), FGVCAircraft's lists, ImageNet's folders."""
    from bench_support import _clip_image

    pets = root / "oxford_pets"
    split = {role: [[f"{name}_{i}.jpg", label, name] for label, name in enumerate(["abyssinian", "great_pyrenees",
                                                                                   "pug"]) for i in range(2)]
             for role in ("train", "val", "test")}
    for items in split.values():
        for path, label, _ in items:
            _clip_image(pets / "images" / path, label, 0)
    (pets / "split_zhou_OxfordPets.json").write_text(json.dumps(split))
    fgvc = root / "fgvc_aircraft"
    (fgvc / "images").mkdir(parents=True)
    (fgvc / "variants.txt").write_text("707-320\nA300B4\n")
    for role in ("train", "val", "test"):
        lines = []
        for label, name in enumerate(["707-320", "A300B4"]):
            _clip_image(fgvc / "images" / f"{role}{label}.jpg", label, 1)
            lines.append(f"{role}{label} {name}")
        (fgvc / f"images_variant_{role}.txt").write_text("\n".join(lines) + "\n")
    imagenet = root / "imagenet"
    for sub in ("train", "val"):
        for label, folder in enumerate(["n01", "n02"]):
            _clip_image(imagenet / "images" / sub / folder / f"{sub}.JPEG", label, 2)
    (imagenet / "classnames.txt").write_text("n02 goldfish\nn01 great white shark\n")


def test_data_sets_prepared_as_in_coop_are_converted(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _fake_coop(tmp_path / "coop")
    out = tmp_path / "atlas"
    status = clip_data.main(["from-coop", "--coop-root", str(tmp_path / "coop"), "--out", str(out),
                             "--tasks", "oxford_pets", "fgvc_aircraft", "imagenet", "dtd"])
    assert status == 2 and "dtd" in capsys.readouterr().err  # dtd was not prepared
    pets = clip_data.load_clip_task(out, "oxford_pets", protocol="base-to-novel", shots=1, seed=0, image_size=32)
    assert pets.classnames == ["abyssinian", "great pyrenees"] and pets.novel_classnames == ["pug"]
    fgvc = clip_data.load_clip_task(out, "fgvc_aircraft", protocol="few-shot", shots=1, seed=0, image_size=32)
    assert fgvc.classnames == ["707-320", "A300B4"] and len(fgvc.test) == 2
    imagenet = clip_data.load_clip_task(out, "imagenet", protocol="few-shot", shots=1, seed=0, image_size=32)
    # labels follow the sorted class folders, as CoOp's ImageNet loader; its val images are the test split
    assert imagenet.classnames == ["great white shark", "goldfish"] and imagenet.val is None
    with pytest.raises(DataError, match="exists; pass --force"):
        clip_data.convert_from_coop(tmp_path / "coop", out, "oxford_pets")
    clip_data.convert_from_coop(tmp_path / "coop", out, "oxford_pets", force=True)


# ---------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def coop_run(data_root: Path) -> list:
    return run_experiment(parse_config(clip_config(data_root), "test"), quiet=True)


def test_base_to_novel_trains_on_base_and_tests_base_and_novel(coop_run: list) -> None:
    [result] = coop_run
    assert result.num_classes == 3 and result.shots == 2 and result.num_train == 6 and result.num_val == 6
    assert result.num_test == 3 * CLIP_SPLITS["test"] and result.selection == "last-epoch"
    assert result.selected_epoch == 2 and [e.epoch for e in result.history] == [1, 2]
    assert all(e.val_top1 is not None and e.train_loss > 0 for e in result.history)
    assert result.trainable_parameters == 2 * TINY_CLIP["text_cfg"]["width"]  # CoOp's context, M = 2
    novel = result.novel
    assert novel.num_classes == 2 and novel.num_test == 2 * CLIP_SPLITS["test"] and novel.reinitialized == []
    assert novel.top1 == 100 * novel.test_correct / novel.num_test


def test_the_same_seed_gives_the_same_run(data_root: Path, coop_run: list) -> None:
    [again] = run_experiment(parse_config(clip_config(data_root), "test"), quiet=True)
    [first] = coop_run
    assert again.history == first.history and again.novel == first.novel and again.top1 == first.top1
    [other] = run_experiment(parse_config({**clip_config(data_root), "seed": 1}, "test"), quiet=True)
    assert other.dataset_fingerprint != first.dataset_fingerprint and other.history != first.history


def test_novel_classes_get_every_trained_tensor_but_the_class_specific_ones(data_root: Path) -> None:
    from reference_impls.tests.clip_cases import build_clip

    model = build_clip()
    ri.apply(model, "taskres", classnames=["cat", "dog"])
    with torch.no_grad():
        model.peft_classifier.peft_residual.normal_()
    novel, reinitialized = transfer_to_classes(model, build_clip, ["fish", "bird"])
    assert reinitialized == ["peft_classifier.peft_residual"]  # as many classes: found with one class more
    assert torch.equal(novel.peft_classifier.peft_residual, torch.zeros(2, 32))

    coop = build_clip()
    ri.apply(coop, "coop", classnames=["cat", "dog", "cow"], n_ctx=2)
    with torch.no_grad():
        coop.peft_classifier.peft_ctx.normal_()
    moved, reinitialized = transfer_to_classes(coop, build_clip, ["fish"])
    assert reinitialized == [] and torch.equal(moved.peft_classifier.peft_ctx, coop.peft_classifier.peft_ctx)
    images = torch.randn(4, 3, 32, 32)
    assert ri.clip_logits(moved, images).shape == (4, 1)


@pytest.mark.parametrize("method, trained, reinitialized", [
    ("zero-shot-clip", False, []),
    ("tip-adapter", False, ["peft_classifier.cache_values"]),
    ("taskres", True, ["peft_classifier.peft_residual"]),
])
def test_every_kind_of_method_runs(data_root: Path, method: str, trained: bool, reinitialized: list) -> None:
    [result] = run_experiment(parse_config(clip_config(data_root, method=method, options={}), method), quiet=True)
    assert (result.selected_epoch, len(result.history)) == ((2, 2) if trained else (0, 0))
    assert result.novel.reinitialized == reinitialized
    assert (result.prepare is not None) == (method == "tip-adapter")
    if method == "tip-adapter":
        assert result.prepare.fields == ["cache_size"] and result.prepare.batches == 2  # 6 images, batches of 4


def test_zero_shot_novel_accuracy_is_zero_shot_clip_on_the_novel_names(data_root: Path) -> None:
    """Nothing trained, nothing carried: the novel number is CLIP's own on the novel class names."""
    from peft_atlas.bench.clip_backbone import build_clip as build
    from peft_atlas.bench.distributed import seed_everything

    config = parse_config(clip_config(data_root, method="zero-shot-clip", options={}), "zs")
    [result] = run_experiment(config, quiet=True)
    task = clip_data.load_clip_task(data_root, "pets", protocol="base-to-novel", shots=2, seed=0, image_size=32)
    seed_everything(config.seed)  # the tiny CLIP's random weights, as the run drew them
    model = ri.apply(build(config.backbone), "zero-shot-clip", classnames=task.novel_classnames)
    assert evaluate_clip(model, task.novel_test, 8, torch.device("cpu")) == (result.novel.test_correct,
                                                                             result.novel.num_test)


def test_few_shot_tests_every_class(data_root: Path) -> None:
    config = parse_config(clip_config(data_root, kind="clip-few-shot"), "few-shot")
    [result] = run_experiment(config, quiet=True)
    assert result.novel is None and result.num_classes == len(CLIP_CLASSES)
    assert result.num_train == 2 * len(CLIP_CLASSES) and result.num_test == CLIP_SPLITS["test"] * len(CLIP_CLASSES)


def test_the_command_writes_a_measured_run_with_base_novel_and_hm(tmp_path: Path, data_root: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    path = write_config(tmp_path / "benchmarks" / "experiments" / "coop" / "tiny.yaml", clip_config(None))
    assert main(["bench", str(path), "--data-root", str(data_root), "--seed", "2", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "base" in printed and "novel" in printed and "HM" in printed
    out = tmp_path / "benchmarks" / "measured" / "coop" / "tiny-seed2.json"
    run = read_measured_run(out)  # the format the validator and the site read
    doc = json.loads(out.read_text())
    metrics, task = run.metrics, run.tasks[0]
    assert metrics.base_novel["pets"].base == task.top1 and metrics.base_novel["pets"].novel == task.novel.top1
    b, n = task.top1, task.novel.top1
    assert metrics.base_novel["pets"].hm == pytest.approx(2 * b * n / (b + n) if b + n else 0.0)
    assert metrics.base_novel_mean.hm == pytest.approx(metrics.base_novel["pets"].hm)
    assert doc["config"]["data"]["shots"] == 2 and doc["config"]["backbone"]["clip"] == "custom"
    assert doc["protocol"]["data"]["protocol"] == "base-to-novel" and "novel_evaluation" in doc["protocol"]
    assert doc["versions"]["open_clip"] and doc["seed"] == 2 and len(task.dataset_fingerprint) == 64
    assert doc["trainable_parameters"] == {"pets": task.trainable_parameters} and doc["wall_time_s"] > 0
    assert doc["hardware"]["cpu_cores"] >= 1 and set(doc["git"]) == {"commit", "dirty"}
    assert doc["backbone_weights"] is None  # random custom weights: no file


def test_options_the_model_cannot_take_are_an_input_error(tmp_path: Path, data_root: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    config = clip_config(data_root, options={"n_ctx": 20})  # the tiny CLIP has 16 token positions
    path = write_config(tmp_path / "long.yaml", config)
    assert main(["bench", str(path), "--out", str(tmp_path / "out.json"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: method.options {'n_ctx': 20} do not fit the CLIP backbone") and "Traceback" not in err
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize("method", ["coop", "cocoop"])
def test_the_base_to_novel_configs_of_the_11_data_sets_are_valid(method: str) -> None:
    config = load_config(Path(__file__).resolve().parents[1] / "benchmarks" / "experiments" / method / "base-to-novel.yaml")
    assert (config.method.name, config.data.kind, config.backbone.clip, config.backbone.pretrained) == (
        method, "clip-base-to-novel", "ViT-B-16", "openai")
    resolved = resolve_config(config)
    assert resolved.data.tasks == list(clip_data.BASE_TO_NOVEL_TASKS) and resolved.data.shots == 16
    assert resolved.train.selection == "last-epoch" and resolved.data.mean == CLIP_MEAN

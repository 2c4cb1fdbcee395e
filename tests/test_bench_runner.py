"""The training loop: schedule, data order, selection rules, determinism, backbone loading, and
which errors the command reports as input errors."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from bench_support import TINY_VIT, make_vtab_folder, tiny_config, write_config  # noqa: E402

from peft_atlas.bench import runner, training  # noqa: E402
from peft_atlas.bench.backbone import BackboneError, build_backbone  # noqa: E402
from peft_atlas.bench.config import BackboneConfig, parse_config  # noqa: E402
from peft_atlas.bench.runner import run_experiment  # noqa: E402
from peft_atlas.bench.training import global_batches, local_share, lr_factor  # noqa: E402
from peft_atlas.bench.vtab import load_vtab_task  # noqa: E402
from peft_atlas.cli import main  # noqa: E402

EXPERIMENTS = Path(__file__).resolve().parents[1] / "benchmarks" / "experiments"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_vtab_folder(tmp_path_factory.mktemp("vtab"))


def test_lr_schedule_warms_up_then_follows_a_cosine() -> None:
    factor = lambda step, schedule="cosine": lr_factor(  # noqa: E731
        step, total_steps=10, warmup_steps=2, schedule=schedule, min_ratio=0.1
    )
    assert [factor(0), factor(1)] == [0.5, 1.0]
    assert factor(2) == pytest.approx(1.0) and factor(9) == pytest.approx(0.1)
    assert factor(2) > factor(5) > factor(8)
    assert factor(7, "constant") == 1.0


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_every_process_count_sees_the_same_global_batches(world_size: int) -> None:
    batches = global_batches(torch.randperm(9, generator=torch.Generator().manual_seed(0)), 4)
    assert [len(b) for b in batches] == [4, 4, 1]  # nothing dropped, nothing repeated
    for batch in batches:
        shares = [local_share(batch, rank, world_size) for rank in range(world_size)]
        assert sorted(i for share in shares for i in share) == sorted(batch)


def test_val200_measures_the_test_split_once_at_the_best_val_epoch(
    data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = parse_config(tiny_config(data_root, train={**tiny_config(None)["train"], "epochs": 3}), "test")
    evaluated = []
    original = training.evaluate
    monkeypatch.setattr(training, "evaluate", lambda model, dataset, *a: evaluated.append(dataset) or original(model, dataset, *a))
    (result,) = run_experiment(config, quiet=True)
    assert [d.list_file.name for d in evaluated] == ["val200.txt"] * 3 + ["test.txt"]  # test once, at the end
    vals = [e.val_top1 for e in result.history]
    assert result.selected_epoch == vals.index(max(vals)) + 1  # earliest best
    assert result.top1 == 100 * result.test_correct / result.num_test
    assert (result.num_train, result.num_val, result.num_test) == (9, 5, 7)


def test_last_epoch_trains_on_train800val200_and_reports_the_last_epoch(data_root: Path) -> None:
    config = tiny_config(data_root)
    config["train"]["selection"] = "last-epoch"
    (result,) = run_experiment(parse_config(config, "test"), quiet=True)
    assert result.selected_epoch == 2 and result.num_train == 14 and result.num_val == 0
    assert all(e.val_top1 is None for e in result.history)


def test_last_epoch_concatenates_a_given_val_split(data_root: Path) -> None:
    """A source that does not know the rule (VTAB-micro) returns train800 and val200 separately."""
    config = tiny_config(data_root)
    config["train"]["selection"] = "last-epoch"
    task = load_vtab_task(data_root, "cifar100", selection="val200", image_size=32)
    result = runner.run_task(parse_config(config, "test"), task, quiet=True)
    assert (result.num_train, result.num_val, result.selected_epoch) == (14, 0, 2)


def test_same_config_and_seed_give_identical_results(data_root: Path) -> None:
    config = parse_config(tiny_config(data_root), "test")
    first, second = run_experiment(config, quiet=True), run_experiment(config, quiet=True)
    assert first[0].history == second[0].history  # losses too, bit for bit
    assert (first[0].top1, first[0].selected_epoch) == (second[0].top1, second[0].selected_epoch)
    other_seed = run_experiment(parse_config({**tiny_config(data_root), "seed": 1}, "test"), quiet=True)
    assert other_seed[0].history != first[0].history


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_checkpoint_loads_every_backbone_weight_and_a_new_head(tmp_path: Path, suffix: str) -> None:
    import timm

    source = timm.create_model("vit_tiny_patch16_224", num_classes=10, **TINY_VIT)
    path = tmp_path / f"backbone{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(source.state_dict(), str(path))
    else:
        torch.save({"state_dict": source.state_dict()}, path)
    config = BackboneConfig(model="vit_tiny_patch16_224", checkpoint=str(path), model_kwargs=TINY_VIT)
    model = build_backbone(config, num_classes=3)
    loaded, original = model.state_dict(), source.state_dict()
    assert model.head.out_features == 3
    assert all(torch.equal(loaded[k], v) for k, v in original.items() if not k.startswith("head."))


def test_checkpoint_that_does_not_fit_is_a_clear_error(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"blocks.0.norm1.weight": torch.ones(32)}, str(path))
    config = BackboneConfig(model="vit_tiny_patch16_224", checkpoint=str(path), model_kwargs=TINY_VIT)
    with pytest.raises(BackboneError, match=r"other\.safetensors: checkpoint does not fit .* missing \['cls_token'"):
        build_backbone(config, num_classes=3)
    missing = BackboneConfig(model="vit_tiny_patch16_224", checkpoint=str(tmp_path / "absent.pt"))
    with pytest.raises(BackboneError, match=r"absent\.pt: backbone checkpoint not found"):
        build_backbone(missing, num_classes=3)
    wrong_kwargs = BackboneConfig(model="vit_tiny_patch16_224", model_kwargs={**TINY_VIT, "depht": 2})
    with pytest.raises(BackboneError, match=r"cannot create vit_tiny_patch16_224 .*depht"):
        build_backbone(wrong_kwargs, num_classes=3)


@pytest.mark.parametrize("method", sorted(p.parent.name for p in EXPERIMENTS.glob("*/default.yaml")))
def test_every_default_config_runs_on_the_tiny_backbone(method: str, data_root: Path) -> None:
    """The method section of each default config, on the tiny ViT and data for one epoch."""
    from peft_atlas.bench.config import load_config

    default = load_config(EXPERIMENTS / method / "default.yaml").model_dump()
    config = tiny_config(data_root, method=default["method"])
    config["train"]["epochs"] = 1
    (result,) = run_experiment(parse_config(config, method), quiet=True)
    assert 0 < result.trainable_parameters < result.total_parameters or method == "full-finetuning"
    assert result.history[0].train_loss > 0


@pytest.mark.parametrize("case", ["no-data-root", "missing-checkpoint"])
def test_input_errors_are_one_line_with_exit_code_2(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = tiny_config(None)
    if case == "missing-checkpoint":
        config = tiny_config(make_vtab_folder(tmp_path / "vtab"))
        config["backbone"]["checkpoint"] = str(tmp_path / "absent.safetensors")
    path = write_config(tmp_path / "tiny.yaml", config)
    assert main(["bench", str(path), "--out", str(tmp_path / "out.json"), "--quiet"]) == 2
    err = capsys.readouterr().err
    expected = {"no-data-root": "error: data.root is not set", "missing-checkpoint": "absent.safetensors: backbone"}
    assert expected[case] in err and "Traceback" not in err
    assert not (tmp_path / "out.json").exists()


def test_a_bug_in_training_propagates_with_its_traceback(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A TypeError raised by training code is a bug, not an input error: it is not turned into
    exit code 2 and an `error:` line."""

    def broken_step(*args: object, **kwargs: object) -> float:
        raise TypeError("unsupported operand type(s) in the training step")

    monkeypatch.setattr(training, "train_step", broken_step)
    path = write_config(tmp_path / "tiny.yaml", tiny_config(data_root))
    with pytest.raises(TypeError, match="in the training step"):
        main(["bench", str(path), "--out", str(tmp_path / "out.json"), "--quiet"])
    assert "error:" not in capsys.readouterr().err

"""Methods that choose what to tune from the training data: the harness prepares them on the first
training batches, in the seeded training order, and the measured run records it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

import reference_impls as ri  # noqa: E402
from bench_support import make_vtab_folder, tiny_config, write_config  # noqa: E402
from reference_impls.registry import _REGISTRY  # noqa: E402

from peft_atlas.bench import training  # noqa: E402
from peft_atlas.bench.config import ConfigError, parse_config  # noqa: E402
from peft_atlas.bench.runner import run_experiment  # noqa: E402
from peft_atlas.cli import main  # noqa: E402
from peft_atlas.measured import PrepareRecord, read_measured_run  # noqa: E402

TOY = "toy-channel-select"


class ToyChannelConfig(ri.MethodConfig):
    """A method that trains the head only, after choosing embedding channels from data."""

    channels: tuple[int, ...] | None = None
    """The two embedding channels with the largest mean activation on the prepare batches."""


@pytest.fixture
def toy_method() -> Iterator[dict[str, list[Any]]]:
    """Register the toy data-driven method for one test; record what it was given."""
    calls: dict[str, list[Any]] = {"prepared": [], "applied": []}

    def prepare(model: torch.nn.Module, config: ToyChannelConfig, batches: list) -> dict[str, Any]:
        batches = [(images.clone(), labels.clone()) for images, labels in batches]
        calls["prepared"].append(batches)
        with torch.no_grad():
            features = torch.cat([model.forward_features(images) for images, _ in batches])
        return {"channels": tuple(sorted(features.abs().mean(dim=(0, 1)).topk(2).indices.tolist()))}

    def apply(model: torch.nn.Module, config: ToyChannelConfig) -> None:
        calls["applied"].append(config.channels)

    ri.register(TOY, ToyChannelConfig, apply, mergeable=False, prepare=prepare, data_fields=("channels",))
    try:
        yield calls
    finally:
        _REGISTRY.pop(TOY)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_vtab_folder(tmp_path_factory.mktemp("vtab"))


def _config(data_root: Path, prepare_batches: int) -> dict[str, Any]:
    # 9 training examples in batches of 4: three batches per epoch, with seeded flips
    return tiny_config(data_root, method={"name": TOY, "prepare_batches": prepare_batches})


def test_prepare_sees_the_first_training_batches_in_training_order(
    toy_method: dict[str, list[Any]], data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trained: list[tuple[torch.Tensor, torch.Tensor]] = []
    original_step = training.train_step

    def recording_step(network: torch.nn.Module, batch: tuple, *args: Any) -> float:
        trained.append((batch[0].clone(), batch[1].clone()))
        return original_step(network, batch, *args)

    def no_apply(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a data-driven method must be prepared, not applied directly")

    monkeypatch.setattr(training, "train_step", recording_step)
    monkeypatch.setattr(ri, "apply", no_apply)
    (result,) = run_experiment(parse_config(_config(data_root, 2), "test"), quiet=True)

    [prepared] = toy_method["prepared"]
    assert len(prepared) == 2
    for (images, labels), (train_images, train_labels) in zip(prepared, trained[:2], strict=True):
        assert torch.equal(images, train_images) and torch.equal(labels, train_labels)  # flips included
    assert toy_method["applied"] == [toy_method["applied"][0]] and len(toy_method["applied"][0]) == 2
    assert result.prepare == PrepareRecord(batches=2, fields=["channels"])


def test_prepared_runs_are_deterministic(toy_method: dict[str, list[Any]], data_root: Path) -> None:
    config = parse_config(_config(data_root, 2), "test")
    first, second = run_experiment(config, quiet=True), run_experiment(config, quiet=True)
    assert toy_method["applied"][0] == toy_method["applied"][1]
    assert first[0].history == second[0].history and first[0].top1 == second[0].top1


def test_the_measured_run_records_the_prepare_step(
    toy_method: dict[str, list[Any]], data_root: Path, tmp_path: Path
) -> None:
    """Asking for more batches than the first epoch has uses all of them, and says so."""
    path = write_config(tmp_path / "toy.yaml", _config(data_root, 50))
    assert main(["bench", str(path), "--out", str(tmp_path / "toy.json"), "--quiet"]) == 0
    run = read_measured_run(tmp_path / "toy.json")
    assert run.tasks[0].prepare == PrepareRecord(batches=3, fields=["channels"])
    assert run.config.method.model_extra["prepare_batches"] == 50
    assert len(toy_method["prepared"][0]) == 3


def test_prepare_batches_must_be_positive(toy_method: dict[str, list[Any]], data_root: Path) -> None:
    with pytest.raises(ConfigError, match=r"method\.prepare_batches: Input should be greater than or equal to 1"):
        parse_config(_config(data_root, 0), "test")

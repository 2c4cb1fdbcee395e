"""The registry: methods are found without an import list, configs are checked in one place, and
methods that choose what to tune from data cannot run without their data."""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import reference_impls as ri
from reference_impls.registry import _REGISTRY

from .common import batch, build

METHODS_DIR = Path(ri.__file__).parent / "methods"


def test_every_method_file_registers_and_is_imported() -> None:
    """A new file in methods/ is picked up by the package, with no hand-kept import list."""
    files = {p.stem for p in METHODS_DIR.glob("*.py") if not p.name.startswith("_")}
    registering = {ri.get_spec(name).apply_fn.__module__.rsplit(".", 1)[-1] for name in ri.list_methods()}
    assert registering == files


def test_method_files_use_only_the_authoring_surface() -> None:
    """Method files import the shared API from `reference_impls.authoring` alone, and never check
    the backbone themselves (apply does)."""
    for path in sorted(METHODS_DIR.glob("*.py")):
        if path.name.startswith("_"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 2:
                assert node.module == "authoring", f"{path.name} imports from ..{node.module}"
            if isinstance(node, ast.Name):
                assert node.id != "check_vit", f"{path.name} calls check_vit"


def test_authoring_surface_is_complete() -> None:
    authoring = importlib.import_module("reference_impls.authoring")
    assert sorted(authoring.__all__) == sorted(set(authoring.__all__))
    for name in authoring.__all__:
        assert hasattr(authoring, name), name


class ToySelectConfig(ri.MethodConfig):
    """Train the bias of the most active output channels of every block's fc1."""

    top: int = 2
    """How many channels to select per block."""
    channels: tuple[tuple[int, ...], ...] | None = None
    """Selected fc1 channels per block (chosen from data by `prepare`)."""


def _fc1_outputs(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> Iterator[list[torch.Tensor]]:
    for images, _ in batches:
        outputs: list[torch.Tensor] = []
        hooks = [block.mlp.fc1.register_forward_hook(lambda m, i, o: outputs.append(o)) for block in model.blocks]
        with torch.no_grad():
            model(images)
        for hook in hooks:
            hook.remove()
        yield outputs


def prepare_toy(model: nn.Module, config: ToySelectConfig, batches: Iterable) -> dict:
    totals = None
    for outputs in _fc1_outputs(model, batches):
        magnitudes = [o.abs().flatten(0, -2).sum(0) for o in outputs]
        totals = magnitudes if totals is None else [t + m for t, m in zip(totals, magnitudes)]
    assert totals is not None, "no batches"
    return {"channels": tuple(tuple(sorted(t.topk(config.top).indices.tolist())) for t in totals)}


def apply_toy(model: nn.Module, config: ToySelectConfig) -> list[str]:
    if len(config.channels) != len(model.blocks):
        raise ValueError(f"channels has {len(config.channels)} entries for {len(model.blocks)} blocks")
    return [f"blocks.{i}.mlp.fc1.bias" for i in range(len(model.blocks))]


@pytest.fixture
def toy_method() -> Iterator[str]:
    name = "toy-select"
    ri.register(name, ToySelectConfig, apply_toy, mergeable=False, prepare=prepare_toy, data_fields=("channels",))
    try:
        yield name
    finally:
        _REGISTRY.pop(name)


def test_data_driven_method_refuses_apply_without_its_selection(toy_method: str) -> None:
    model = build()
    with pytest.raises(ValueError, match=rf"^{toy_method}: chooses what to tune from the training data, and "
                                         rf"channels is not set; call reference_impls.prepare\(model, '{toy_method}', batches\)"):
        ri.apply(model, toy_method)
    assert not hasattr(model, "peft_atlas_method")
    assert all(p.requires_grad for p in model.parameters())


def test_prepare_records_the_selection_and_round_trips(toy_method: str, tmp_path: Path) -> None:
    model = build()
    batches = [batch(seed) for seed in (1, 2)]
    ri.prepare(model, toy_method, batches, top=3)
    expected = prepare_toy(build(), ToySelectConfig(top=3), batches)["channels"]
    record = model.peft_atlas_method
    assert record["config"]["channels"] == [list(c) for c in expected]
    assert all(len(c) == 3 for c in expected)
    # the selection travels with the adapter: loading re-applies it without data
    path = tmp_path / "toy.safetensors"
    ri.save_adapter(model, path)
    fresh = build()
    ri.load_adapter(fresh, path)
    assert fresh.peft_atlas_method == record
    # a selection passed by hand is the same as a prepared one
    by_hand = build()
    ri.apply(by_hand, toy_method, top=3, channels=expected)
    assert by_hand.peft_atlas_method == record


def test_prepare_refuses_methods_that_take_no_data() -> None:
    with pytest.raises(ValueError, match=r"^lora: takes no data .*use reference_impls.apply\(model, 'lora'\)"):
        ri.prepare(build(), "lora", [batch()])


def test_errors_from_the_apply_function_name_the_method(toy_method: str) -> None:
    with pytest.raises(ValueError, match=rf"^{toy_method}: channels has 1 entries for 2 blocks$"):
        ri.apply(build(), toy_method, channels=((0,),))


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"prepare": prepare_toy}, r"give `prepare` and the `data_fields` it fills together"),
        ({"data_fields": ("channels",)}, r"give `prepare` and the `data_fields` it fills together"),
        ({"prepare": prepare_toy, "data_fields": ("chanels",)}, r"data_fields \['chanels'\] are not fields"),
    ],
)
def test_register_checks_its_arguments(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        ri.register("toy-bad", ToySelectConfig, apply_toy, mergeable=False, **kwargs)
    assert "toy-bad" not in ri.list_methods()


def test_register_refuses_a_taken_name_and_a_plain_class() -> None:
    with pytest.raises(ValueError, match="'lora' is already registered"):
        ri.register("lora", ToySelectConfig, apply_toy, mergeable=False)
    with pytest.raises(ValueError, match="must subclass MethodConfig"):
        ri.register("toy-plain", dict, apply_toy, mergeable=False)


def test_a_preset_gives_its_options_and_keyword_arguments_override_them(tmp_path: Path) -> None:
    model = ri.apply(build(), "adapter", preset="vtab-1k", dropout=0.1)
    record = model.peft_atlas_method
    assert record["preset"] == "vtab-1k"
    # the config holds the resolved values: the preset's, then the explicit ones
    assert record["config"] == ri.build_config(
        "adapter", {**ri.get_preset("adapter", "vtab-1k").options, "dropout": 0.1}
    ).model_dump(mode="json")
    assert record["config"]["bottleneck"] == 8 and record["config"]["dropout"] == 0.1
    # an adapter file carries the config, not the preset: loading needs no preset
    path = tmp_path / "adapter.safetensors"
    ri.save_adapter(model, path)
    fresh = ri.load_adapter(build(), path)
    assert fresh.peft_atlas_method["config"] == record["config"]
    assert ri.apply(build(), "adapter").peft_atlas_method["preset"] is None


def test_unknown_presets_are_refused_with_the_list() -> None:
    model = build()
    with pytest.raises(ValueError, match=r"^adapter: unknown preset 'vtab'; presets of adapter: vtab-1k$"):
        ri.apply(model, "adapter", preset="vtab")
    with pytest.raises(ValueError, match=r"^dora: unknown preset 'vtab-1k'; presets of dora: none$"):
        ri.apply(model, "dora", preset="vtab-1k")
    assert not hasattr(model, "peft_atlas_method")
    assert ri.list_presets("noah")[:2] == ["vtab-1k/cifar100", "vtab-1k/caltech101"]


def test_presets_are_read_only_and_have_a_source() -> None:
    preset = ri.get_preset("lora", "vtab-1k")
    with pytest.raises(TypeError):
        preset.options["r"] = 4  # type: ignore[index]
    with pytest.raises(ValueError, match="a preset needs a source"):
        ri.Preset({"r": 4}, source=" ")


@pytest.mark.parametrize(
    ("presets", "pattern"),
    [
        ({"VTAB": ri.Preset({}, source="s")}, r"preset 'VTAB' needs a name like 'vtab-1k'"),
        ({"vtab-1k/*": ri.Preset({}, source="s")}, r"preset 'vtab-1k/\*' needs a name like"),
        ({"vtab-1k": {"top": 1}}, r"preset 'vtab-1k' needs a name like .* and a Preset value"),
        ({"vtab-1k": ri.Preset({"tops": 1}, source="s")}, r"preset 'vtab-1k' is not a valid config"),
    ],
)
def test_register_checks_presets(presets: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        ri.register("toy-bad", ToySelectConfig, apply_toy, mergeable=False, presets=presets)
    assert "toy-bad" not in ri.list_methods()

"""Bad input gets a clear error that names what was wrong; the config contract holds for every method."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import reference_impls as ri

from .common import applied, build, Case


def test_unknown_method_lists_registered_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown method 'loar'; registered methods: .*\blora\b"):
        ri.apply(build(), "loar")


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"r": "8"}, r"^lora: config field 'r' expects a valid integer, got '8' \(str\)$"),
        ({"r": True}, r"^lora: config field 'r' expects a valid integer, got True \(bool\)$"),
        ({"alpha": "big"}, r"^lora: config field 'alpha' expects a valid number, got 'big' \(str\)$"),
        ({"targets": "q"}, r"^lora: config field 'targets' expects a valid tuple, got 'q' \(str\)$"),
        ({"targets": ("q", 1)}, r"^lora: config field 'targets\[1\]' expects a valid string, got 1 \(int\)$"),
    ],
)
def test_config_field_of_wrong_type(kwargs: dict, pattern: str) -> None:
    with pytest.raises(TypeError, match=pattern):
        ri.apply(build(), "lora", **kwargs)


def test_unknown_config_field_lists_valid_fields() -> None:
    with pytest.raises(ValueError, match=r"^lora: unknown config field 'rank'; valid fields: r, alpha, dropout, targets$"):
        ri.apply(build(), "lora", rank=8)


@pytest.mark.parametrize(
    ("method", "kwargs", "pattern"),
    [
        ("lora", {"r": 0}, r"^lora: config field 'r' must be greater than or equal to 1, got 0$"),
        ("lora", {"dropout": 1.0}, r"^lora: config field 'dropout' must be less than 1, got 1.0$"),
        ("lora", {"dropout": -0.1}, r"^lora: config field 'dropout' must be greater than or equal to 0, got -0.1$"),
        ("lora", {"targets": ()}, r"^lora: config field 'targets' must have at least 1 item\(s\), got \(\)$"),
        ("partial-k", {"k": -1}, r"^partial-k: config field 'k' must be greater than or equal to 0, got -1$"),
        ("partial-k", {"k": 3}, r"^partial-k: k=3 exceeds the model's depth \(2 blocks\)"),
        ("vpt-deep", {"num_tokens": 0}, r"^vpt-deep: config field 'num_tokens' must be greater than or equal to 1, got 0$"),
        ("dora", {"r": 0}, r"^dora: config field 'r' must be greater than or equal to 1, got 0$"),
        ("ia3", {"feedforward": ("fc1",)}, r"^ia3: feedforward entries \['fc1'\] must also be in targets"),
        ("ia3", {"targets": ("k",), "feedforward": ("k",)}, r"^ia3: feedforward entries \['k'\] are output slices"),
    ],
)
def test_config_value_out_of_range(method: str, kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        ri.apply(build(), method, **kwargs)


def test_target_matching_nothing_names_pattern_and_candidates() -> None:
    with pytest.raises(ValueError, match=r"^lora: target 'query' matches no linear layer .*candidates: q, k, v, attn.proj, attn.qkv, mlp.fc1, mlp.fc2"):
        ri.apply(build(), "lora", targets=("q", "query"))


def test_failed_apply_leaves_model_untouched() -> None:
    model = build()
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="matches no linear layer"):
        ri.apply(model, "ia3", targets=("k", "fc3"), feedforward=())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
    assert not hasattr(model, "peft_atlas_method")
    ri.apply(model, "ia3")  # the model is still usable


def test_overlapping_targets_refused() -> None:
    with pytest.raises(ValueError, match=r"^lora: targets overlap on layer 'blocks.0.attn.qkv'"):
        ri.apply(build(), "lora", targets=("q", "qkv"))


@pytest.mark.parametrize("method", ri.list_methods(backbone="vit"))
def test_unsupported_backbone(method: str) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(TypeError, match=rf"^{method}: the model must be a timm VisionTransformer .*got Sequential"):
        ri.apply(model, method)


def test_second_method_refused() -> None:
    model = applied(Case("lora"))
    with pytest.raises(ValueError, match=r"method 'lora' is already applied.*'bitfit'"):
        ri.apply(model, "bitfit")


def test_merge_save_without_method() -> None:
    with pytest.raises(ValueError, match="no method is applied"):
        ri.merge(build())
    with pytest.raises(ValueError, match="no method is applied"):
        ri.save_adapter(build(), "unused.safetensors")


def test_load_refuses_foreign_file(tmp_path) -> None:
    path = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="not a PEFT Atlas adapter file"):
        ri.load_adapter(build(), path)


def test_load_refuses_other_config(tmp_path) -> None:
    path = tmp_path / "task.safetensors"
    ri.save_adapter(applied(Case("lora", {"r": 4})), path)
    with pytest.raises(ValueError, match=r"config of method 'lora' differs: file .*'r': 4.* vs model .*'r': 2"):
        ri.load_adapter(applied(Case("lora", {"r": 2})), path)


def test_load_refuses_missing_and_unexpected_tensors(tmp_path) -> None:
    path = tmp_path / "task.safetensors"
    model = applied(Case("lora"))
    ri.save_adapter(model, path)
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(path))
    dropped = sorted(tensors)[0]
    del tensors[dropped]
    tensors["blocks.0.attn.qkv.peft_lora_A.k"] = torch.zeros(8, 32)
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(ValueError, match=rf"missing \['{dropped}'\], unexpected \['blocks.0.attn.qkv.peft_lora_A.k'\]"):
        ri.load_adapter(build(), path)


def test_load_refuses_other_format_version(tmp_path) -> None:
    path = tmp_path / "task.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"format": "peft-atlas-adapter", "format_version": "99"})
    with pytest.raises(ValueError, match="format version '99' is not supported"):
        ri.load_adapter(build(), path)


@pytest.mark.parametrize("method", ri.list_methods(backbone="vit"))
def test_config_contract(method: str) -> None:
    """Every config is a MethodConfig whose fields have a type, a default and a docstring, and
    whose defaults survive a JSON round trip through apply's type check."""
    cls = ri.get_config_class(method)
    assert issubclass(cls, ri.MethodConfig)
    for name, info in cls.model_fields.items():
        assert not info.is_required(), f"{method}.{name} has no default"
        assert info.annotation is not None, f"{method}.{name} has no type"
        assert info.description, f"{method}.{name} has no docstring"
    defaults = json.loads(json.dumps(cls().model_dump(mode="json")))
    model = build()
    ri.apply(model, method, **defaults)
    assert model.peft_atlas_method["config"] == defaults

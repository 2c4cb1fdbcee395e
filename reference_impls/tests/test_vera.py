"""VeRA-specific checks: the frozen shared matrices (sharing, seeding, storage) and the update formula."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors import safe_open

import reference_impls as ri
from reference_impls.methods.vera import VeRALinear, random_projections

from .common import Case, applied, batch, build


def wrappers(model: torch.nn.Module) -> dict[str, VeRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, VeRALinear)}


def test_layers_of_one_width_share_one_matrix_object() -> None:
    model = applied(Case("vera", {"r": 4, "targets": ("q", "v", "proj", "fc1", "fc2")}))
    layers = wrappers(model)
    d = model.embed_dim
    a_by_width: dict[int, set[int]] = {}
    b_by_width: dict[int, set[int]] = {}
    for layer in layers.values():
        a_by_width.setdefault(layer.peft_vera_A.weight.shape[1], set()).add(id(layer.peft_vera_A))
        b_by_width.setdefault(layer.peft_vera_B.weight.shape[0], set()).add(id(layer.peft_vera_B))
    # one A per input width (d for qkv, proj, fc1; 4d for fc2), one B per output width (d for the
    # q and v thirds, proj and fc2; 4d for fc1)
    assert {w: len(ids) for w, ids in a_by_width.items()} == {d: 1, 4 * d: 1}
    assert {w: len(ids) for w, ids in b_by_width.items()} == {d: 1, 4 * d: 1}


def test_shared_matrices_are_frozen_buffers_outside_the_state_dict() -> None:
    model = applied(Case("vera", {"r": 4}))
    names = {n for n, _ in model.named_parameters()}
    assert not any("peft_vera_A" in n or "peft_vera_B" in n for n in names)
    assert not any("peft_vera_A" in k or "peft_vera_B" in k for k in model.state_dict())
    layer = next(iter(wrappers(model).values()))
    a, b = layer.peft_vera_A.weight.clone(), layer.peft_vera_B.weight.clone()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1, weight_decay=0.1)
    images, labels = batch()
    for _ in range(2):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model.train()(images), labels).backward()
        optimizer.step()
    assert torch.equal(layer.peft_vera_A.weight, a) and torch.equal(layer.peft_vera_B.weight, b)


def test_matrices_are_a_function_of_the_seed() -> None:
    first = wrappers(ri.apply(build(), "vera", r=4, seed=3))
    again = wrappers(ri.apply(build(seed=1), "vera", r=4, seed=3))  # other backbone weights, same seed
    other = wrappers(ri.apply(build(), "vera", r=4, seed=4))
    for name, layer in first.items():
        assert torch.equal(layer.peft_vera_A.weight, again[name].peft_vera_A.weight)
        assert torch.equal(layer.peft_vera_B.weight, again[name].peft_vera_B.weight)
        assert not torch.equal(layer.peft_vera_A.weight, other[name].peft_vera_A.weight)
    # the documented draw: A for each input width, then B for each output width, from one generator
    a, b = random_projections(4, [32], [32], seed=3)
    layer = first["blocks.0.attn.qkv"]
    assert torch.equal(layer.peft_vera_A.weight, a[32]) and torch.equal(layer.peft_vera_B.weight, b[32])


def test_kaiming_uniform_bounds() -> None:
    a, b = random_projections(8, [32, 128], [96], seed=0)
    for width, matrix in a.items():
        assert matrix.abs().max() <= math.sqrt(6 / width) and matrix.abs().max() > 0.9 * math.sqrt(6 / width)
    assert b[96].abs().max() <= math.sqrt(6 / 8)
    assert not torch.equal(a[32], a[128][:, :32])  # widths are drawn separately


def test_adapter_file_holds_only_the_vectors_and_head(tmp_path) -> None:
    model = applied(Case("vera", {"r": 4}))
    path = tmp_path / "task.safetensors"
    ri.save_adapter(model, path)
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
    assert keys == {n for n in ri.adapter_parameter_names(model)}
    assert all("lambda" in k or k.startswith("head.") for k in keys)
    fresh = ri.load_adapter(build(), path)  # the matrices are re-drawn from the recorded seed
    images, _ = batch()
    with torch.no_grad():
        assert torch.equal(fresh(images), model(images))


def test_delta_weight_is_scaled_b_times_scaled_a_in_the_right_rows() -> None:
    model = applied(Case("vera", {"r": 4, "targets": ("q", "v")}))
    layer = wrappers(model)["blocks.0.attn.qkv"]
    delta = layer.delta_weight()
    d = delta.shape[0] // 3
    a, b = layer.peft_vera_A.weight, layer.peft_vera_B.weight
    for part, rows in (("q", slice(0, d)), ("v", slice(2 * d, 3 * d))):
        lam_b, lam_d = layer.peft_vera_lambda_b[part], layer.peft_vera_lambda_d[part]
        torch.testing.assert_close(delta[rows], torch.diag(lam_b) @ b @ torch.diag(lam_d) @ a)
    assert torch.count_nonzero(delta[d : 2 * d]) == 0


def test_vectors_start_at_zero_and_d_init() -> None:
    model = ri.apply(build(), "vera", r=5, d_init=0.25)
    for layer in wrappers(model).values():
        for part in layer.peft_vera_lambda_d:
            assert torch.equal(layer.peft_vera_lambda_d[part], torch.full((5,), 0.25))
            assert torch.count_nonzero(layer.peft_vera_lambda_b[part]) == 0


def test_dtype_change_keeps_the_matrices_shared() -> None:
    model = applied(Case("vera", {"r": 4, "targets": ("q", "v", "proj")})).to(torch.float64)
    layers = list(wrappers(model).values())
    assert len({id(layer.peft_vera_A.weight) for layer in layers}) == 1
    assert all(layer.peft_vera_A.weight.dtype == torch.float64 for layer in layers)
    assert {p.dtype for n, p in model.named_parameters() if "peft_" in n} == {torch.float64}
    images, _ = batch()
    assert model(images.double()).dtype == torch.float64


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"r": 0}, r"^vera: config field 'r' must be greater than or equal to 1, got 0$"),
        ({"dropout": 1.0}, r"^vera: config field 'dropout' must be less than 1, got 1.0$"),
        ({"dropout": -0.1}, r"^vera: config field 'dropout' must be greater than or equal to 0, got -0.1$"),
        ({"targets": ()}, r"^vera: config field 'targets' must have at least 1 item\(s\), got \(\)$"),
        ({"seed": -1}, r"^vera: config field 'seed' must be greater than or equal to 0, got -1$"),
        ({"targets": ("q", "qkv")}, r"^vera: targets overlap on layer 'blocks.0.attn.qkv'"),
    ],
)
def test_bad_config(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        ri.apply(build(), "vera", **kwargs)

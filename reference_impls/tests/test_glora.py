"""GLoRA-specific checks: the layer formula for every combination of forms, the official
initialization, the terms the invariant matrix cannot see (D, a scalar B), bias-free layers, the
size of the default sub-network and config errors."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import reference_impls as ri
from reference_impls.methods.glora import ALLOWED, COMPONENTS, GLoRALinear

from .common import TOL, batch, build, perturb
from .reported import added_parameters, in_millions

COMBINATIONS = list(itertools.product(*(ALLOWED[name] for name in COMPONENTS)))


def dense(layer: GLoRALinear, name: str) -> torch.Tensor:
    """Support tensor `name` expanded to its full shape, written out from the parameters."""
    w0 = layer.base_layer.weight
    d_out, d_in = w0.shape
    full = (d_in,) if name == "c" else ((d_out, d_in) if name in "ab" else (d_out,))
    form, key, params = layer.forms[name], name.upper(), layer.peft_glora
    if form == "none":
        return torch.zeros(full)
    if form == "scalar":
        return params[key][0] * torch.ones(full)
    if form == "vector":
        return params[key][:, None].expand(full) if name in "ab" else params[key]
    product = torch.einsum("ik,kj->ij", params[f"{key}_d"], params[f"{key}_u"])
    return product[:, 0] if name == "c" else product


def randomize(module: nn.Module, seed: int = 5) -> None:
    """Give every parameter of `module` (backbone biases and LayerNorms included) random values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=generator))


@pytest.mark.parametrize("forms", COMBINATIONS, ids=["".join(f[0].upper() for f in c) for c in COMBINATIONS])
def test_layer_formula_and_fold(forms: tuple[str, ...]) -> None:
    base = nn.Linear(6, 5)
    randomize(base)
    layer = GLoRALinear(base, dict(zip(COMPONENTS, forms)), r=2)
    randomize(layer.peft_glora, seed=7)
    x = torch.randn(3, 6)
    w0, b0 = base.weight.detach().clone(), base.bias.detach().clone()
    a, b, c, d, e = (dense(layer, name) for name in COMPONENTS)
    # y = (W0 + W0 ⊙ A + B) x + W0 C + b0 ⊙ D + E + b0
    expected = x @ (w0 + w0 * a + b).T + w0 @ c + b0 * d + e + b0
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected)
        layer.merge()
        torch.testing.assert_close(layer(x), expected, atol=TOL["merge"], rtol=0.0)
        layer.unmerge()
        assert torch.equal(base.weight, w0) and torch.equal(base.bias, b0)
    numel = {n: p.numel() for n, p in layer.peft_glora.items()}
    sizes = {"lora": {"a": 2 * (5 + 6), "b": 2 * (5 + 6), "c": 2 * 6 + 2}, "vector": {"a": 5, "b": 5, "c": 6, "d": 5, "e": 5}}
    assert sum(numel.values()) == sum(sizes.get(f, {}).get(n, 1 if f == "scalar" else 0) for n, f in zip(COMPONENTS, forms))


def test_official_initialization_is_zero_update() -> None:
    model = ri.apply(build(), "glora", a="lora", b="vector", c="lora", d="scalar", e="vector")
    for name, p in model.named_parameters():
        if "peft_glora" not in name:
            continue
        key = name.rsplit(".", 1)[-1]
        if key.endswith("_u"):
            assert p.abs().max() > 0, name  # Xavier-uniform
        else:
            assert torch.count_nonzero(p) == 0, name  # X_d, vectors and scalars start at zero


def test_identity_at_init_with_nonzero_biases() -> None:
    images, _ = batch()
    plain = build()
    randomize(plain)
    model = build()
    model.load_state_dict(plain.state_dict())
    ri.apply(model, "glora", b="scalar", d="vector")
    with torch.no_grad():
        torch.testing.assert_close(model(images), plain(images), atol=TOL["identity"], rtol=0.0)


@pytest.mark.parametrize("d", ["vector", "scalar"])
def test_bias_scale_and_scalar_shift_act_on_a_trained_backbone(d: str) -> None:
    """With non-zero biases and non-trivial LayerNorms, D and a scalar B change the output, and
    merging stays exact: the cases the tiny, freshly initialized backbones cannot show. (A scalar B
    on attn.proj or mlp.fc2 shifts every feature of a token equally, which the next LayerNorm
    removes in any pre-norm ViT; it is checked on qkv and fc1.)"""
    images, _ = batch()
    model = build()
    randomize(model)
    ri.apply(model, "glora", r=2, b="scalar", d=d)
    perturb(model)
    params = dict(model.named_parameters())
    with torch.no_grad():
        reference = model(images)
        checked = [n for n in params if n.endswith("peft_glora.D") or n.endswith(("qkv.peft_glora.B", "fc1.peft_glora.B"))]
        assert len(checked) == 2 * 4 + 2 * 2
        for name in checked:
            saved = params[name].clone()
            params[name].add_(1.0)
            assert not torch.allclose(model(images), reference), name
            params[name].copy_(saved)
        ri.merge(model)
        torch.testing.assert_close(model(images), reference, atol=TOL["merge"], rtol=0.0)
        ri.unmerge(model)
        torch.testing.assert_close(model(images), reference, atol=0.0, rtol=0.0)


def test_layer_without_bias() -> None:
    images, _ = batch()
    model = ri.apply(build(qkv_bias=False), "glora", targets=("qkv",))
    qkv = model.blocks[0].attn.qkv
    assert qkv.forms["d"] == "none" and "D" not in qkv.peft_glora
    perturb(model)
    with pytest.raises(ValueError, match="^glora: cannot merge a layer without bias that has a C or E term"):
        ri.merge(model)
    ri.unmerge(model)
    assert not ri.is_merged(model)
    mergeable = ri.apply(build(qkv_bias=False), "glora", targets=("qkv",), c="none", e="none")
    perturb(mergeable)
    with torch.no_grad():
        unmerged = mergeable(images)
        ri.merge(mergeable)
        torch.testing.assert_close(mergeable(images), unmerged, atol=TOL["merge"], rtol=0.0)


def test_overrides_replace_the_forms_of_one_layer() -> None:
    model = ri.apply(build(), "glora", overrides=("blocks.1.attn.proj=NSNNS",))
    assert model.blocks[1].attn.proj.forms == {"a": "none", "b": "scalar", "c": "none", "d": "none", "e": "scalar"}
    assert model.blocks[0].attn.proj.forms == {"a": "lora", "b": "lora", "c": "lora", "d": "vector", "e": "vector"}
    assert sorted(model.blocks[1].attn.proj.peft_glora) == ["B", "E"]


def official_search_count(forms: dict[str, str], r: int, layers: list[tuple[int, int]]) -> int:
    """Parameters of a configuration as the official search counts them (`get_param_tensor` in
    GLoRA/evolution_utils.py of github.com/Arnav0400/ViT-Slim): per (d_out, d_in) layer, a low-rank
    A or B r (d_out + d_in), a low-rank C r (d_in + 1), a vector d_out (C: d_in), a scalar 1."""
    total = 0
    for d_out, d_in in layers:
        for name, form in forms.items():
            rows, cols = (d_in, 1) if name == "c" else (d_out, d_in)
            total += {"lora": r * (rows + cols), "vector": rows, "scalar": 1, "none": 0}[form]
    return total


def test_default_is_the_full_search_space_above_the_official_budget() -> None:
    """The defaults train the largest member of the search space on all 48 linear layers of
    ViT-B/16: 1.60M parameters without the head, as the official search would count them, and above
    its default budget of 1.00M (`--param-limits`, GLoRA/evolution.py), so they are not a searched
    sub-network."""
    d = 768
    layers = [(3 * d, d), (d, d), (4 * d, d), (d, 4 * d)] * 12
    defaults = {"a": "lora", "b": "lora", "c": "lora", "d": "vector", "e": "vector"}
    count = added_parameters("glora")
    assert count == official_search_count(defaults, 4, layers) == 1_603_776
    assert in_millions(count, "1.60") == "1.60" and count > 1_000_000
    # no combination of forms has more parameters than the defaults
    assert all(official_search_count(dict(zip(COMPONENTS, c)), 4, layers) <= count for c in COMBINATIONS)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"r": 0}, r"^glora: config field 'r' must be greater than or equal to 1, got 0$"),
        ({"targets": ("q",)}, r"glora: targets 'q', 'k', 'v' select slices of 'blocks.0.attn.qkv'; .* use 'qkv'"),
        ({"overrides": ("blocks.0.attn.qkv=LLSVV",)}, r"C cannot be 'scalar'"),
        ({"overrides": ("blocks.0.attn.qkv=LLLLV",)}, r"D cannot be 'lora'"),
        ({"overrides": ("blocks.0.attn.qkv=LLX",)}, r"must be 5 letters"),
        ({"overrides": ("LLLVV",)}, r"must have the form 'module.name=CODE'"),
        ({"overrides": ("blocks.0.attn.qkv=LLLVV", "blocks.0.attn.qkv=NNNNN")}, r"overridden twice"),
        ({"overrides": ("blocks.9.attn.qkv=LLLVV",)}, r"overrides name layers that are not adapted: \['blocks.9.attn.qkv'\]"),
    ],
)
def test_config_errors(kwargs: dict, pattern: str) -> None:
    model = build()
    with pytest.raises(ValueError, match=pattern):
        ri.apply(model, "glora", **kwargs)
    assert not any(isinstance(m, GLoRALinear) for m in model.modules())

"""Adapter-specific checks: placement on the sub-layer outputs, trained norms, initializations,
and why the VTAB-1k tables' count is NOAH's placement (test_reported_presets.py recomputes it)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import reference_impls as ri
from reference_impls.wrappers import Wrapper

from .common import BACKBONES, batch, build, perturb
from .reported import added_parameters, in_millions

backbones = pytest.mark.parametrize("backbone", list(BACKBONES))


def adapted(layer: nn.Module, h: torch.Tensor, activation) -> torch.Tensor:
    """A(h) = h + W_up f(W_down h + b_down) + b_up, written out with the wrapper's tensors."""
    z = activation(h @ layer.peft_down.weight.T + layer.peft_down.bias)
    return h + z @ layer.peft_up.weight.T + layer.peft_up.bias


def reference_forward(model: nn.Module, images: torch.Tensor, positions: tuple[str, ...], activation) -> torch.Tensor:
    """x <- x + A(Attn(LN_1 x)), x <- x + A(MLP(LN_2 x)) with the original sub-layers."""
    x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))
    for block in model.blocks:
        for norm, name in ((block.norm1, "attn"), (block.norm2, "mlp")):
            layer = getattr(block, name)
            if name in positions:
                x = x + adapted(layer, layer.base_layer(norm(x)), activation)
            else:
                x = x + layer(norm(x))
    return model.forward_head(model.norm(x))


@backbones
@pytest.mark.parametrize(
    ("kwargs", "activation"),
    [({}, F.gelu), ({"positions": ("mlp",), "activation": "quick_gelu"}, lambda x: x * torch.sigmoid(1.702 * x))],
    ids=["houlsby", "mlp-only"],
)
def test_matches_equations(backbone: str, kwargs: dict, activation) -> None:
    images, _ = batch()
    model = ri.apply(build(backbone), "adapter", bottleneck=4, **kwargs)
    perturb(model)
    positions = kwargs.get("positions", ("attn", "mlp"))
    with torch.no_grad():
        torch.testing.assert_close(model(images), reference_forward(model, images, positions, activation))


def test_adapters_wrap_the_attention_and_mlp_outputs() -> None:
    model = ri.apply(build(), "adapter", bottleneck=4)
    for block in model.blocks:
        assert isinstance(block.attn, Wrapper) and isinstance(block.mlp, Wrapper)
    mlp_only = ri.apply(build(), "adapter", bottleneck=4, positions=("mlp",))
    assert not any(isinstance(b.attn, Wrapper) for b in mlp_only.blocks)
    assert all(isinstance(b.mlp, Wrapper) for b in mlp_only.blocks)


def test_train_norms_selects_every_layernorm() -> None:
    model = ri.apply(build(), "adapter", bottleneck=4)
    norms = {f"{n}.{p}" for n, m in model.named_modules() if isinstance(m, nn.LayerNorm) for p in ("weight", "bias")}
    assert norms and set(model.peft_atlas_method["backbone_trainable"]) == norms
    frozen = ri.apply(build(), "adapter", bottleneck=4, train_norms=False)
    assert frozen.peft_atlas_method["backbone_trainable"] == []
    assert not any(p.requires_grad for n, p in frozen.named_parameters() if "norm" in n)


def test_houlsby_init_is_near_identity() -> None:
    images, _ = batch()
    model = ri.apply(build(), "adapter", bottleneck=4, init="houlsby")
    up = model.blocks[0].mlp.peft_up.weight
    assert up.abs().max() <= 2e-3 and up.abs().max() > 0
    with torch.no_grad():
        torch.testing.assert_close(model(images), build()(images), atol=1e-3, rtol=0.0)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"bottleneck": 0}, r"^adapter: config field 'bottleneck' must be greater than or equal to 1, got 0$"),
        ({"positions": ("attn", "ffn")}, r"^adapter: config field 'positions\[1\]' must be 'attn' or 'mlp', got 'ffn'$"),
        ({"positions": ()}, r"^adapter: config field 'positions' must have at least 1 item\(s\), got \(\)$"),
    ],
)
def test_bad_config(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        ri.apply(build(), "adapter", **kwargs)


# The "Adapter" rows of the VTAB-1k tables (ViT-B/16) all come from NOAH's code: the preset
# "vtab-1k", one adapter of width 8 on the MLP output of every block, QuickGELU, LayerNorms frozen.


def test_houlsby_placement_is_not_the_counted_configuration() -> None:
    """Two adapters of width 8 per block (the paper's placement) would print 0.31 M, not 0.16 M."""
    count = added_parameters("adapter", bottleneck=8, train_norms=False)
    assert in_millions(count, "0.16") == "0.31"

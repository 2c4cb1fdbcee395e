"""Convpass-specific checks: the bypass written out as in the official code (prefix tokens as 1x1
images), the patch grid read from the model, initialization, and the per-task presets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import reference_impls as ri
from reference_impls.methods.convpass import ConvBypass
from reference_impls.wrappers import Wrapper

from .common import BACKBONES, batch, build, perturb
from .reported import added_parameters

backbones = pytest.mark.parametrize("backbone", list(BACKBONES))


def g(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def bypass_reference(bypass: ConvBypass, x: torch.Tensor) -> torch.Tensor:
    """C(X) with every token through a real 3x3 convolution: patch tokens on the (H, W) grid,
    each prefix token as its own zero-padded 1x1 image."""
    batch_size, tokens, _ = x.shape
    n, (height, width) = bypass.num_prefix_tokens, bypass.grid_size
    z = g(x @ bypass.down.weight.T + bypass.down.bias)
    dim = z.shape[-1]
    grid = z[:, n:].reshape(batch_size, height, width, dim).permute(0, 3, 1, 2)
    patches = F.conv2d(grid, bypass.conv.weight, bypass.conv.bias, padding=1).permute(0, 2, 3, 1)
    pixels = z[:, :n].reshape(batch_size * n, dim, 1, 1)
    prefix = F.conv2d(pixels, bypass.conv.weight, bypass.conv.bias, padding=1).reshape(batch_size, n, dim)
    z = g(torch.cat([prefix, patches.reshape(batch_size, height * width, dim)], dim=1))
    return z @ bypass.up.weight.T + bypass.up.bias


def reference_forward(model: nn.Module, images: torch.Tensor, scale: float) -> torch.Tensor:
    """x <- x + F(LN x) + s C(LN x) for the attention and the MLP of every block."""
    x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))
    for block in model.blocks:
        for norm, layer in ((block.norm1, block.attn), (block.norm2, block.mlp)):
            h = norm(x)
            if isinstance(layer, Wrapper):
                x = x + layer.base_layer(h) + scale * bypass_reference(layer.peft_bypass, h)
            else:
                x = x + layer(h)
    return model.forward_head(model.norm(x))


@backbones
@pytest.mark.parametrize("positions", [("attn", "mlp"), ("attn",)], ids=["convpass", "convpass-attn"])
def test_matches_official_computation(backbone: str, positions: tuple[str, ...]) -> None:
    images, _ = batch()
    model = ri.apply(build(backbone), "convpass", dim=3, scale=2.0, positions=positions)
    perturb(model, scale=0.5)
    with torch.no_grad():
        torch.testing.assert_close(model(images), reference_forward(model, images, 2.0))


def test_non_square_grid_read_from_the_model() -> None:
    images = torch.randn(2, 3, 24, 40, generator=torch.Generator().manual_seed(0))
    model = ri.apply(build(img_size=(24, 40)), "convpass", dim=3)
    assert model.blocks[0].attn.peft_bypass.grid_size == (3, 5)
    perturb(model, scale=0.5)
    with torch.no_grad():
        torch.testing.assert_close(model(images), reference_forward(model, images, 1.0))


def test_wrong_token_count_is_refused() -> None:
    bypass = ConvBypass(8, 2, (2, 2), 1, "identity", 0.0)
    with pytest.raises(RuntimeError, match=r"expected 1 prefix tokens and a 2x2 patch grid \(5 tokens\), got 6"):
        bypass(torch.zeros(1, 6, 8))


@pytest.mark.parametrize("conv_init", ["identity", "xavier"])
def test_official_initialization(conv_init: str) -> None:
    bypass = ri.apply(build(), "convpass", conv_init=conv_init).blocks[0].mlp.peft_bypass
    assert torch.count_nonzero(bypass.up.weight) == 0 and torch.count_nonzero(bypass.up.bias) == 0
    assert torch.count_nonzero(bypass.down.bias) == 0 and torch.count_nonzero(bypass.conv.bias) == 0
    kernel = bypass.conv.weight
    if conv_init == "identity":
        assert torch.equal(kernel[:, :, 1, 1], torch.eye(8))
        assert torch.count_nonzero(kernel) == 8
    else:
        assert torch.count_nonzero(kernel) == kernel.numel()


# Convpass, Table 1 (ViT-B/16, VTAB-1k, head not counted): test_reported_presets.py recomputes the
# rows from the per-task presets.


@pytest.mark.parametrize("variant", ["vtab-1k", "vtab-1k-attn"])
def test_per_task_presets_differ_only_in_scale_and_kernel_init(variant: str) -> None:
    """The official runs chose s and the kernel initialization per task: every task adds the same
    parameters, so the row's average is the count of one task."""
    names = [n for n in ri.list_presets("convpass") if n.startswith(f"{variant}/")]
    assert len(names) == 19
    structure = {tuple((k, v) for k, v in ri.get_preset("convpass", n).options.items() if k not in ("scale", "conv_init"))
                 for n in names}
    positions = ("attn",) if variant.endswith("attn") else ("attn", "mlp")
    assert structure == {(("dim", 8), ("positions", positions))}
    count = added_parameters("convpass", preset=names[0])
    assert count == 12 * len(positions) * (768 * 8 + 8 + 9 * 8 * 8 + 8 + 8 * 768 + 768)

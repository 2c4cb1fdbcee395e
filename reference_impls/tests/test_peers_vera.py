"""VeRA against HF PEFT's VeRA on the same tiny timm model, with identical weights.

HF PEFT draws one pair $A \\in \\mathbb{R}^{r \\times \\max d_{in}}$, $B \\in \\mathbb{R}^{\\max d_{out}
\\times r}$ for the whole model and gives each layer the top-left block it needs
(`A[:, :d_in]`, `B[:d_out]`). Ours draws one $A$ per input width and one $B$ per output width.
Both are "one shared pair per layer shape", with different random values, so the test copies
HF's blocks into our shared matrices (every layer of a given width takes the same block on both
sides) and HF's trained-vector layout from ours; the outputs then agree.

Only whole-layer targets are compared. Our `"q"`, `"k"`, `"v"` targets adapt the thirds of the
fused `attn.qkv` as three $d \\times d$ matrices that share one $B$ of shape $d \\times r$; HF, which
sees only the fused $3d \\times d$ layer, uses three different row blocks of $B[:3d]$ for them. No
copy of weights makes these equal (our three thirds are forced to use the same $B$), so the slice
targets are checked by the invariant matrix and test_vera.py instead.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import reference_impls as ri
from reference_impls.backbone import head_modules
from reference_impls.wrappers import Wrapper

from .common import BACKBONES, TOL, batch, build, perturb

peft = pytest.importorskip("peft")

backbones = pytest.mark.parametrize("backbone", list(BACKBONES))

R = 4


def hf_vera(backbone: str, modules: list[str] | str) -> nn.Module:
    config = peft.VeraConfig(r=R, target_modules=modules, projection_prng_key=0, d_initial=0.1)
    return peft.get_peft_model(build(backbone), config).eval()


def copy_heads(ours: nn.Module, theirs: nn.Module) -> None:
    for name in ("head", "head_dist"):
        if hasattr(ours, name):
            theirs.base_model.model.get_submodule(name).load_state_dict(getattr(ours, name).state_dict())


@backbones
@pytest.mark.parametrize(
    ("targets", "hf_modules"),
    [(("qkv",), ["qkv"]), (("proj", "fc1", "fc2"), r"blocks\.\d+\.(attn\.proj|mlp\.fc1|mlp\.fc2)")],
    ids=["qkv", "proj-fc1-fc2"],
)
def test_vera_matches_hf(backbone: str, targets: tuple[str, ...], hf_modules) -> None:
    ours = ri.apply(build(backbone), "vera", r=R, targets=targets)
    perturb(ours)  # b away from zero, d away from d_init
    theirs = hf_vera(backbone, hf_modules)
    hf_a = theirs.base_model.vera_A["default"]
    hf_b = theirs.base_model.vera_B["default"]
    params = dict(theirs.named_parameters())
    copied = 0
    with torch.no_grad():
        for name, module in ours.named_modules():
            if not isinstance(module, Wrapper):
                continue
            d_in, d_out = module.base_layer.in_features, module.base_layer.out_features
            # our shared A (width d_in) and B (width d_out) take HF's blocks for this shape
            module.peft_vera_A.weight.copy_(hf_a[:, :d_in])
            module.peft_vera_B.weight.copy_(hf_b[:d_out])
            prefix = f"base_model.model.{name}"
            params[f"{prefix}.vera_lambda_b.default"].copy_(module.peft_vera_lambda_b["all"])
            params[f"{prefix}.vera_lambda_d.default"].copy_(module.peft_vera_lambda_d["all"])
            copied += 1
    assert copied == len(targets) * len(build(backbone).blocks)
    # same trainable vectors on both sides: d_out + r per layer
    heads = sum(p.numel() for head in head_modules(ours).values() for p in head.parameters())
    vectors = sum(p.numel() for n, p in theirs.named_parameters() if "vera_lambda" in n)
    assert ri.trainable_parameters(ours) - heads == vectors
    copy_heads(ours, theirs)
    images, _ = batch()
    with torch.no_grad():
        torch.testing.assert_close(ours(images), theirs(images), atol=TOL["peer"], rtol=0.0)
    # folding the update in gives the same plain model on both sides
    ri.merge(ours, unload=True)
    merged = theirs.merge_and_unload()
    with torch.no_grad():
        torch.testing.assert_close(ours(images), merged(images), atol=TOL["peer"], rtol=0.0)

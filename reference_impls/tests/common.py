"""Shared tables of the reference-implementation tests: backbones, cases, tolerances.

Adding a method means adding one line to `CASES` (and, for the parameter-count test, one formula
in test_param_counts.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import timm
import torch
from torch import nn

import reference_impls as ri


@dataclass(frozen=True)
class Case:
    """One configured method of the invariant matrix.

    Attributes:
        method: Registry name.
        kwargs: Config fields passed to `ri.apply`.
        identity: The paper promises that the adapted model equals the backbone right after apply.
        mergeable: The method can be folded into the backbone weights.
    """

    method: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    identity: bool = True
    mergeable: bool = True

    @property
    def id(self) -> str:
        args = ",".join(f"{k}={v}" for k, v in self.kwargs.items()).replace(" ", "").replace("'", "")
        return f"{self.method}({args})"


CASES: list[Case] = [
    Case("linear-probing"),
    Case("full-finetuning"),
    Case("partial-k", {"k": 1}),
    Case("bitfit"),
    Case("ln-tuning"),
    Case("lora", {"r": 4, "alpha": 8.0}),
    Case("lora", {"r": 2, "targets": ("q", "k", "v", "proj", "fc1", "fc2")}),
    Case("lora", {"r": 2, "targets": ("qkv",), "dropout": 0.1}),
    Case("dora", {"r": 4}),
    Case("dora", {"r": 2, "targets": ("q", "v", "proj", "fc1"), "detach_norm": False}),
    Case("ia3"),
    Case("ia3", {"targets": ("q", "k", "v", "proj", "fc1", "fc2"), "feedforward": ("fc1", "fc2")}),
    Case("vera", {"r": 4}),
    Case("vera", {"r": 3, "targets": ("qkv", "proj", "fc1", "fc2"), "dropout": 0.1, "seed": 7}),
    Case("ssf"),
    Case("ssf", {"targets": ("norm", "fc1"), "init_std": 0.02}, identity=False),
    Case("vpt-shallow", {"num_tokens": 3}, identity=False, mergeable=False),
    Case("vpt-deep", {"num_tokens": 3}, identity=False, mergeable=False),
    Case("adapter", {"bottleneck": 4}, mergeable=False),
    Case("adapter", {"bottleneck": 3, "positions": ("mlp",), "activation": "quick_gelu", "train_norms": False,
                     "dropout": 0.1}, mergeable=False),
    Case("adaptformer", {"bottleneck": 4}, mergeable=False),
    Case("convpass", {"dim": 4, "scale": 0.5}, mergeable=False),
    Case("convpass", {"dim": 3, "positions": ("attn",), "conv_init": "xavier"}, mergeable=False),
    Case("visual-prompting", {"prompt_size": 3}, identity=False, mergeable=False),
    Case("visual-prompting", {"prompt_size": 5, "init": "zeros"}, mergeable=False),
    Case("prefix-tuning", {"num_tokens": 3}, identity=False, mergeable=False),
    # timm starts biases at 0 and LayerNorms at identity, so D (b0 * D) and a scalar B (same shift on
    # every output of a zero-mean input) have no effect here: test_glora.py covers them
    Case("glora", {"r": 2, "d": "none"}),
    Case("glora", {"a": "scalar", "b": "none", "c": "vector", "d": "none", "e": "scalar", "targets": ("qkv", "fc2"),
                   "overrides": ("blocks.0.mlp.fc2=VVLNV", "blocks.1.mlp.fc2=LLVNV")}),
    Case("noah", {"prompt_tokens": 2, "lora_ranks": 2, "adapter_dims": 3}, identity=False, mergeable=False),
    Case("noah", {"prompt_tokens": (3, 0), "lora_ranks": (0, 2), "adapter_dims": (4, 0), "dropout": 0.0},
         identity=False, mergeable=False),
    Case("lst", {"reduction": 4}, identity=False, mergeable=False),
    Case("lst", {"side_layers": (1,), "num_heads": 1}, identity=False, mergeable=False),
    Case("side-tuning", {"width": 8, "depth": 2}, identity=False, mergeable=False),
    Case("side-tuning", {"side": "mlp", "width": 8, "depth": 2, "pool_size": 4}, identity=False, mergeable=False),
    Case("side-tuning", {"side": "vit", "width": 8, "depth": 1, "num_heads": 2, "learn_alpha": False},
         identity=False, mergeable=False),
    Case("fact", {"r": 2}),
    Case("fact", {"form": "tk", "r": 3, "scale": 2.0, "dropout": 0.0, "targets": ("q", "v", "fc2")}),
    Case("repadapter", {"hidden_dim": 4}),
    Case("repadapter", {"hidden_dim": 4, "groups": 4, "scale": 0.5, "dropout": 0.0, "positions": ("attn",)}),
    Case("kadaptation", {"n": 4, "r": 2}),
    Case("kadaptation", {"n": 8, "factorized_a": False, "bias": False, "dropout": 0.0,
                         "targets": ("q", "k", "v", "proj", "fc1", "fc2")}),
]

# Tiny timm vision transformers: class token + token pooling, no class token + average pooling,
# register tokens (with no_embed_class), and DeiT with a distillation token.
TINY = {"pretrained": False, "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 5}
BACKBONES: dict[str, tuple[str, dict[str, Any]]] = {
    "cls-token": ("vit_tiny_patch16_224", {}),
    "avg-pool": ("vit_tiny_patch16_224", {"class_token": False, "global_pool": "avg"}),
    "registers": ("vit_base_patch16_reg4_gap_256", {}),
    "distilled": ("deit_tiny_distilled_patch16_224", {}),
}

# Absolute tolerances, all in one place. The tests run in float64 (conftest.py): two computations
# of the same real-valued function differ only by rounding, float64's unit roundoff is 1.1e-16, and
# a tiny ViT's outputs are of order 1 after a few hundred rounded operations, so such differences
# stay near 1e-14. 1e-10 leaves four orders of magnitude of margin on any CPU, while a real
# mismatch (a wrong fold or scale) moves the outputs by 1e-3 or more once `perturb` has run.
TOL: dict[str, float] = {
    "identity": 0.0,  # un-adapted vs freshly adapted output
    "merge": 1e-10,  # merged vs unmerged output (the same function, rounded differently)
    "unmerge": 0.0,  # restored weight vs original weight
    "save_load": 0.0,  # output before saving vs after loading into a fresh model
    "peer": 1e-10,  # our output vs HF PEFT's output (the same function, rounded differently)
}

NUM_CLASSES = TINY["num_classes"]


def build(backbone: str = "cls-token", seed: int = 0, **overrides: Any) -> nn.Module:
    """A tiny, randomly initialized timm model in eval mode; the same seed gives the same weights."""
    arch, kwargs = BACKBONES[backbone]
    torch.manual_seed(seed)
    model = timm.create_model(arch, **{**TINY, **kwargs, **overrides})
    return model.eval()


def batch(seed: int = 1, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed batch of images and labels for the tiny models."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, TINY["img_size"], TINY["img_size"], generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=generator)
    return images, labels


@torch.no_grad()
def perturb(model: nn.Module, seed: int = 2, scale: float = 0.1) -> None:
    """Move every adapter parameter away from its initial value (LoRA's B away from zero, ...),
    so that equivalence tests cannot pass because an update is still zero."""
    generator = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    for name in ri.adapter_parameter_names(model):
        p = params[name]
        p.add_(scale * torch.randn(p.shape, generator=generator).to(p))


def applied(case: Case, backbone: str = "cls-token", seed: int = 0, perturbed: bool = True) -> nn.Module:
    """Build a tiny backbone, apply the case's method and (by default) perturb its parameters."""
    model = build(backbone, seed)
    ri.apply(model, case.method, **case.kwargs)
    if perturbed:
        perturb(model)
    return model


def other_case(case: Case) -> Case:
    """A case of a different method (for refusal tests)."""
    return Case("bitfit") if case.method != "bitfit" else Case("ln-tuning")

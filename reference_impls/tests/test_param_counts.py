"""Trainable-parameter counts on ViT-B/16 equal formulas derived by hand from the papers.

The model is built on the `meta` device (no memory, no weights): counting needs only shapes, and
it checks that every method creates its parameters on the device of the layer it wraps.
"""

from __future__ import annotations

import pytest
import timm
import torch

import reference_impls as ri

D = 768  # embedding width of ViT-B/16
L = 12  # blocks
C = 100  # classes (e.g. CIFAR-100 in VTAB-1k)
N = (224 // 16) ** 2  # patch tokens
HEAD = D * C + C
# one block: qkv (3d^2 + 3d), proj (d^2 + d), fc1 (4d^2 + 4d), fc2 (4d^2 + d), two LayerNorms (4d)
BLOCK = 12 * D * D + 13 * D
FINAL_NORM = 2 * D

# (method, kwargs, expected trainable parameters including the head)
COUNTS = [
    ("linear-probing", {}, HEAD),
    # patch embedding (3*16*16*d + d), class token d, position embedding (N + 1) d, blocks, final norm
    ("full-finetuning", {}, (3 * 16 * 16 * D + D) + D + (N + 1) * D + L * BLOCK + FINAL_NORM + HEAD),
    ("partial-k", {"k": 1}, BLOCK + FINAL_NORM + HEAD),
    ("partial-k", {"k": 4}, 4 * BLOCK + FINAL_NORM + HEAD),
    # biases: patch embedding d; per block qkv 3d, proj d, fc1 4d, fc2 d, two LayerNorms 2d; final norm d
    ("bitfit", {}, D + L * (3 * D + D + 4 * D + D + 2 * D) + D + HEAD),
    ("bitfit", {"include_norm_bias": False}, D + L * (3 * D + D + 4 * D + D) + HEAD),
    # gain and bias of 2 LayerNorms per block and of the final norm
    ("ln-tuning", {}, (2 * L + 1) * 2 * D + HEAD),
    # r (d_in + d_out) per adapted matrix: 12 * 2 * (2 * 8 * 768) = 294,912
    ("lora", {"r": 8}, L * 2 * (8 * D + D * 8) + HEAD),
    ("lora", {"r": 8, "targets": ("q", "k", "v", "proj")}, L * 4 * (8 * D + D * 8) + HEAD),
    ("lora", {"r": 4, "targets": ("fc1", "fc2")}, L * (4 * (D + 4 * D) + 4 * (4 * D + D)) + HEAD),
    # the VTAB-1k tables' LoRA (NOAH's code: rank 8 on the fused qkv)
    ("lora", {"preset": "vtab-1k"}, L * (8 * D + 3 * D * 8) + HEAD),
    # LoRA's count plus a magnitude per adapted output feature: 12 * 2 * (2 * 8 * 768 + 768)
    ("dora", {"r": 8}, L * 2 * (8 * D + D * 8 + D) + HEAD),
    ("dora", {"r": 8, "targets": ("qkv",)}, L * (8 * D + 3 * D * 8 + 3 * D) + HEAD),
    # l_k, l_v (d each) and l_ff (4d) per block
    ("ia3", {}, L * (D + D + 4 * D) + HEAD),
    # d_out + r per adapted matrix (b and d); the shared random A, B are buffers: 12 * 2 * (768 + 256) = 24,576
    ("vera", {}, L * 2 * (D + 256) + HEAD),
    ("vera", {"r": 16, "targets": ("qkv", "fc1", "fc2")}, L * ((3 * D + 16) + (4 * D + 16) + (D + 16)) + HEAD),
    # 2C per modulated operation: patch embedding d; per block norm1 d, qkv 3d, proj d, norm2 d, fc1 4d,
    # fc2 d (11d, i.e. 22d); final norm d
    ("ssf", {}, 2 * D + L * 2 * (D + 3 * D + D + D + 4 * D + D) + 2 * D + HEAD),
    ("ssf", {"targets": ("norm",)}, (2 * L + 1) * 2 * D + HEAD),
    # p prompt tokens of width d, once (shallow) or per block (deep)
    ("vpt-shallow", {"num_tokens": 50}, 50 * D + HEAD),
    ("vpt-deep", {"num_tokens": 10}, L * 10 * D + HEAD),
    # two adapters per block, 2 m d + m + d each, plus the gain and bias of 2 LayerNorms per block and the final norm
    ("adapter", {}, L * 2 * (2 * 64 * D + 64 + D) + (2 * L + 1) * 2 * D + HEAD),
    # the VTAB-1k tables' Adapter (NOAH's code): one adapter of width 8 per block, norms frozen
    ("adapter", {"preset": "vtab-1k"}, L * (2 * 8 * D + 8 + D) + HEAD),
    # one AdaptMLP branch per block: 2 d m + m + d
    ("adaptformer", {}, L * (2 * 64 * D + 64 + D) + HEAD),
    ("adaptformer", {"preset": "vtab-1k"}, L * (2 * 8 * D + 8 + D) + HEAD),
    # per bypass: 1x1 down d d' + d', 3x3 conv 9 d'^2 + d', 1x1 up d' d + d; two per block (one for Convpass-attn)
    ("convpass", {}, 2 * L * (D * 8 + 8 + 9 * 8 * 8 + 8 + 8 * D + D) + HEAD),
    ("convpass", {"preset": "vtab-1k-attn/dtd"}, L * (D * 8 + 8 + 9 * 8 * 8 + 8 + 8 * D + D) + HEAD),
    # RGB frame of width p on an H x H image: 2 strips p x H and 2 strips (H - 2p) x p = 12 p (H - p)
    ("visual-prompting", {}, 12 * 30 * (224 - 30) + HEAD),
    ("visual-prompting", {"prompt_size": 112}, 3 * 224 * 224 + HEAD),
    # p key and p value vectors of width d per block
    ("prefix-tuning", {}, L * 2 * 10 * D + HEAD),
    # per adapted (d_out x d_in) layer: A, B low rank 2 r (d_in + d_out), C low rank r (d_in + 1), D, E vectors 2 d_out
    ("glora", {}, L * sum(2 * 4 * (o + i) + 4 * (i + 1) + 2 * o for o, i in ((3 * D, D), (D, D), (4 * D, D), (D, 4 * D))) + HEAD),
    # B low rank on qkv alone is LoRA on the fused qkv: r (d + 3d)
    ("glora", {"r": 8, "a": "none", "c": "none", "d": "none", "e": "none", "targets": ("qkv",)}, L * 8 * (D + 3 * D) + HEAD),
    # A vector d_out, B scalar 1, C vector d_in, D scalar 1, E vector d_out
    ("glora", {"a": "vector", "b": "scalar", "c": "vector", "d": "scalar", "e": "vector"},
     L * sum(o + 1 + i + 1 + o for o, i in ((3 * D, D), (D, D), (4 * D, D), (D, 4 * D))) + HEAD),
    # per block: p d prompts, r (d + 3d) LoRA on qkv, 2 h d + h + d adapter; 10 / 10 / 10 in all 12 blocks
    ("noah", {}, L * (10 * D + 10 * (D + 3 * D) + (2 * 10 * D + 10 + D)) + HEAD),
    ("noah", {"prompt_tokens": (5,) * 6 + (0,) * 6, "lora_ranks": 1, "adapter_dims": (8,) * 3 + (0,) * 9},
     6 * 5 * D + L * 1 * (D + 3 * D) + 3 * (2 * 8 * D + 8 + D) + HEAD),
    # side width w = d / 8 = 96, MLP hidden 4w: a block has 2 LayerNorms 4w, qkv 3w^2 + 3w, proj w^2 + w,
    # fc1 4w^2 + 4w, fc2 4w^2 + w; each of 12 rungs adds a ladder d w + w (biased, as in the
    # released scripts) and a gate; plus the first down-projection d w + w, the side's final
    # LayerNorm 2w and the up-projection w d + d
    ("lst", {}, L * ((12 * 96 * 96 + 13 * 96) + (D * 96 + 96) + 1) + (D * 96 + 96) + 2 * 96 + (96 * D + D) + HEAD),
    ("lst", {"reduction": 4, "side_layers": (3, 7, 11)},
     3 * ((12 * 192 * 192 + 13 * 192) + (D * 192 + 192) + 1) + (D * 192 + 192) + 2 * 192 + (192 * D + D) + HEAD),
    # conv side network: 4 x (3x3 conv + bias, GroupNorm 2 x 64), first from 3 channels; linear 64 -> d; alpha
    ("side-tuning", {}, (9 * 3 * 64 + 64 + 128) + 3 * (9 * 64 * 64 + 64 + 128) + (64 * D + D) + 1 + HEAD),
    # MLP on the 8 x 8 pooled image: 192 -> 64 -> d; alpha
    ("side-tuning", {"side": "mlp", "depth": 2}, (3 * 64 * 64 + 64) + (64 * D + D) + 1 + HEAD),
    # ViT-Ti-like side network of width 192, 2 blocks: patch embedding, class token, 197 position
    # embeddings, blocks, final norm, classifier 192 -> d; alpha fixed (not a parameter)
    ("side-tuning", {"side": "vit", "width": 192, "depth": 2, "num_heads": 3, "learn_alpha": False},
     (3 * 16 * 16 * 192 + 192) + 192 + (N + 1) * 192 + 2 * (12 * 192 * 192 + 13 * 192) + 2 * 192 + (192 * D + D) + HEAD),
    # shared U, V (2 d r) plus a core per d x d slice: 12 slices per block (q, k, v, proj, 4 of fc1, 4 of fc2)
    ("fact", {}, 2 * D * 8 + L * 12 * 8 * 8 + HEAD),
    # FacT-TK: shared U, V, core tensor r^3, and one row of P (r) per slice
    ("fact", {"form": "tk", "r": 32}, 2 * D * 32 + 32**3 + L * 12 * 32 + HEAD),
    ("fact", {"preset": "vtab-1k-tt4"}, 2 * D * 4 + L * 12 * 4 * 4 + HEAD),
    ("fact", {"r": 4, "targets": ("q", "v")}, 2 * D * 4 + L * 2 * 4 * 4 + HEAD),
    # per adapter: W_d d h + b_d h, group-wise W_u d h / g + b_u d; two adapters per block (h = 8, g = 2)
    ("repadapter", {}, L * 2 * (D * 8 + 8 + D * 8 // 2 + D) + HEAD),
    ("repadapter", {"positions": ("attn",), "hidden_dim": 16, "groups": 4}, L * (D * 16 + 16 + D * 16 // 4 + D) + HEAD),
    # per adapted d x d part: u_i, v_i of n blocks (r (d + d)) and a bias d; shared A_i = a_i c_i^T: 2 n^2 per type
    ("kadaptation", {}, L * 2 * (1 * (D + D) + D) + 2 * 2 * 32 * 32 + HEAD),
    # unfactored A_i: n^3 per type; fc1 (4d x d) and fc2 (d x 4d): r (4d + d) each
    ("kadaptation", {"n": 16, "r": 2, "factorized_a": False, "bias": False, "targets": ("q", "k", "v", "fc1", "fc2")},
     L * (3 * 2 * (D + D) + 2 * 2 * (4 * D + D)) + 5 * 16**3 + HEAD),
]


def test_reference_numbers() -> None:
    assert L * 2 * (8 * D + D * 8) == 294_912
    assert (3 * 16 * 16 * D + D) + D + (N + 1) * D + L * BLOCK + FINAL_NORM + D * 1000 + 1000 == 86_567_656


def test_every_method_is_counted() -> None:
    counted, registered = {m for m, _, _ in COUNTS}, set(ri.list_methods(backbone="vit"))
    assert not registered - counted, f"add a parameter-count formula to COUNTS in this file for {sorted(registered - counted)}"
    assert not counted - registered, f"COUNTS names methods that are not registered: {sorted(counted - registered)}"


@pytest.mark.parametrize(
    ("method", "kwargs", "expected"), COUNTS, ids=[f"{m}{k or ''}" for m, k, _ in COUNTS]
)
def test_trainable_parameters_vit_b16(method: str, kwargs: dict, expected: int) -> None:
    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=C, device="meta")
    ri.apply(model, method, **kwargs)
    assert ri.trainable_parameters(model) == expected
    assert all(p.device == torch.device("meta") for p in model.parameters())

"""LoRA-specific checks: fused-qkv slices, the merged forward, dtype and device of new tensors."""

from __future__ import annotations

import torch

import reference_impls as ri
from reference_impls.methods.lora import LoRALinear

from .common import TOL, Case, applied, batch, build


def qkv_output(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    seen = []
    layer = model.blocks[0].attn.qkv
    hook = layer.register_forward_hook(lambda _m, _args, out: seen.append(out.detach()))
    with torch.no_grad():
        model(images)
    hook.remove()
    return seen[0]


def test_q_target_changes_only_the_query_third() -> None:
    images, _ = batch()
    plain = qkv_output(build(), images)
    adapted = qkv_output(applied(Case("lora", {"targets": ("q",)})), images)
    d = plain.shape[-1] // 3
    assert not torch.allclose(adapted[..., :d], plain[..., :d])
    torch.testing.assert_close(adapted[..., d:], plain[..., d:], atol=0.0, rtol=0.0)


def test_delta_weight_is_scaled_b_times_a_in_the_right_rows() -> None:
    model = applied(Case("lora", {"r": 4, "alpha": 2.0, "targets": ("q", "v")}))
    layer = model.blocks[0].attn.qkv
    assert isinstance(layer, LoRALinear)
    delta = layer.delta_weight()
    d = delta.shape[0] // 3
    a, b = layer.peft_lora_A, layer.peft_lora_B
    torch.testing.assert_close(delta[:d], 0.5 * b["q"] @ a["q"])
    assert torch.count_nonzero(delta[d : 2 * d]) == 0
    torch.testing.assert_close(delta[2 * d :], 0.5 * b["v"] @ a["v"])


def test_merged_forward_uses_only_the_base_layer() -> None:
    images, _ = batch()
    model = applied(Case("lora", {"targets": ("q", "v", "fc1")}))
    with torch.no_grad():
        before = model(images)
        ri.merge(model)
        for name, param in model.named_parameters():
            if "peft_" in name:
                param.fill_(float("nan"))  # would poison the output if the branch still ran
        torch.testing.assert_close(model(images), before, atol=TOL["merge"], rtol=0.0)


def test_new_parameters_follow_dtype_of_wrapped_layer() -> None:
    model = build().to(torch.float64)
    ri.apply(model, "lora", targets=("q", "fc2"))
    assert {p.dtype for n, p in model.named_parameters() if "peft_" in n} == {torch.float64}
    images, _ = batch()
    assert model(images.double()).dtype == torch.float64


def test_dropout_only_in_training_mode() -> None:
    images, _ = batch()
    model = applied(Case("lora", {"dropout": 0.5}))
    with torch.no_grad():
        assert torch.equal(model(images), model(images))
        model.train()
        assert not torch.equal(model(images), model(images))

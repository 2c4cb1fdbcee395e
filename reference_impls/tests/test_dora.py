"""DoRA-specific checks: magnitude per output feature, the norm treated as a constant, and the
relation to LoRA."""

from __future__ import annotations

import torch

import reference_impls as ri
from reference_impls.methods.dora import DoRALinear

from .common import TOL, Case, applied, batch, build


def test_magnitude_starts_at_the_row_norms_of_adapted_parts() -> None:
    plain = build()
    model = ri.apply(build(), "dora", r=4, targets=("q", "v", "fc1"))
    weight = plain.blocks[0].attn.qkv.weight
    d = weight.shape[0] // 3
    qkv = model.blocks[0].attn.qkv
    assert isinstance(qkv, DoRALinear) and set(qkv.peft_magnitude) == {"q", "v"}
    torch.testing.assert_close(qkv.peft_magnitude["q"], weight[:d].norm(dim=1), atol=0.0, rtol=0.0)
    torch.testing.assert_close(qkv.peft_magnitude["v"], weight[2 * d :].norm(dim=1), atol=0.0, rtol=0.0)
    fc1 = model.blocks[0].mlp.fc1
    assert fc1.peft_magnitude["all"].shape == (fc1.base_layer.out_features,)


def test_merged_rows_have_the_learned_magnitude_as_norm() -> None:
    """W' = m ⊙ V / ||V||_c: each adapted output feature's weight row has norm m (per output
    feature, as HF PEFT and the official code normalize); rows not adapted are unchanged."""
    model = applied(Case("dora", {"r": 4, "targets": ("q", "v")}))
    qkv = model.blocks[0].attn.qkv
    original = qkv.base_layer.weight.clone()
    d = original.shape[0] // 3
    ri.merge(model)
    merged = qkv.base_layer.weight
    magnitude_q, magnitude_v = qkv.peft_magnitude["q"], qkv.peft_magnitude["v"]
    # ||m v / ||v|| || = |m| (the perturbation may have made some entries negative)
    torch.testing.assert_close(merged[:d].norm(dim=1), magnitude_q.abs())
    torch.testing.assert_close(merged[2 * d :].norm(dim=1), magnitude_v.abs())
    assert torch.equal(merged[d : 2 * d], original[d : 2 * d])
    # the direction is that of W_0 + (alpha / r) B A, with the sign of m
    direction = original + qkv.delta_weight()
    cosine = torch.nn.functional.cosine_similarity(merged[:d], direction[:d], dim=1)
    torch.testing.assert_close(cosine, torch.sign(magnitude_q))


def test_detach_norm_changes_gradients_not_outputs() -> None:
    images, labels = batch()
    grads, outputs = {}, {}
    for detach in (True, False):
        model = applied(Case("dora", {"r": 4, "detach_norm": detach})).train()
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        outputs[detach] = loss.detach()
        grads[detach] = model.blocks[0].attn.qkv.peft_lora_B["q"].grad.clone()
    assert torch.equal(outputs[True], outputs[False])
    assert not torch.allclose(grads[True], grads[False])


def test_equals_lora_when_the_magnitude_is_the_norm_of_the_adapted_weight() -> None:
    """DoRA reuses LoRA's update: with m = ||W_0 + ΔW||_c the rescaling is 1 and DoRA is LoRA."""
    images, _ = batch()
    lora = applied(Case("lora", {"r": 4, "targets": ("q", "v", "fc2")}))
    dora = ri.apply(build(), "dora", r=4, targets=("q", "v", "fc2"))
    params = dict(dora.named_parameters())
    with torch.no_grad():
        for name, param in lora.named_parameters():
            params[name].copy_(param)  # LoRA factors and head, same names
        for module in dora.modules():
            if isinstance(module, DoRALinear):
                norms = (module.base_layer.weight + module.delta_weight()).norm(dim=1)
                start = 0
                for part, size in module.splits:
                    if part in module.peft_magnitude:
                        module.peft_magnitude[part].copy_(norms[start : start + size])
                    start += size
        torch.testing.assert_close(dora(images), lora(images), atol=TOL["merge"], rtol=0.0)

"""MaPLe: the coupling P~_k = F_k(P_k) and the deep replacement in both towers against an
independent recomputation of both encoders, the text side's start from the hand-written prompt, and
the gradient that reaches the language prompts from the image side."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import reference_impls as ri
from reference_impls.clip import class_prompts, clip_logits, tokenize
from reference_impls.methods.maple import MaPLeBlock
from reference_impls.wrappers import Wrapper

from .clip_cases import CLASSNAMES, TOL, build_clip, clip_batch
from .common import perturb

CONFIGS = [
    pytest.param({"depth": 2}, id="depth2-init"),
    pytest.param({"depth": 1, "n_ctx": 3, "init_text": None}, id="depth1-random"),
    pytest.param({"depth": 2, "n_ctx": 4, "init_text": "a good photo of"}, id="depth2-4tokens"),
]


def original(blocks: nn.ModuleList) -> list[nn.Module]:
    return [b.base_layer if isinstance(b, Wrapper) else b for b in blocks]


def coupled(model: nn.Module, k: int) -> torch.Tensor:
    """P~_k = P_k A_k^T + a_k, with LN_pre on the first block's prompts (written out)."""
    classifier = model.peft_classifier
    coupling = classifier.peft_couplings[k]
    projected = classifier.peft_prompts[k] @ coupling.weight.t() + coupling.bias
    if k == 0:
        ln = model.visual.ln_pre
        projected = F.layer_norm(projected, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
    return projected


def text_features(model: nn.Module, init_text: str | None) -> torch.Tensor:
    """The text encoder written out: the sentence's embeddings with positions 1..b set to P_0, and
    positions 1..b of the input of block k set to P_k for 0 < k < J."""
    prompts = model.peft_classifier.peft_prompts
    depth, b = prompts.shape[0], prompts.shape[1]
    prefix = init_text if init_text is not None else " ".join(["X"] * b)
    tokens = tokenize(model, [f"{prefix} {name.replace('_', ' ')}." for name in CLASSNAMES])
    x = model.token_embedding(tokens)
    x = torch.cat([x[:, :1], prompts[0].expand(x.shape[0], -1, -1), x[:, 1 + b :]], dim=1)
    x = x + model.positional_embedding
    for k, block in enumerate(original(model.transformer.resblocks)):
        if 0 < k < depth:
            x = torch.cat([x[:, :1], prompts[k].expand(x.shape[0], -1, -1), x[:, 1 + b :]], dim=1)
        x = block(x, attn_mask=model.attn_mask)
    x = model.ln_final(x)[torch.arange(x.shape[0]), tokens.argmax(dim=-1)]
    return x @ model.text_projection


def image_features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The image encoder written out: [c, P~_0, E_0] into block 0, P~_k replacing the prompt positions
    before block k < J, prompt outputs dropped before LN_post."""
    visual = model.visual
    depth, b = model.peft_classifier.peft_prompts.shape[:2]
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + visual.positional_embedding
    x = visual.ln_pre(x)
    for k, block in enumerate(original(visual.transformer.resblocks)):
        if k < depth:
            rest = x[:, 1:] if k == 0 else x[:, 1 + b :]
            x = torch.cat([x[:, :1], coupled(model, k).expand(x.shape[0], -1, -1), rest], dim=1)
        x = block(x)
    x = visual.ln_post(torch.cat([x[:, :1], x[:, 1 + b :]], dim=1))
    return x[:, 0] @ visual.proj


def applied_maple(**kwargs) -> nn.Module:  # noqa: ANN003
    model = ri.apply(build_clip(), "maple", classnames=CLASSNAMES, **kwargs)
    with torch.no_grad():
        perturb(model)
    return model


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_logits_match_an_independent_recomputation(kwargs: dict) -> None:
    model = applied_maple(**kwargs)
    images, _ = clip_batch()
    with torch.no_grad():
        image = image_features(model, images)
        text = text_features(model, kwargs.get("init_text", "a photo of a"))
        expected = model.logit_scale.exp() * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).t()
        actual = clip_logits(model, images)
    torch.testing.assert_close(actual, expected, atol=TOL["zero_shot"], rtol=0.0)


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_each_block_receives_its_prompts(kwargs: dict) -> None:
    """Inputs of the original blocks: P_k after SOS in text block k, F_k(P_k) after the class token in
    vision block k; blocks from J on get their input unchanged (prompt outputs included)."""
    model = applied_maple(**kwargs)
    depth, b = model.peft_classifier.peft_prompts.shape[:2]
    text_blocks, vision_blocks = original(model.transformer.resblocks), original(model.visual.transformer.resblocks)
    seen: dict[tuple[str, int], torch.Tensor] = {}
    hooks = [block.register_forward_pre_hook(lambda _m, args, key=(tower, k): seen.__setitem__(key, args[0].detach()))
             for tower, blocks in (("text", text_blocks), ("vision", vision_blocks))
             for k, block in enumerate(blocks)]
    images, _ = clip_batch()
    with torch.no_grad():
        clip_logits(model, images)
    for hook in hooks:
        hook.remove()
    prompts = model.peft_classifier.peft_prompts.detach()
    with torch.no_grad():
        # block 0 of the text encoder: P_0 plus the position embedding of its positions
        first = (prompts[0] + model.positional_embedding[1 : 1 + b]).expand(len(CLASSNAMES), -1, -1)
        torch.testing.assert_close(seen["text", 0][:, 1 : 1 + b], first, atol=0.0, rtol=0.0)
        for k in range(len(vision_blocks)):
            tokens = seen["vision", k]
            assert tokens.shape[1] == 1 + b + (images.shape[-1] // 8) ** 2
            if k < depth:
                torch.testing.assert_close(tokens[:, 1 : 1 + b], coupled(model, k).expand(len(images), -1, -1),
                                           atol=TOL["zero_shot"], rtol=0.0)
            if 0 < k < depth:
                assert torch.equal(seen["text", k][:, 1 : 1 + b], prompts[k].expand(len(CLASSNAMES), -1, -1))
            if k >= depth:  # no replacement: block k - 1's prompt outputs go on
                assert not torch.equal(tokens[:, 1 : 1 + b], coupled(model, k - 1).expand(len(images), -1, -1))


def test_text_side_starts_as_the_hand_written_prompt() -> None:
    """With the released initialization (P_0 = "a photo", "of a" fixed) and no deep text prompts, the
    class features before training are zero-shot CLIP's; the image side is prompted, so the logits are not."""
    model = ri.apply(build_clip(), "maple", classnames=CLASSNAMES, depth=1)
    hand_written = tokenize(model, class_prompts("a photo of a {}.", CLASSNAMES))
    images, _ = clip_batch()
    with torch.no_grad():
        features = model.peft_classifier.text_features(model, model.encode_image(images))
        torch.testing.assert_close(features, model.encode_text(hand_written), atol=TOL["zero_shot"], rtol=0.0)
        zero_shot = ri.apply(build_clip(), "zero-shot-clip", classnames=CLASSNAMES)
        assert (clip_logits(model, images) - clip_logits(zero_shot, images)).abs().max() > 1e-6


def test_the_image_loss_trains_the_language_prompts() -> None:
    """The coupling: every vision prompt is a function of a language prompt, so a loss on the image
    features alone reaches every P_k and every F_k."""
    model = ri.apply(build_clip(), "maple", classnames=CLASSNAMES, depth=2)
    images, _ = clip_batch()
    model.peft_classifier.image_features(model, images).square().sum().backward()
    classifier = model.peft_classifier
    for k in range(2):
        assert classifier.peft_prompts.grad[k].abs().max() > 0
        assert classifier.peft_couplings[k].weight.grad.abs().max() > 0


def test_prompts_are_handed_over_for_one_pass_only() -> None:
    model = applied_maple(depth=2)
    images, _ = clip_batch()
    with torch.no_grad():
        clip_logits(model, images)
        wrappers = [m for m in model.modules() if isinstance(m, MaPLeBlock)]
        assert len(wrappers) == 1 + 2  # text block 1; vision blocks 0 and 1
        assert all(w.prompt is None and w.num_tokens == 0 for w in wrappers)
        # outside the classifier the wrapped towers are plain CLIP
        torch.testing.assert_close(model.encode_image(images), build_clip().encode_image(images), atol=0.0, rtol=0.0)


def test_bad_configurations_are_refused() -> None:
    with pytest.raises(ValueError, match=r"maple: config field 'depth' \(3\) exceeds the blocks"):
        ri.apply(build_clip(), "maple", classnames=CLASSNAMES, depth=3)
    with pytest.raises(ValueError, match=r"maple: config field 'n_ctx' \(5\) exceeds the 4 tokens"):
        ri.apply(build_clip(), "maple", classnames=CLASSNAMES, depth=1, n_ctx=5)
    model = build_clip()
    model.visual = nn.Linear(2, 2)
    with pytest.raises(TypeError, match=r"maple: MaPLe needs a vision-transformer image encoder"):
        ri.apply(model, "maple", classnames=CLASSNAMES, depth=1)
    model = ri.apply(build_clip(), "maple", classnames=CLASSNAMES, depth=1)
    model.visual.set_grad_checkpointing(True)
    with pytest.raises(ValueError, match="gradient checkpointing"):
        clip_logits(model, clip_batch()[0])


def test_released_setting_has_the_papers_parameter_count() -> None:
    """J = 9, b = 2, d_t = 512, d_v = 768 (CLIP ViT-B/16): 3,555,072 trainable parameters, counted on
    a CLIP of those widths (one head per tower, 9 blocks: the count does not depend on the rest)."""
    from .clip_cases import open_clip_or_skip

    open_clip = open_clip_or_skip()
    model = open_clip.CLIP(
        embed_dim=16,
        vision_cfg={"layers": 9, "width": 768, "head_width": 768, "patch_size": 16, "image_size": 32,
                    "mlp_ratio": 0.01},
        text_cfg={"context_length": 16, "vocab_size": 49408, "width": 512, "heads": 1, "layers": 9,
                  "mlp_ratio": 0.01},
    )
    ri.apply(model, "maple", classnames=CLASSNAMES)
    assert ri.trainable_parameters(model) == 9 * 2 * 512 + 9 * (512 * 768 + 768) == 3_555_072

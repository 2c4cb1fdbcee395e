"""VPT on CLIP's image encoder: the logits against an independent recomputation of the prompted
vision tower, where the prompts sit, and the zero-shot text side."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import reference_impls as ri
from reference_impls.clip import class_prompts, clip_logits, tokenize
from reference_impls.wrappers import Wrapper

from .clip_cases import CLASSNAMES, IMAGE_SIZE, TOL, build_clip, clip_batch, open_clip_or_skip
from .common import perturb

P = 3
variants = pytest.mark.parametrize("deep", [True, False], ids=["deep", "shallow"])


def build_clip_pooled(pool_type: str) -> nn.Module:
    """The tiny CLIP of `build_clip`, its image feature pooled by `pool_type` ('tok' or 'avg')."""
    if pool_type == "tok":
        return build_clip()
    open_clip = open_clip_or_skip()
    torch.manual_seed(0)
    model = open_clip.CLIP(
        embed_dim=32,
        vision_cfg={"layers": 2, "width": 64, "head_width": 32, "patch_size": 8, "image_size": IMAGE_SIZE,
                    "pool_type": pool_type},
        text_cfg={"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    )
    return model.eval()


def original_blocks(model: nn.Module) -> list[nn.Module]:
    return [b.base_layer if isinstance(b, Wrapper) else b for b in model.visual.transformer.resblocks]


def prompted_image_features(model: nn.Module, images: torch.Tensor, prompts: list[torch.Tensor | None]) -> torch.Tensor:
    """The image encoder written out: [c, P_0, E_0] into block 0, P_i replacing the prompt positions
    before block i where given, prompt outputs dropped before LN_post and the pooling."""
    visual = model.visual
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + visual.positional_embedding
    x = visual.ln_pre(x)
    p = prompts[0].shape[0]
    for index, block in enumerate(original_blocks(model)):
        prompt = prompts[index]
        if prompt is not None:
            rest = x[:, 1:] if index == 0 else x[:, 1 + p :]
            x = torch.cat([x[:, :1], prompt.expand(x.shape[0], -1, -1), rest], dim=1)
        x = block(x)
    x = visual.ln_post(torch.cat([x[:, :1], x[:, 1 + p :]], dim=1))
    pooled = x[:, 0] if visual.pool_type == "tok" else x[:, 1:].mean(dim=1)
    return pooled @ visual.proj


def block_prompts(model: nn.Module) -> list[torch.Tensor | None]:
    return [getattr(b, "peft_prompt", None) for b in model.visual.transformer.resblocks]


@variants
@pytest.mark.parametrize("pool_type", ["tok", "avg"])
def test_logits_match_an_independent_recomputation(deep: bool, pool_type: str) -> None:
    model = ri.apply(build_clip_pooled(pool_type), "vpt-clip", classnames=CLASSNAMES, num_tokens=P, deep=deep)
    with torch.no_grad():
        perturb(model)
    prompts = block_prompts(model)
    assert sum(p is not None for p in prompts) == (2 if deep else 1)
    images, _ = clip_batch()
    with torch.no_grad():
        image = prompted_image_features(model, images, prompts)
        # the text side is zero-shot CLIP with the template, through open_clip's own encode_text
        text = model.encode_text(tokenize(model, class_prompts("a photo of a {}.", CLASSNAMES)))
        expected = model.logit_scale.exp() * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).t()
        actual = clip_logits(model, images)
    torch.testing.assert_close(actual, expected, atol=TOL["zero_shot"], rtol=0.0)
    # the check can fail: without the prompts the logits differ
    plain = ri.apply(build_clip_pooled(pool_type), "zero-shot-clip", classnames=CLASSNAMES)
    with torch.no_grad():
        assert (clip_logits(plain, images) - actual).abs().max() > 1e-6


@variants
def test_prompts_follow_the_class_token(deep: bool) -> None:
    images, _ = clip_batch()
    plain, model = build_clip(), ri.apply(build_clip(), "vpt-clip", classnames=CLASSNAMES, num_tokens=P, deep=deep)
    seen: list[torch.Tensor] = []
    hooks = [block.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
             for block in original_blocks(model)]
    with torch.no_grad():
        model.encode_image(images)
    for hook in hooks:
        hook.remove()
    before: list[torch.Tensor] = []
    hook = plain.visual.transformer.resblocks[0].register_forward_pre_hook(lambda _m, args: before.append(args[0]))
    with torch.no_grad():
        plain.encode_image(images)
    hook.remove()
    for x, prompt in zip(seen, block_prompts(model)):
        assert x.shape[1] == before[0].shape[1] + P
        if prompt is not None:
            assert torch.equal(x[:, 1 : 1 + P], prompt.expand(x.shape[0], -1, -1))
    # the first block sees the original class and patch tokens around the prompts
    assert torch.equal(seen[0][:, :1], before[0][:, :1])
    assert torch.equal(seen[0][:, 1 + P :], before[0][:, 1:])


def test_prompts_start_from_vpts_uniform_init() -> None:
    model = ri.apply(build_clip(), "vpt-clip", classnames=CLASSNAMES, num_tokens=P)
    conv = model.visual.conv1
    bound = (6.0 / (conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1] + conv.out_channels)) ** 0.5
    for prompt in block_prompts(model):
        assert prompt.shape == (P, conv.out_channels)
        assert prompt.abs().max() <= bound and prompt.abs().max() > bound / 2


def test_the_template_and_the_image_encoder_are_checked() -> None:
    with pytest.raises(ValueError, match=r"vpt-clip: config field 'template' must contain"):
        ri.apply(build_clip(), "vpt-clip", classnames=CLASSNAMES, template="a photo")
    model = build_clip()
    model.visual = nn.Linear(2, 2)
    with pytest.raises(TypeError, match=r"vpt-clip: VPT needs a vision-transformer image encoder"):
        ri.apply(model, "vpt-clip", classnames=CLASSNAMES)
    assert not any(p.requires_grad is False for p in model.parameters()), "a refused apply leaves the model as it was"

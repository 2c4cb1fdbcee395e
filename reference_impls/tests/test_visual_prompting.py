"""Visual-prompting-specific checks: the frame's layout, that the frozen model sees x + M * phi,
frames wider than half the image, non-square images, and the paper's parameter count."""

from __future__ import annotations

import pytest
import torch

import reference_impls as ri
from reference_impls.methods.visual_prompting import frame_strips

from .common import BACKBONES, batch, build, perturb
from .reported import added_parameters

backbones = pytest.mark.parametrize("backbone", list(BACKBONES))


def border_mask(height: int, width: int, size: int) -> torch.Tensor:
    """M: 1 on pixels closer than `size` to the image border."""
    rows, cols = torch.arange(height)[:, None], torch.arange(width)[None, :]
    distance = torch.minimum(torch.minimum(rows, height - 1 - rows), torch.minimum(cols, width - 1 - cols))
    return (distance < size).float()


@pytest.mark.parametrize(
    ("height", "width", "size"), [(32, 32, 3), (24, 40, 5), (32, 32, 16), (32, 32, 20), (24, 40, 13)]
)
def test_prompt_is_zero_outside_the_frame_and_free_on_it(height: int, width: int, size: int) -> None:
    model = ri.apply(build(img_size=(height, width)), "visual-prompting", prompt_size=size)
    prompter = model.patch_embed
    prompt = prompter.prompt()
    mask = border_mask(height, width, size)
    assert prompt.shape == (3, height, width)
    assert torch.equal(prompt * (1 - mask), torch.zeros_like(prompt))
    assert torch.count_nonzero(prompt * mask) == 3 * mask.sum()  # N(0, 1) values are never exactly 0
    # one parameter per frame pixel and channel, no more
    assert sum(p.numel() for p in prompter.peft_prompt.values()) == 3 * int(mask.sum())


def test_official_layout() -> None:
    """cat([left, 0, right], width), then cat([up, ., down], height), as in the paper's padding prompter."""
    prompter = ri.apply(build(), "visual-prompting", prompt_size=3).patch_embed
    s = prompter.peft_prompt
    inner = torch.cat([s["left"], torch.zeros(3, 32 - 6, 32 - 6), s["right"]], dim=2)
    assert torch.equal(prompter.prompt(), torch.cat([s["top"], inner, s["bottom"]], dim=1))
    assert tuple(s["top"].shape) == (3, 3, 32) and tuple(s["left"].shape) == (3, 26, 3)


def test_frame_strips() -> None:
    assert frame_strips(224, 224, 30) == {"top": (30, 224), "bottom": (30, 224), "left": (164, 30), "right": (164, 30)}
    assert frame_strips(32, 32, 16) == {"top": (16, 32), "bottom": (16, 32)}
    assert frame_strips(32, 32, 30) == {"top": (30, 32), "bottom": (2, 32)}
    assert frame_strips(10, 40, 4) == {"top": (4, 40), "bottom": (4, 40), "left": (2, 4), "right": (2, 4)}


@backbones
def test_frozen_model_sees_prompted_images(backbone: str) -> None:
    images, _ = batch()
    model = ri.apply(build(backbone), "visual-prompting", prompt_size=5)
    perturb(model)
    plain = build(backbone)  # same backbone weights; give it the (perturbed) head(s) too
    for name in ("head", "head_dist"):
        if hasattr(plain, name):
            getattr(plain, name).load_state_dict(getattr(model, name).state_dict())
    with torch.no_grad():
        # x~ = x + M ⊙ φ through the untouched model
        expected = plain(images + model.patch_embed.prompt())
        torch.testing.assert_close(model(images), expected, atol=0.0, rtol=0.0)


def test_patch_embed_attributes_stay_readable() -> None:
    model = ri.apply(build(), "visual-prompting", prompt_size=3)
    assert model.patch_embed.grid_size == (4, 4) and model.patch_embed.num_patches == 16
    assert model.patch_embed.img_size == (32, 32)


def test_wrong_image_size_is_refused() -> None:
    model = ri.apply(build(), "visual-prompting", prompt_size=3)
    with pytest.raises(RuntimeError, match=r"made for images of shape \(3, 32, 32\), got \(3, 40, 40\)"):
        model(torch.zeros(1, 3, 40, 40))


def test_zero_prompt_size_is_refused() -> None:
    with pytest.raises(ValueError, match=r"visual-prompting: config field 'prompt_size' must be greater than or equal to 1, got 0"):
        ri.apply(build(), "visual-prompting", prompt_size=0)


def test_count_matches_paper() -> None:
    """The paper's default frame (p = 30 on 224 x 224 images, about 70K parameters in its text; the
    taxonomy entry gives 69,840). No VTAB-1k row in taxonomy/reported reports visual prompting."""
    assert added_parameters("visual-prompting") == 12 * 30 * (224 - 30) == 69_840

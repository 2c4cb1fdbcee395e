"""The invariant matrix of the vision-language methods: every case of `CLIP_CASES` x one test
per invariant, on a tiny random open_clip CLIP (skipped when open_clip is not installed)."""

from __future__ import annotations

import pytest
import torch

import reference_impls as ri
from reference_impls.clip import clip_logits, clip_training_loss

from .clip_cases import CLASSNAMES, CLIP_CASES, TOL, ClipCase, applied_clip, build_clip, clip_batch
from .common import perturb

cases = pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CLIP_CASES])
ZERO_SHOT = [pytest.param(c, id=c.id) for c in CLIP_CASES if c.zero_shot]


def test_every_vision_language_method_has_a_case() -> None:
    with_case, registered = {c.method for c in CLIP_CASES}, set(ri.list_methods(backbone="clip"))
    assert with_case == registered, f"add lines to CLIP_CASES in clip_cases.py for {sorted(registered - with_case)}"


@cases
def test_both_encoders_stay_frozen_and_only_the_method_trains(case: ClipCase) -> None:
    model = applied_clip(case)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(ri.adapter_parameter_names(model))
    assert all(name.startswith("peft_") or ".peft_" in name for name in trainable), trainable
    plain = {n for n, _ in build_clip().named_parameters()}
    assert not trainable & plain, "a parameter of the CLIP model itself is trainable"


@cases
def test_trainable_parameters_follow_the_papers_formula(case: ClipCase) -> None:
    model = applied_clip(case)
    text, embed = model.token_embedding.weight.shape[1], model.text_projection.shape[1]
    expected = case.params(text, embed, len(CLASSNAMES), model.visual.conv1.out_channels)
    assert ri.trainable_parameters(model) == expected


@pytest.mark.parametrize("case", ZERO_SHOT)
def test_zero_shot_clip_is_recovered_where_the_paper_promises_it(case: ClipCase) -> None:
    images, _ = clip_batch()
    hand_written = ri.apply(build_clip(), "zero-shot-clip", classnames=CLASSNAMES, template="a photo of a {}.")
    with torch.no_grad():
        expected, actual = clip_logits(hand_written, images), clip_logits(applied_clip(case), images)
    torch.testing.assert_close(actual, expected, atol=TOL["zero_shot"], rtol=0.0)
    # the check can fail: another prompt gives other logits
    other = ri.apply(build_clip(), "zero-shot-clip", classnames=CLASSNAMES, template="a drawing of a {}.")
    with torch.no_grad():
        assert (clip_logits(other, images) - expected).abs().max() > 1e-6


@cases
def test_optimizer_step_leaves_both_encoders_bit_identical(case: ClipCase) -> None:
    model = applied_clip(case)
    if ri.trainable_parameters(model) == 0:
        pytest.skip(f"{case.method} trains nothing")
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    images, labels = clip_batch()
    clip_training_loss(model, images, labels).backward()
    optimizer.step()
    adapter = set(ri.adapter_parameter_names(model))
    after = model.state_dict()
    for key in before:
        if key not in adapter:
            assert torch.equal(after[key], before[key]), f"frozen tensor {key} changed"
    assert any(not torch.equal(after[k], before[k]) for k in adapter), "no method tensor was updated"


@cases
def test_a_few_steps_lower_the_loss(case: ClipCase) -> None:
    model = applied_clip(case)
    if ri.trainable_parameters(model) == 0:
        pytest.skip(f"{case.method} trains nothing")
    images, labels = clip_batch(n=8)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(5):
        loss = clip_training_loss(model, images, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


@cases
def test_save_load_round_trip(case: ClipCase, tmp_path) -> None:  # noqa: ANN001 (pytest fixture)
    model = applied_clip(case)
    with torch.no_grad():
        perturb(model)
    images, _ = clip_batch()
    path = tmp_path / "adapter.safetensors"
    ri.save_adapter(model, path)
    fresh = ri.load_adapter(build_clip(), path)
    with torch.no_grad():
        torch.testing.assert_close(clip_logits(fresh, images), clip_logits(model, images),
                                   atol=TOL["save_load"], rtol=0.0)


@cases
def test_text_encoder_runs_only_as_often_as_the_method_needs(case: ClipCase) -> None:
    """Class features that do not depend on the image are computed once per pass (or cached)."""
    model = applied_clip(case)
    rows: list[int] = []
    handle = model.transformer.register_forward_hook(lambda module, args, output: rows.append(output.shape[0]))
    images, _ = clip_batch(n=3)
    with torch.no_grad():
        clip_logits(model, images)
    handle.remove()
    assert sum(rows) == case.text_rows(3, len(CLASSNAMES))


def test_the_clip_check_names_what_is_missing() -> None:
    with pytest.raises(TypeError, match=r"coop: the model must be an open_clip CLIP .* without visual"):
        ri.apply(torch.nn.Linear(2, 2), "coop", classnames=CLASSNAMES)
    with pytest.raises(ValueError, match=r"coop: config field 'classnames' must have at least 1"):
        ri.apply(build_clip(), "coop", classnames=[])


def test_clip_logits_without_a_method_says_what_to_do() -> None:
    with pytest.raises(ValueError, match="no vision-language method is applied"):
        clip_logits(build_clip(), clip_batch()[0])


def test_without_open_clip_a_method_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """`import reference_impls` never needs open_clip; applying a method that tokenizes does."""
    import sys

    from reference_impls import clip

    model = build_clip()
    monkeypatch.setitem(sys.modules, "open_clip", None)  # makes `import open_clip` fail
    clip._tokenizer.cache_clear()
    try:
        with pytest.raises(ImportError, match="pip install open_clip_torch"):
            ri.apply(model, "coop", classnames=CLASSNAMES)
    finally:
        clip._tokenizer.cache_clear()


def test_text_encoder_skips_positions_after_the_last_end_token_with_the_same_features() -> None:
    """Causal attention: cutting every position after the batch's last end-of-text token changes no
    feature (float64, against open_clip's own `encode_text` over the full context), and fewer
    positions are run. Every weight is moved off its initialization (zero biases included)."""
    from reference_impls.clip import encode_tokens, tokenize

    model = build_clip().double()
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    tokens = tokenize(model, ["a cat.", "a photo of a small red dog."])
    lengths: list[int] = []
    handle = model.transformer.register_forward_hook(lambda module, args, output: lengths.append(output.shape[1]))
    with torch.no_grad():
        ours = encode_tokens(model, tokens)
        handle.remove()
        theirs = model.encode_text(tokens)
    assert lengths == [int(tokens.argmax(dim=-1).max()) + 1] and lengths[0] < tokens.shape[1]
    torch.testing.assert_close(ours, theirs, atol=TOL["zero_shot"], rtol=0.0)

"""Tip-Adapter and Tip-Adapter-F checks: the logits exp(t) f W_c^T + alpha exp(-beta (1 - f F^T)) L
against a recomputation by hand from a cache built from data, the cache's construction (views
averaged, labels checked), and that the cache travels in adapter files."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

import reference_impls as ri
from reference_impls.clip import clip_logits, tokenize
from reference_impls.registry import _REGISTRY

from .clip_cases import CACHE_IMAGES, CLASSNAMES, TOL, build_clip, clip_batch, prepare_batches
from .common import perturb


def prompt_features(model: nn.Module) -> torch.Tensor:
    """W_c before normalization: open_clip's encode_text of "a photo of a {class}."."""
    return model.encode_text(tokenize(model, [f"a photo of a {name.replace('_', ' ')}." for name in CLASSNAMES]))


def cache_by_hand(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys F_train (normalized image features) and values L_train (one-hot labels)."""
    images = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    features = model.encode_image(images)
    return features / features.norm(dim=-1, keepdim=True), F.one_hot(labels, len(CLASSNAMES)).double()


def logits_by_hand(model: nn.Module, images: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                   alpha: float, beta: float) -> torch.Tensor:
    f = model.encode_image(images)
    f = f / f.norm(dim=-1, keepdim=True)
    w = prompt_features(model)
    w = w / w.norm(dim=-1, keepdim=True)
    affinity = torch.exp(-beta * (1 - f @ keys.t()))
    return model.logit_scale.exp() * f @ w.t() + alpha * affinity @ values


def test_logits_follow_the_cache_equation() -> None:
    alpha, beta = 1.3, 2.5
    model = ri.prepare(build_clip(), "tip-adapter", prepare_batches(), classnames=CLASSNAMES, alpha=alpha, beta=beta)
    assert model.peft_atlas_method["config"]["cache_size"] == CACHE_IMAGES
    images, _ = clip_batch(n=3)
    with torch.no_grad():
        keys, values = cache_by_hand(build_clip(), prepare_batches())
        expected = logits_by_hand(model, images, keys, values, alpha, beta)
        torch.testing.assert_close(clip_logits(model, images), expected, atol=TOL["zero_shot"], rtol=0.0)
        # the check can fail: the cache term is not zero
        assert (logits_by_hand(model, images, keys, values, 0.0, beta) - expected).abs().max() > 1e-6


def test_tip_adapter_f_starts_as_tip_adapter_and_trains_its_keys() -> None:
    alpha, beta = 2.0, 5.5
    kwargs = {"classnames": CLASSNAMES, "alpha": alpha, "beta": beta}
    free = ri.prepare(build_clip(), "tip-adapter", prepare_batches(), **kwargs)
    tuned = ri.prepare(build_clip(), "tip-adapter-f", prepare_batches(), **kwargs)
    images, _ = clip_batch(n=3)
    with torch.no_grad():
        torch.testing.assert_close(clip_logits(tuned, images), clip_logits(free, images), atol=0.0, rtol=0.0)
        assert ri.adapter_parameter_names(tuned) == ["peft_classifier.peft_cache_keys"]
        perturb(tuned)  # keys away from the image features (and no longer normalized)
        keys = tuned.peft_classifier.peft_cache_keys
        _, values = cache_by_hand(build_clip(), prepare_batches())
        expected = logits_by_hand(tuned, images, keys, values, alpha, beta)
        torch.testing.assert_close(clip_logits(tuned, images), expected, atol=TOL["zero_shot"], rtol=0.0)
        assert (clip_logits(free, images) - expected).abs().max() > 1e-6


def test_keys_average_the_views_of_each_image() -> None:
    images, labels = clip_batch(seed=5, n=4)
    flipped = images.flip(-1)  # a second "augmented" pass over the same images, same order
    model = ri.prepare(build_clip(), "tip-adapter", [(images, labels), (flipped, labels)],
                       classnames=CLASSNAMES, augment_views=2)
    assert model.peft_atlas_method["config"]["cache_size"] == 4
    with torch.no_grad():
        plain = build_clip()
        mean = (plain.encode_image(images) + plain.encode_image(flipped)) / 2
        torch.testing.assert_close(model.peft_classifier.cache_keys, F.normalize(mean, dim=-1),
                                   atol=TOL["zero_shot"], rtol=0.0)
    torch.testing.assert_close(model.peft_classifier.cache_values, F.one_hot(labels, len(CLASSNAMES)).double())


def test_bad_training_data_is_refused() -> None:
    images, labels = clip_batch(seed=5, n=4)
    with pytest.raises(ValueError, match=r"tip-adapter: the labels differ between the 2 passes"):
        ri.prepare(build_clip(), "tip-adapter", [(images, labels), (images, labels.roll(1))],
                   classnames=CLASSNAMES, augment_views=2)
    with pytest.raises(ValueError, match=r"tip-adapter: 4 training images are not 3 passes"):
        ri.prepare(build_clip(), "tip-adapter", [(images, labels)], classnames=CLASSNAMES, augment_views=3)
    with pytest.raises(ValueError, match=r"tip-adapter: training labels must index the 4 class names"):
        ri.prepare(build_clip(), "tip-adapter", [(images, labels + 4)], classnames=CLASSNAMES)
    with pytest.raises(ValueError, match=r"tip-adapter-f: building the cache needs at least one"):
        ri.prepare(build_clip(), "tip-adapter-f", [], classnames=CLASSNAMES)


def test_apply_without_data_is_refused_and_a_cache_size_alone_is_an_empty_cache() -> None:
    with pytest.raises(ValueError, match=r"tip-adapter: chooses what to tune from the training data, and cache_size"):
        ri.apply(build_clip(), "tip-adapter", classnames=CLASSNAMES)
    model = ri.apply(build_clip(), "tip-adapter", classnames=CLASSNAMES, cache_size=5)
    zero_shot = ri.apply(build_clip(), "zero-shot-clip", classnames=CLASSNAMES)
    images, _ = clip_batch()
    with torch.no_grad():
        torch.testing.assert_close(clip_logits(model, images), clip_logits(zero_shot, images),
                                   atol=TOL["zero_shot"], rtol=0.0)


@pytest.mark.parametrize("method", ["tip-adapter", "tip-adapter-f"])
def test_the_cache_travels_in_the_adapter_file(method: str, tmp_path: Path) -> None:
    model = ri.prepare(build_clip(), method, prepare_batches(), classnames=CLASSNAMES)
    path = tmp_path / "cache.safetensors"
    ri.save_adapter(model, path)
    keys = "cache_keys" if method == "tip-adapter" else "peft_cache_keys"
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == {f"peft_classifier.{keys}", "peft_classifier.cache_values"}
    fresh = ri.load_adapter(build_clip(), path)
    images, _ = clip_batch()
    with torch.no_grad():
        torch.testing.assert_close(clip_logits(fresh, images), clip_logits(model, images), atol=0.0, rtol=0.0)
        # the check can fail: without its tensors the cache is empty
        empty = ri.apply(build_clip(), method, classnames=CLASSNAMES, cache_size=CACHE_IMAGES)
        assert (clip_logits(empty, images) - clip_logits(model, images)).abs().max() > 1e-6


def test_only_persistent_method_buffers_are_written() -> None:
    cached = ri.prepare(build_clip(), "tip-adapter", prepare_batches(), classnames=CLASSNAMES)
    assert ri.api.adapter_buffer_names(cached) == ["peft_classifier.cache_keys", "peft_classifier.cache_values"]
    # CoOp's buffers (token embeddings around the context) are recomputed at apply, never stored
    assert ri.api.adapter_buffer_names(ri.apply(build_clip(), "coop", classnames=CLASSNAMES, n_ctx=4)) == []


def test_prepare_refuses_built_tensors_that_are_not_the_methods(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _REGISTRY["tip-adapter"]

    def wrong(model: nn.Module, config: object, batches: object) -> tuple[dict, dict]:
        fields, tensors = spec.prepare_fn(model, config, batches)
        return fields, {**tensors, "visual.proj": torch.zeros(1)}

    monkeypatch.setitem(_REGISTRY, "tip-adapter", type(spec)(**{**spec.__dict__, "prepare_fn": wrong}))
    with pytest.raises(RuntimeError, match=r"built tensors that are not its parameters or persistent buffers: "
                                           r"\['visual.proj'\]"):
        ri.prepare(build_clip(), "tip-adapter", prepare_batches(), classnames=CLASSNAMES)

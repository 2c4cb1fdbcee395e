"""Tip-Adapter and Tip-Adapter-F: a key-value cache of the few-shot training set added to CLIP.

Paper: Tip-Adapter: Training-free Adaption of CLIP for Few-shot Classification (Zhang et al.,
ECCV 2022). arXiv: https://arxiv.org/abs/2207.09519. Bib key: zhang2022tip.
Official code: https://github.com/gaopengcuhk/Tip-Adapter (`main.py`, `utils.py`).

From the N K labeled images of an N-class, K-shot training set, frozen CLIP builds a cache:
keys F_train (N K x d, the L2-normalized image features) and values L_train (N K x N, the one-hot
labels). For an image with normalized feature f:

    A      = exp(-beta * (1 - f F_train^T))               affinities to the cached images
    logits = exp(t) * f W_c^T + alpha * A L_train

with W_c the normalized class features of the hand-written prompts (CLIP's zero-shot classifier)
and t CLIP's logit scale: the first term is zero-shot CLIP. beta sets how sharply the
affinities decay, alpha weighs the cache against CLIP. Tip-Adapter trains nothing: the cache is
built from data (`reference_impls.prepare`). Tip-Adapter-F (`"tip-adapter-f"`) starts from the
same cache and trains the keys F_train (values and encoders stay frozen), by cross-entropy.

From the official code: the zero-shot term is scaled by 100 (the logit scale exp(t) of the
OpenAI CLIP models; here the model's own `logit_scale` is used); the cache term is not scaled;
the key of an image is the mean of its features over 10 augmented passes (`augment_epoch`),
normalized; the keys of Tip-Adapter-F are not renormalized while they train; beta starts at 1
and alpha at a per-dataset value (1.17 for ImageNet), and both are then searched on the
validation set (not part of this implementation). With alpha = 0, or an empty cache, the model
is exactly zero-shot CLIP.

Implementation: `prepare` encodes the batches' images with the frozen image encoder and records
the cache size N K in the config; the keys and values are tensors of the classifier that
`save_adapter` writes (Tip-Adapter's keys and the values are persistent buffers, Tip-Adapter-F's
keys the parameter `peft_cache_keys`). Applied with a `cache_size` but no data (as `load_adapter`
does before loading the tensors), the cache starts empty: zero values, zero-shot CLIP. The class
features are computed once, at apply; a forward pass runs the image encoder only.

Trainable parameters: 0 for Tip-Adapter; N K d for Tip-Adapter-F. Neither is mergeable: the
cache is a nonlinear branch on the output features that keeps all N K keys at inference.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..authoring import (
    PromptTemplate,
    CLASSIFIER_ATTR,
    ClassNames,
    ClipClassifier,
    MethodConfig,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    class_prompts,
    cosine_logits,
    encode_tokens,
    register,
    tokenize,
)



class TipAdapterConfig(MethodConfig):
    """Tip-Adapter (and Tip-Adapter-F) on given class names."""

    classnames: ClassNames
    """The class names, in the order of the labels (underscores become spaces)."""
    template: PromptTemplate = "a photo of a {}."
    """The hand-written prompt of a class (the zero-shot classifier W_c): `{}` is replaced by its name."""
    alpha: Annotated[float, Field(ge=0.0)] = 1.17
    """Residual ratio: the weight of the cache's logits (the official ImageNet config's starting
    value; 0 keeps zero-shot CLIP)."""
    beta: PositiveFloat = 1.0
    """Sharpness of the affinities exp(-beta (1 - cos)) (the official configs start at 1)."""
    augment_views: PositiveInt = 1
    """How many passes over the same training images (in the same order, e.g. with different
    augmentations) the batches given to `prepare` hold; each image's key is the mean of its
    features over the passes (the official code: 10)."""
    cache_size: NonNegativeInt | None = None
    """Number of cached images N K (set by `prepare`; given by hand, the cache starts empty until
    its tensors are loaded)."""


class TipAdapterClassifier(ClipClassifier):
    """Zero-shot CLIP plus the cache model: keys (`cache_keys`, or the trained `peft_cache_keys` of
    Tip-Adapter-F) and one-hot values (`cache_values`)."""

    def __init__(self, model: nn.Module, config: TipAdapterConfig, train_keys: bool) -> None:
        super().__init__(tokenize(model, class_prompts(config.template, config.classnames)))
        with torch.no_grad():
            class_features = encode_tokens(model, self.class_tokens)
        self.register_buffer("class_features", class_features, persistent=False)
        self.alpha, self.beta = config.alpha, config.beta
        size = (config.cache_size, class_features.shape[-1])
        keys = torch.zeros(size, device=class_features.device, dtype=class_features.dtype)
        if train_keys:
            self.peft_cache_keys = nn.Parameter(keys)
        else:
            self.register_buffer("cache_keys", keys)
        values = torch.zeros(config.cache_size, len(config.classnames), device=keys.device, dtype=keys.dtype)
        self.register_buffer("cache_values", values)

    def keys(self) -> torch.Tensor:
        """`(N K, d)` cache keys F_train."""
        return self.peft_cache_keys if hasattr(self, "peft_cache_keys") else self.cache_keys

    def forward(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """`(batch, classes)` logits: zero-shot CLIP's plus the cache's."""
        image_features = model.encode_image(images)
        # exp(t) * f W_c^T  (both normalized)
        clip_term = cosine_logits(model, image_features, self.class_features)
        # A = exp(-beta * (1 - f F_train^T))
        affinity = torch.exp(-self.beta * (1.0 - F.normalize(image_features, dim=-1) @ self.keys().t()))
        # logits = exp(t) * f W_c^T + alpha * A L_train
        return clip_term + self.alpha * (affinity @ self.cache_values)


def build_cache(
    model: nn.Module, config: TipAdapterConfig, batches: Iterable[Any], *, keys_name: str
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The cache model of the training images: its size (a config field) and its tensors.

    Args:
        model: The frozen CLIP model (no method applied yet).
        config: The method's config (class names, `augment_views`).
        batches: `(images, labels)` pairs: every training image once per view, the views one
            after the other in the same order.
        keys_name: Name of the keys in the classifier (buffer or parameter).

    Returns:
        `({"cache_size": N K}, {name: tensor})` with the keys F_train and the values L_train.

    Raises:
        ValueError: No batches, a number of images that is not a multiple of `augment_views`,
            labels that differ between views, or a label outside the class names.
    """
    features, labels = [], []
    with torch.no_grad():
        for images, batch_labels in batches:
            features.append(model.encode_image(images))
            labels.append(torch.as_tensor(batch_labels, device=features[-1].device).reshape(-1))
    if not features:
        raise ValueError("building the cache needs at least one (images, labels) batch")
    all_features, all_labels = torch.cat(features), torch.cat(labels).long()
    views, classes = config.augment_views, len(config.classnames)
    if len(all_labels) % views:
        raise ValueError(f"{len(all_labels)} training images are not {views} passes ('augment_views') "
                         f"over the same images")
    per_view = all_labels.view(views, -1)
    if not bool((per_view == per_view[0]).all()):
        raise ValueError(f"the labels differ between the {views} passes ('augment_views'): each pass must "
                         f"hold the same images in the same order")
    labels_once = per_view[0]
    if len(labels_once) and (int(labels_once.min()) < 0 or int(labels_once.max()) >= classes):
        raise ValueError(f"training labels must index the {classes} class names, got labels from "
                         f"{int(labels_once.min())} to {int(labels_once.max())}")
    # F_train: each image's features averaged over its views, L2-normalized
    keys = F.normalize(all_features.view(views, len(labels_once), -1).mean(dim=0), dim=-1)
    # L_train: one-hot labels
    values = F.one_hot(labels_once, classes).to(keys.dtype)
    tensors = {f"{CLASSIFIER_ATTR}.{keys_name}": keys, f"{CLASSIFIER_ATTR}.cache_values": values}
    return {"cache_size": len(labels_once)}, tensors


def apply_tip_adapter(model: nn.Module, config: TipAdapterConfig) -> list[str]:
    """Install Tip-Adapter's classifier as `model.peft_classifier` (training-free: nothing trains).

    Args:
        model: An open_clip CLIP model (already frozen).
        config: Class names, prompt template, alpha, beta and the cache size.

    Returns:
        An empty list: no backbone parameter is trained.
    """
    model.peft_classifier = TipAdapterClassifier(model, config, train_keys=False)
    return []


def apply_tip_adapter_f(model: nn.Module, config: TipAdapterConfig) -> list[str]:
    """Install Tip-Adapter-F's classifier as `model.peft_classifier` (the cache keys train).

    Args:
        model: An open_clip CLIP model (already frozen).
        config: Class names, prompt template, alpha, beta and the cache size.

    Returns:
        An empty list: no backbone parameter is trained.
    """
    model.peft_classifier = TipAdapterClassifier(model, config, train_keys=True)
    return []


register("tip-adapter", TipAdapterConfig, apply_tip_adapter, mergeable=False, backbone="clip",
         prepare=partial(build_cache, keys_name="cache_keys"), data_fields=("cache_size",))
register("tip-adapter-f", TipAdapterConfig, apply_tip_adapter_f, mergeable=False, backbone="clip",
         prepare=partial(build_cache, keys_name="peft_cache_keys"), data_fields=("cache_size",))

"""What the vision-language methods need to know about an open_clip CLIP model.

A vision-language method turns CLIP into a classifier over given class names. It installs one
module, `model.peft_classifier`, a [`ClipClassifier`][reference_impls.clip.ClipClassifier]
holding everything the method adds; [`clip_logits`][reference_impls.clip.clip_logits] calls it.
The classifier takes the CLIP model as an argument instead of holding it, so the backbone is
never registered twice and stays where it is (frozen by the shared API).

Zero-shot CLIP, the starting point of every method here:

    logits_ic = exp(t) * cos(f(x_i), g(prompt_c))

with f the image encoder, g the text encoder, `prompt_c` a sentence naming class c ("a photo of
a {class}.") and t CLIP's learned logit scale.

open_clip is only needed for tokenizing text; nothing here imports it at module import time, so
`import reference_impls` works without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ClipClassifier",
    "check_clip",
    "class_prompts",
    "clip_logits",
    "clip_training_loss",
    "clip_training_step",
    "context_length",
    "cosine_logits",
    "encode_token_embeddings",
    "encode_tokens",
    "require_open_clip",
    "text_width",
    "tokenize",
]

CLIP_ATTRIBUTES = ("visual", "transformer", "token_embedding", "positional_embedding", "ln_final",
                   "text_projection", "logit_scale", "attn_mask")
"""The attributes of open_clip's `CLIP` the methods read."""

CLASSIFIER_ATTR = "peft_classifier"
"""Where a vision-language method installs its classifier on the CLIP model."""


def check_clip(model: nn.Module) -> None:
    """Raise unless `model` looks like an open_clip `CLIP` with OpenAI-style text pooling.

    Args:
        model: The model to check.

    Raises:
        TypeError: If an attribute the methods read is missing, or the text tower pools other
            than at the end-of-text token (`text_pool_type` "argmax").
    """
    missing = [a for a in CLIP_ATTRIBUTES if not hasattr(model, a)]
    if missing:
        raise TypeError(
            "the model must be an open_clip CLIP (e.g. open_clip.create_model('ViT-B-16', pretrained='openai')); "
            f"got {type(model).__name__} without {', '.join(missing)}"
        )
    pool = getattr(model, "text_pool_type", "argmax")
    if pool != "argmax":
        raise TypeError(f"the CLIP text tower must pool at the end-of-text token (text_pool_type 'argmax'), got {pool!r}")


def require_open_clip() -> Any:
    """Import open_clip, or raise an `ImportError` that says how to install it."""
    try:
        import open_clip
    except ImportError:
        raise ImportError("vision-language methods need open_clip: pip install open_clip_torch "
                          "(or the project's `vlm` extra)") from None
    return open_clip


def context_length(model: nn.Module) -> int:
    """Number of token positions of the text encoder."""
    return int(model.positional_embedding.shape[0])


def text_width(model: nn.Module) -> int:
    """Width of the text encoder's token embeddings."""
    return int(model.token_embedding.weight.shape[1])


@lru_cache(maxsize=4)
def _tokenizer(length: int) -> Any:
    return require_open_clip().tokenizer.SimpleTokenizer(context_length=length)


def tokenize(model: nn.Module, texts: Sequence[str]) -> torch.Tensor:
    """Token ids of `texts` for the model's text encoder (CLIP's byte-pair vocabulary).

    Args:
        model: A CLIP model (its context length and device are used).
        texts: The sentences.

    Returns:
        A `(len(texts), context_length)` tensor of token ids on the model's device: start token,
        the text, end token, zeros.

    Raises:
        ValueError: If a text is longer than the context (it would be cut, losing its end token).
    """
    length = context_length(model)
    tokenizer = _tokenizer(length)
    for text in texts:
        if len(tokenizer.encode(text)) + 2 > length:
            raise ValueError(f"text {text!r} needs more than the {length} tokens of the model's context")
    return tokenizer(list(texts)).to(model.token_embedding.weight.device)


def encode_token_embeddings(model: nn.Module, embeddings: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """CLIP's text encoder from token embeddings instead of token ids.

    Prompts learned in the embedding space (CoOp's context vectors) enter here; with
    `embeddings = model.token_embedding(tokens)` this is exactly `model.encode_text(tokens)`.

    Args:
        model: A CLIP model.
        embeddings: `(n, context_length, width)` token embeddings.
        tokens: `(n, context_length)` token ids that say where each sequence's end-of-text token
            is (the highest id in the vocabulary, so its position is the argmax).

    Returns:
        `(n, embed_dim)` text features (not normalized).

    With CLIP's causal attention mask, the positions after the batch's last end-of-text token
    cannot reach any end-of-text output, so they are not computed: a short prompt in a 77-token
    context costs its own length, with the same features.
    """
    ends = tokens.argmax(dim=-1)
    length, mask = embeddings.shape[1], model.attn_mask
    if mask is not None:
        length = int(ends.max()) + 1
        mask = mask[:length, :length]
    x = embeddings[:, :length] + model.positional_embedding[:length].to(embeddings.dtype)
    x = model.transformer(x, attn_mask=mask)
    x = model.ln_final(x)
    # the feature of a sentence is the end-of-text token's output
    x = x[torch.arange(x.shape[0], device=x.device), ends]
    projection = model.text_projection
    return projection(x) if isinstance(projection, nn.Linear) else x @ projection


def encode_tokens(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Text features of token ids (`model.encode_text` through `encode_token_embeddings`)."""
    return encode_token_embeddings(model, model.token_embedding(tokens), tokens)


def cosine_logits(model: nn.Module, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """CLIP's logits: the scaled cosine similarity of every image with every class.

    Args:
        model: A CLIP model (its learned logit scale).
        image_features: `(batch, d)`.
        text_features: `(classes, d)`, or `(batch, classes, d)` when each image has its own class
            features (prompts conditioned on the image, as in CoCoOp).

    Returns:
        `(batch, classes)` logits.
    """
    # logits_ic = exp(t) * <f_i / |f_i|, g_c / |g_c|>
    image = F.normalize(image_features, dim=-1)
    text = F.normalize(text_features, dim=-1)
    scale = model.logit_scale.exp()
    if text.dim() == 3:
        return scale * torch.einsum("bd,bcd->bc", image, text)
    return scale * image @ text.t()


class ClipClassifier(nn.Module):
    """What a vision-language method installs as `model.peft_classifier`.

    Subclasses override `image_features`, `text_features` or `forward`; the default is zero-shot
    CLIP on the class prompts given as token ids (`class_tokens`, a buffer).
    """

    def __init__(self, class_tokens: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("class_tokens", class_tokens, persistent=False)

    def image_features(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """`(batch, d)` image features (the frozen image encoder by default)."""
        return model.encode_image(images)

    def text_features(self, model: nn.Module, image_features: torch.Tensor) -> torch.Tensor:
        """`(classes, d)` class features, or `(batch, classes, d)` if they depend on the image."""
        return encode_tokens(model, self.class_tokens)

    def forward(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """`(batch, classes)` logits of `images`."""
        image_features = self.image_features(model, images)
        return cosine_logits(model, image_features, self.text_features(model, image_features))

    def training_loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss a training step minimizes: the cross-entropy of the logits.

        Methods whose paper adds a term (a regularizer towards zero-shot CLIP, ...) override this.
        """
        return F.cross_entropy(self(model, images), labels)

    def training_step(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      optimizer: torch.optim.Optimizer) -> torch.Tensor:
        """One optimizer step on a batch: by default, minimize `training_loss` by its gradient.

        Methods whose paper changes the update itself, not only the loss (ProGrad projects the
        gradient), override this.

        Returns:
            The batch's loss (detached), computed before the step.
        """
        optimizer.zero_grad()
        loss = self.training_loss(model, images, labels)
        loss.backward()
        optimizer.step()
        return loss.detach()


def clip_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Class logits of `images` from a CLIP model on which a vision-language method was applied.

    Args:
        model: A CLIP model after `reference_impls.apply(model, <method>, classnames=[...])`.
        images: `(batch, 3, H, W)` images, normalized as the CLIP model expects.

    Returns:
        `(batch, len(classnames))` logits.

    Raises:
        ValueError: If no vision-language method is applied to the model.
    """
    return _classifier(model)(model, images)


def clip_training_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The loss of one training step of the applied vision-language method (see `clip_logits`).

    Args:
        model: A CLIP model on which a vision-language method was applied.
        images: `(batch, 3, H, W)` images.
        labels: `(batch,)` class indices into the method's class names.
    """
    return _classifier(model).training_loss(model, images, labels)


def clip_training_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                       optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """One training step of the applied vision-language method: its gradient, its update.

    For most methods this is `optimizer.zero_grad()`, `clip_training_loss(...).backward()`,
    `optimizer.step()`; a method that modifies the gradient (ProGrad) does so here.

    Args:
        model: A CLIP model on which a vision-language method was applied.
        images: `(batch, 3, H, W)` images.
        labels: `(batch,)` class indices into the method's class names.
        optimizer: An optimizer over the method's trainable parameters.

    Returns:
        The batch's loss before the step (detached).
    """
    return _classifier(model).training_step(model, images, labels, optimizer)


def _classifier(model: nn.Module) -> ClipClassifier:
    classifier = getattr(model, CLASSIFIER_ATTR, None)
    if not isinstance(classifier, ClipClassifier):
        raise ValueError("no vision-language method is applied to this model; apply one first, e.g. "
                         "reference_impls.apply(model, 'zero-shot-clip', classnames=[...])")
    return classifier


def class_prompts(template: str, classnames: Sequence[str]) -> list[str]:
    """The hand-written prompt of every class: `template` with `{}` replaced by the class name."""
    return [template.format(name.replace("_", " ")) for name in classnames]

"""CoOp: learn the words of CLIP's prompt as continuous vectors, keep both encoders frozen.

Paper: Learning to Prompt for Vision-Language Models (Zhou et al., IJCV 2022).
arXiv: https://arxiv.org/abs/2109.01134. Bib key: zhou2022learning.

The prompt of class c is a sequence of M learnable context vectors and the class name's word
embeddings, fed to the frozen text encoder g in place of a hand-written sentence:

    t_c = [V]_1 [V]_2 ... [V]_M [CLASS_c] .          (class token at the end)
    p(y = c | x) = softmax_c( exp(tau) * cos(f(x), g(t_c)) )

Unified context shares [V]_1..M across classes (M * d parameters); class-specific context (CSC)
learns one set per class (C * M * d). The class token may also sit in the middle (half the
context on each side) or at the front. Context vectors start from N(0, 0.02^2), or from the word
embeddings of an initialization text ("a photo of a"), in which case M is that text's length and,
before training, the prompt is exactly the hand-written "a photo of a {class}." of zero-shot CLIP.

Implementation: the prompts are assembled in embedding space from a start token, the context
vectors, the class name's embeddings and the rest of the tokenized sentence (".", end token,
padding), all of which are frozen buffers computed once at apply; the text encoder then runs on
them (`encode_token_embeddings`). With unified context the class features do not depend on the
image, so they are computed once per forward pass, not once per image.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ..authoring import (
    ClassNames,
    ClipClassifier,
    MethodConfig,
    PositiveFloat,
    PositiveInt,
    encode_token_embeddings,
    register,
    text_width,
    tokenize,
)



class CoOpConfig(MethodConfig):
    """Context optimization on given class names."""

    classnames: ClassNames
    """The class names, in the order of the labels (underscores become spaces)."""
    n_ctx: PositiveInt = 16
    """Number of context vectors M (ignored when `init_text` is given: its token count is used)."""
    init_text: str | None = None
    """Start the context from the word embeddings of this text (e.g. "a photo of a"); None: random."""
    init_std: PositiveFloat = 0.02
    """Standard deviation of the random initialization."""
    class_specific: bool = False
    """One context per class (CSC) instead of one shared by all classes."""
    class_position: Literal["end", "middle", "front"] = "end"
    """Where the class name goes among the context vectors."""


def _name_length(model: nn.Module, name: str) -> int:
    """Number of tokens of a class name (the tokenized sentence minus start and end tokens)."""
    tokens = tokenize(model, [name])[0]
    return int(tokens.argmax()) - 1


class CoOpClassifier(ClipClassifier):
    """CLIP with learned prompt context (parameter `peft_ctx`)."""

    def __init__(self, model: nn.Module, config: CoOpConfig) -> None:
        names = [name.replace("_", " ") for name in config.classnames]
        width = text_width(model)
        embedding = model.token_embedding
        if config.init_text is not None:
            init_tokens = tokenize(model, [config.init_text])
            n_ctx = int(init_tokens[0].argmax()) - 1
            if n_ctx < 1:
                raise ValueError(f"config field 'init_text' must hold at least one token, got {config.init_text!r}")
            with torch.no_grad():
                ctx = embedding(init_tokens)[0, 1:1 + n_ctx].clone()
            if config.class_specific:
                ctx = ctx.expand(len(names), -1, -1).clone()
        else:
            n_ctx = config.n_ctx
            shape = (len(names), n_ctx, width) if config.class_specific else (n_ctx, width)
            ctx = torch.empty(shape, device=embedding.weight.device, dtype=embedding.weight.dtype)
            nn.init.normal_(ctx, std=config.init_std)
        # Tokenize "X X ... X name." so the sentence has room for the context; X's embeddings are replaced.
        tokens = tokenize(model, [" ".join(["X"] * n_ctx) + " " + name + "." for name in names])
        super().__init__(tokens)
        self.n_ctx, self.position = n_ctx, config.class_position
        self.name_lengths = [_name_length(model, name) for name in names]
        with torch.no_grad():
            token_embeddings = embedding(tokens)
        self.register_buffer("start", token_embeddings[:, :1].clone(), persistent=False)
        self.register_buffer("rest", token_embeddings[:, 1 + n_ctx:].clone(), persistent=False)
        self.peft_ctx = nn.Parameter(ctx)

    def prompts(self) -> torch.Tensor:
        """`(classes, context_length, width)` prompt embeddings."""
        return self.assemble(self.peft_ctx)

    def assemble(self, ctx: torch.Tensor) -> torch.Tensor:
        """`(classes, context_length, width)` prompt embeddings around the context `ctx`: `(M, width)`
        shared by all classes or `(classes, M, width)` (methods that change the context, such as
        CoCoOp, call this with their own)."""
        classes = self.start.shape[0]
        ctx = ctx if ctx.dim() == 3 else ctx.expand(classes, -1, -1)
        if self.position == "end":
            # [SOS] [V]_1..M [CLASS] . [EOS]
            return torch.cat([self.start, ctx, self.rest], dim=1)
        half = self.n_ctx // 2
        prompts = []
        for c, length in enumerate(self.name_lengths):
            name, after = self.rest[c:c + 1, :length], self.rest[c:c + 1, length:]
            if self.position == "middle":
                # [SOS] [V]_1..M/2 [CLASS] [V]_M/2+1..M . [EOS]
                parts = [self.start[c:c + 1], ctx[c:c + 1, :half], name, ctx[c:c + 1, half:], after]
            else:
                # [SOS] [CLASS] [V]_1..M . [EOS]
                parts = [self.start[c:c + 1], name, ctx[c:c + 1], after]
            prompts.append(torch.cat(parts, dim=1))
        return torch.cat(prompts, dim=0)

    def text_features(self, model: nn.Module, image_features: torch.Tensor) -> torch.Tensor:
        """Class features of the learned prompts (the end token's position is unchanged by the assembly)."""
        return encode_token_embeddings(model, self.prompts(), self.class_tokens)


def apply_coop(model: nn.Module, config: CoOpConfig) -> list[str]:
    """Install CoOp's classifier as `model.peft_classifier`.

    Args:
        model: An open_clip CLIP model (already frozen).
        config: The class names and the context's size, initialization and placement.

    Returns:
        An empty list: no backbone parameter is trained.
    """
    model.peft_classifier = CoOpClassifier(model, config)
    return []


register("coop", CoOpConfig, apply_coop, mergeable=False, backbone="clip")

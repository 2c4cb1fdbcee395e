"""MaPLe: prompts in both CLIP encoders, the vision prompts projected from the language prompts.

Paper: MaPLe: Multi-modal Prompt Learning (Khattak et al., CVPR 2023).
arXiv: https://arxiv.org/abs/2210.03117. Bib key: khattak2023maple.
Official code: github.com/muzairkhattak/multimodal-prompt-learning (`trainers/maple.py`,
`clip/model.py`), whose choices are followed where the equations leave room.

Both encoders stay frozen. With prompt depth J, b prompt tokens per layer, text width d_t and
vision width d_v, MaPLe learns J language prompts P_k (b x d_t) and J coupling functions F_k
(linear maps d_t -> d_v); block k = 0..J-1 of each tower receives the prompts of index k:

    language, block 0:     [SOS, P_0, w_1 .. w_n, EOS] + position embedding    (P_0: learnable context
                           before the fixed words w, CoOp-style; the class name is among the w)
    language, 0 < k < J:   [SOS, P_k, W] = the previous block's output with positions 1..b replaced
    vision coupling:       P~_k = F_k(P_k) = P_k A_k^T + a_k
    vision, block 0:       [c, LN_pre(P~_0), E]    (inserted after the class token)
    vision, 0 < k < J:     [c, P~_k, E] = the previous block's output with the b prompt outputs replaced
    blocks k >= J          process the tokens they receive, prompt outputs included
    logits_ic = exp(t) * cos(f(x_i), g(prompt_c))

Every vision prompt is a function of a language prompt, so the image-side loss also trains the
language prompts: this is the coupling the paper argues for.

Trained: J * b * d_t (prompts) + J * (d_t * d_v + d_v) (coupling layers with biases); for CLIP
ViT-B/16 with the released setting (J = 9, b = 2, d_t = 512, d_v = 768): 3,555,072.

Initialization, as in the official code: P_0 takes the word embeddings of the first b tokens of
`init_text` ("a photo of a"), whose remaining words stay in the sentence as fixed words, so that
the first text block starts from exactly "a photo of a {class}."; P_1..P_{J-1} ~ N(0, 0.02^2);
the coupling layers keep PyTorch's default Linear init (the official code starts the J-1 deep
coupling layers as copies of one layer; here each is drawn on its own). The vision prompts of the
first block pass through the frozen `ln_pre` because the official code concatenates them before it;
where they sit in the sequence is immaterial (the vision tower has no attention mask, the prompts no
position embedding). Nothing here recovers zero-shot CLIP: the deep prompts and the vision prompts
change both encoders from the start.

Implementation: the prompts of one pass are computed by the classifier, since the vision prompts
depend on the text prompts, and handed to the wrapped blocks
([`MaPLeBlock`][reference_impls.methods.maple.MaPLeBlock], holding no parameters) for the duration
of that encoder's forward pass; outside it, the wrapped blocks are the original ones, so
`model.encode_image` on its own is plain CLIP. Gradient checkpointing of open_clip's transformers is
not supported (the recomputation would run without the prompts). The class features do not depend
on the image: the text encoder runs once per forward pass, on one row per class.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..authoring import (
    ClassNames,
    ClipClassifier,
    MethodConfig,
    PositiveFloat,
    PositiveInt,
    Wrapper,
    encode_token_embeddings,
    register,
    replace_module,
    text_width,
    tokenize,
)



class MaPLeConfig(MethodConfig):
    """Multi-modal prompt learning on given class names."""

    classnames: ClassNames
    """The class names, in the order of the labels (underscores become spaces)."""
    n_ctx: PositiveInt = 2
    """Number of prompt tokens b per layer and tower."""
    depth: PositiveInt = 9
    """Prompt depth J: the first J blocks of each tower receive prompts (1: shallow MaPLe)."""
    init_text: str | None = "a photo of a"
    """The first text prompt P_0 starts from the word embeddings of this text's first `n_ctx` tokens;
    its other words stay in the sentence as fixed words. None: P_0 ~ N(0, init_std^2)."""
    init_std: PositiveFloat = 0.02
    """Standard deviation of the random prompts (P_1..P_{J-1}, and P_0 without `init_text`)."""


class MaPLeBlock(Wrapper):
    """A resblock of either CLIP tower that puts the current pass's prompts at positions 1..b.

    The block holds no parameters: the classifier computes a pass's prompts (the vision prompts are
    functions of the text prompts) and hands them over with `prompting`. Outside that, `prompt` is
    None and `num_tokens` 0, and the block is the original one. Sequences are batch-first.

    Args:
        base_layer: The original open_clip resblock.
        insert: True for the first vision block: the prompts are inserted after the first token
            (the sequence grows by b); otherwise they replace positions 1..b.
        remove_after: True for the last vision block: positions 1..b (the prompt outputs) are
            removed from the output, so the pooling sees the original token layout.
    """

    def __init__(self, base_layer: nn.Module, insert: bool = False, remove_after: bool = False) -> None:
        super().__init__(base_layer)
        self.insert = insert
        self.remove_after = remove_after
        self.prompt: torch.Tensor | None = None
        self.num_tokens = 0

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Run the block on `[first token, prompts, rest]`; `x` is `(batch, tokens, width)`."""
        b = self.num_tokens
        if self.prompt is not None:
            prompt = self.prompt.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
            if self.insert:
                # [c, P~_0, E]
                x = torch.cat([x[:, :1], prompt, x[:, 1:]], dim=1)
            else:
                # [SOS, P_k, W] / [c, P~_k, E]: the previous block's prompt outputs are discarded
                x = torch.cat([x[:, :1], prompt, x[:, 1 + b :]], dim=1)
        x = self.base_layer(x, *args, **kwargs)
        if self.remove_after and b:
            # [c, E]: LN_post and the pooling see the original token layout
            x = torch.cat([x[:, :1], x[:, 1 + b :]], dim=1)
        return x

    def extra_repr(self) -> str:
        return f"insert={self.insert}, remove_after={self.remove_after}"


@contextmanager
def prompting(blocks: Mapping[int, MaPLeBlock], prompts: Mapping[int, torch.Tensor], num_tokens: int) -> Iterator[None]:
    """Hand `prompts[k]` to block k (None where absent) for the duration of one encoder pass.

    Args:
        blocks: The wrapped blocks of one tower, by block index.
        prompts: The `(b, width)` prompts of this pass, by block index.
        num_tokens: b, the number of prompt positions in the sequence during the pass.
    """
    try:
        for index, block in blocks.items():
            block.prompt, block.num_tokens = prompts.get(index), num_tokens
        yield
    finally:
        for block in blocks.values():
            block.prompt, block.num_tokens = None, 0


def _wrapped(blocks: nn.ModuleList) -> dict[int, MaPLeBlock]:
    return {index: block for index, block in enumerate(blocks) if isinstance(block, MaPLeBlock)}


class MaPLeClassifier(ClipClassifier):
    """CLIP with MaPLe's coupled prompts: `peft_prompts` (the P_k) and `peft_couplings` (the F_k)."""

    def __init__(self, model: nn.Module, config: MaPLeConfig, vision_width: int) -> None:
        names = [name.replace("_", " ") for name in config.classnames]
        width, b, depth = text_width(model), config.n_ctx, config.depth
        embedding = model.token_embedding
        factory = {"device": embedding.weight.device, "dtype": embedding.weight.dtype}
        prompts = torch.empty(depth, b, width, **factory)
        nn.init.normal_(prompts, std=config.init_std)
        if config.init_text is not None:
            init_tokens = tokenize(model, [config.init_text])
            available = int(init_tokens[0].argmax()) - 1
            if b > available:
                raise ValueError(f"config field 'n_ctx' ({b}) exceeds the {available} tokens of init_text "
                                 f"{config.init_text!r}")
            with torch.no_grad():
                # P_0 = word embeddings of the first b tokens of init_text
                prompts[0] = embedding(init_tokens)[0, 1 : 1 + b]
            prefix = config.init_text
        else:
            prefix = " ".join(["X"] * b)
        # "a photo of a name." / "X X name.": the embeddings at positions 1..b are replaced by P_0
        tokens = tokenize(model, [f"{prefix} {name}." for name in names])
        super().__init__(tokens)
        with torch.no_grad():
            token_embeddings = embedding(tokens)
        self.register_buffer("start", token_embeddings[:, :1].clone(), persistent=False)
        self.register_buffer("rest", token_embeddings[:, 1 + b :].clone(), persistent=False)
        self.n_ctx = b
        self.peft_prompts = nn.Parameter(prompts)
        self.peft_couplings = nn.ModuleList(nn.Linear(width, vision_width, **factory) for _ in range(depth))

    def text_prompts(self) -> torch.Tensor:
        """`(classes, context_length, d_t)` embeddings entering the first text block (before position embedding)."""
        ctx = self.peft_prompts[0].expand(self.start.shape[0], -1, -1)
        # [SOS] P_0 [fixed words] [CLASS] . [EOS]
        return torch.cat([self.start, ctx, self.rest], dim=1)

    def vision_prompts(self, model: nn.Module) -> list[torch.Tensor]:
        """The J vision prompts `(b, d_v)`: the coupling functions of the language prompts."""
        # P~_k = F_k(P_k) = P_k A_k^T + a_k
        projected = [coupling(prompt) for coupling, prompt in zip(self.peft_couplings, self.peft_prompts)]
        # the first block's vision prompts pass through the frozen ln_pre (inserted before it in the official code)
        projected[0] = model.visual.ln_pre(projected[0])
        return projected

    def text_features(self, model: nn.Module, image_features: torch.Tensor) -> torch.Tensor:
        """Class features of the prompted text encoder (blocks 1..J-1 get the deep prompts P_k)."""
        _no_checkpointing(model.transformer)
        deep = {k: self.peft_prompts[k] for k in range(1, self.peft_prompts.shape[0])}
        with prompting(_wrapped(model.transformer.resblocks), deep, self.n_ctx):
            return encode_token_embeddings(model, self.text_prompts(), self.class_tokens)

    def image_features(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Image features of the prompted image encoder (blocks 0..J-1 get P~_0..P~_{J-1})."""
        _no_checkpointing(model.visual.transformer)
        vision = dict(enumerate(self.vision_prompts(model)))
        with prompting(_wrapped(model.visual.transformer.resblocks), vision, self.n_ctx):
            return model.encode_image(images)


def _no_checkpointing(transformer: nn.Module) -> None:
    if getattr(transformer, "grad_checkpointing", False):
        raise ValueError("MaPLe does not support gradient checkpointing of CLIP's transformers "
                         "(the recomputation would run without the prompts); disable it")


def _towers(model: nn.Module) -> tuple[nn.ModuleList, nn.ModuleList, int]:
    """The text and vision blocks and the vision width; raises for towers MaPLe does not fit."""
    visual = model.visual
    vision_transformer = getattr(visual, "transformer", None)
    vision_blocks = getattr(vision_transformer, "resblocks", None)
    conv = getattr(visual, "conv1", None)
    if not isinstance(vision_blocks, nn.ModuleList) or not isinstance(conv, nn.Conv2d):
        raise TypeError("MaPLe needs a vision-transformer image encoder (open_clip VisionTransformer with "
                        f"conv1 and transformer.resblocks); got {type(visual).__name__}")
    text_blocks = getattr(model.transformer, "resblocks", None)
    if not isinstance(text_blocks, nn.ModuleList):
        raise TypeError("MaPLe needs the text transformer's blocks (transformer.resblocks); "
                        f"got {type(model.transformer).__name__}")
    for transformer in (model.transformer, vision_transformer):
        if not getattr(transformer, "batch_first", True):
            raise TypeError("MaPLe needs batch-first transformers (`transformer.batch_first`)")
    return text_blocks, vision_blocks, conv.out_channels


def apply_maple(model: nn.Module, config: MaPLeConfig) -> list[str]:
    """Install MaPLe's classifier and wrap the blocks that receive prompts in both towers.

    Args:
        model: An open_clip CLIP model with a vision-transformer image encoder (already frozen).
        config: The class names, the number of prompt tokens, the depth and the initialization.

    Returns:
        An empty list: no backbone parameter is trained.

    Raises:
        ValueError: If the depth exceeds either tower's number of blocks, or `n_ctx` the tokens of `init_text`.
        TypeError: If a tower is not an open_clip batch-first transformer.
    """
    text_blocks, vision_blocks, vision_width = _towers(model)
    depth = config.depth
    if depth > min(len(text_blocks), len(vision_blocks)):
        raise ValueError(f"config field 'depth' ({depth}) exceeds the blocks of the text ({len(text_blocks)}) "
                         f"or vision ({len(vision_blocks)}) transformer")
    model.peft_classifier = MaPLeClassifier(model, config, vision_width)
    for index in range(1, depth):
        replace_module(model, f"transformer.resblocks.{index}", MaPLeBlock(text_blocks[index]))
    last = len(vision_blocks) - 1
    for index in sorted(set(range(depth)) | {last}):
        block = MaPLeBlock(vision_blocks[index], insert=index == 0, remove_after=index == last)
        replace_module(model, f"visual.transformer.resblocks.{index}", block)
    return []


register("maple", MaPLeConfig, apply_maple, mergeable=False, backbone="clip")

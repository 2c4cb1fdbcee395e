"""Reference implementations of parameter-efficient fine-tuning methods for timm vision
transformers and, for the vision-language methods, open_clip CLIP models.

Example:
    >>> import timm, reference_impls as ri
    >>> model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=100)
    >>> ri.apply(model, "lora", r=8)  # doctest: +SKIP
    >>> import open_clip
    >>> clip = open_clip.create_model("ViT-B-16", pretrained="openai")  # doctest: +SKIP
    >>> ri.apply(clip, "coop", classnames=["cat", "dog"])  # doctest: +SKIP
    >>> logits = ri.clip_logits(clip, images)  # doctest: +SKIP

The method files live in `reference_impls.methods`, one file per method; method authors import
from `reference_impls.authoring`.
"""

from . import methods as _method_modules  # noqa: F401  (importing registers every method)
from .adapter_files import load_adapter, save_adapter
from .clip import clip_logits, clip_training_loss, clip_training_step
from .api import adapter_parameter_names, apply, is_merged, mark_trainable, merge, prepare, trainable_parameters, unmerge
from .registry import (
    MethodConfig,
    MethodSpec,
    Preset,
    build_config,
    get_config_class,
    get_preset,
    get_spec,
    list_methods,
    list_presets,
    register,
)

__all__ = [
    "MethodConfig",
    "MethodSpec",
    "Preset",
    "adapter_parameter_names",
    "apply",
    "build_config",
    "clip_logits",
    "clip_training_loss",
    "clip_training_step",
    "get_config_class",
    "get_preset",
    "get_spec",
    "is_merged",
    "list_methods",
    "list_presets",
    "load_adapter",
    "mark_trainable",
    "merge",
    "prepare",
    "register",
    "save_adapter",
    "trainable_parameters",
    "unmerge",
]

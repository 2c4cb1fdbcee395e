"""Everything a method file needs, in one place.

A method file imports from here only:

```python
from ..authoring import MethodConfig, Rank, Dropout, Targets, WeightUpdateWrapper, register, ...
```

and holds a config class, its modules and one `register(...)` call. The backbone check, errors
naming the method, config validation, freezing, trainable-parameter marking, merging and adapter
files are handled by the shared API.
"""

from __future__ import annotations

import torch.nn.functional as F
from timm.layers import quick_gelu

from .api import PREFIX
from .clip import (
    CLASSIFIER_ATTR,
    ClipClassifier,
    class_prompts,
    cosine_logits,
    encode_token_embeddings,
    encode_tokens,
    text_width,
    tokenize,
)
from .backbone import NORM_TYPES, factory_kwargs, head_modules, replace_module
from .registry import (
    ClassNames,
    Dropout,
    MethodConfig,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Preset,
    PromptTemplate,
    Rank,
    Targets,
    register,
)
from .targets import QKV_PARTS, WHOLE, find_linear_targets, output_splits, wrap_linear_targets
from .wrappers import MergeableWrapper, WeightUpdateWrapper, Wrapper

__all__ = [
    "ACTIVATIONS",
    "CLASSIFIER_ATTR",
    "ClipClassifier",
    "class_prompts",
    "cosine_logits",
    "encode_token_embeddings",
    "encode_tokens",
    "text_width",
    "tokenize",
    "ClassNames",
    "Dropout",
    "MergeableWrapper",
    "MethodConfig",
    "NORM_TYPES",
    "NonNegativeInt",
    "PREFIX",
    "PositiveFloat",
    "PositiveInt",
    "Preset",
    "PromptTemplate",
    "QKV_PARTS",
    "Rank",
    "Targets",
    "WHOLE",
    "WeightUpdateWrapper",
    "Wrapper",
    "factory_kwargs",
    "find_linear_targets",
    "head_modules",
    "norm_parameter_names",
    "output_splits",
    "register",
    "replace_module",
    "wrap_linear_targets",
]

ACTIVATIONS = {"gelu": F.gelu, "quick_gelu": quick_gelu, "relu": F.relu}
"""Nonlinearities of bottleneck modules by name (QuickGELU: CLIP's, used by NOAH and Convpass)."""


def norm_parameter_names(model) -> list[str]:  # noqa: ANN001 (nn.Module)
    """Names of the gains and biases of every normalization layer of the model."""
    # LN(x) = gamma ⊙ (x - mean(x)) / sqrt(var(x) + eps) + beta: gamma and beta
    return [
        f"{module_name}.{param_name}"
        for module_name, module in model.named_modules()
        if isinstance(module, NORM_TYPES)
        for param_name, _ in module.named_parameters(recurse=False)
    ]

"""Trainable-parameter counts on ViT-B/16, written to a data file for the site.

The site is built without torch, so the counts its method cards show are computed here and
stored in `reference_impls/param_counts.json`; a test checks that the file is up to date. The file
also lists every method's presets with their sources: the validator checks the presets that
results rows name against it.

Usage:
    python -m reference_impls.param_counts           # rewrite the file
    python -m reference_impls.param_counts --check   # exit 1 if the file is stale
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
from torch import nn

from . import api, registry

BACKBONE = "vit_base_patch16_224"
NUM_CLASSES = 100  # a VTAB-1k-sized head (CIFAR-100); the head is counted apart
OUTPUT = Path(__file__).with_name("param_counts.json")

# Configurations worth showing besides each method's defaults and presets (presets are counted apart).
EXTRA_CONFIGS: dict[str, list[dict[str, Any]]] = {
    "partial-k": [{"k": 1}, {"k": 4}],
    "lora": [{"r": 8, "targets": ("q", "k", "v", "proj", "fc1", "fc2")}],
    "vpt-shallow": [{"num_tokens": 1}, {"num_tokens": 50}],
    "vpt-deep": [{"num_tokens": 1}, {"num_tokens": 50}],
    "fact": [{"form": "tk", "r": 32}],
    "repadapter": [{"positions": ("attn",)}],
}


def describe(name: str, kwargs: dict[str, Any]) -> str:
    """The full configuration as text: every field, defaults included."""
    config = registry.build_config(name, dict(kwargs))
    fields = [f"{field}={getattr(config, field)!r}" for field in type(config).model_fields]
    return ", ".join(fields) if fields else "(no options)"


@functools.cache
def _template() -> nn.Module:
    return timm.create_model(BACKBONE, pretrained=False, num_classes=NUM_CLASSES, device="meta")


def backbone() -> nn.Module:
    """A fresh ViT-B/16 with a 100-class head on the meta device (shapes only, no memory).

    Copying one model built once is several times faster than building each anew, which matters
    for the hundred-odd presets.
    """
    return copy.deepcopy(_template())


def count(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Trainable parameters of one configuration on ViT-B/16 (shapes only, on the meta device)."""
    model = backbone()
    api.apply(model, name, **kwargs)
    head = sum(p.numel() for n, p in model.named_parameters()
               if n.startswith(("head.", "head_dist.")) and p.requires_grad)
    trainable = api.trainable_parameters(model)
    return {"config": describe(name, kwargs), "trainable": trainable, "head": head,
            "method": trainable - head}


def describe_options(options: Mapping[str, Any]) -> str:
    """A preset's options as text (`"(none)"` for a preset of a method without options)."""
    return ", ".join(f"{field}={value!r}" for field, value in options.items()) or "(none)"


def count_presets(name: str) -> dict[str, dict[str, Any]]:
    """Every preset of a method with its options, source, note and counts on ViT-B/16."""
    counts = {}
    for preset_name, preset in registry.get_spec(name).presets.items():
        numbers = count(name, dict(preset.options))
        counts[preset_name] = {"options": describe_options(preset.options), "source": preset.source,
                               "note": preset.note, "method": numbers["method"], "head": numbers["head"],
                               "trainable": numbers["trainable"]}
    return counts


def compute() -> dict[str, Any]:
    """Counts of every registered method: its defaults, then its extra configurations; and the
    counts of every preset, by method (methods without presets are left out)."""
    methods = {name: [count(name, kwargs) for kwargs in [{}] + EXTRA_CONFIGS.get(name, [])]
               for name in registry.list_methods(backbone="vit")}
    presets = {name: count_presets(name) for name in registry.list_methods(backbone="vit") if registry.list_presets(name)}
    return {"methods": methods, "presets": presets}


def render(counts: dict[str, Any]) -> str:
    """The data file's text (stable, so an unchanged count gives an unchanged file).

    Presets keep the order of their method file (the card lists them in that order).
    """
    def fields(entry: dict[str, Any]) -> dict[str, Any]:
        return dict(sorted(entry.items()))

    document = {
        "backbone": BACKBONE,
        "methods": {name: [fields(c) for c in counts["methods"][name]] for name in sorted(counts["methods"])},
        "num_classes": NUM_CLASSES,
        "presets": {name: {preset: fields(entry) for preset, entry in counts["presets"][name].items()}
                    for name in sorted(counts["presets"])},
    }
    return json.dumps(document, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the data file, or check it with --check."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the file is up to date")
    args = parser.parse_args(argv)
    import reference_impls  # noqa: F401  (registers every method)

    text = render(compute())
    if args.check:
        if not OUTPUT.is_file() or OUTPUT.read_text(encoding="utf-8") != text:
            print(f"{OUTPUT.name} is out of date: run python -m reference_impls.param_counts", file=sys.stderr)
            return 1
        print(f"{OUTPUT.name} is up to date")
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Write `benchmarks/experiments/<method>/default.yaml` for every registered method that lacks one.

Existing files are never overwritten: edit them by hand. Run from anywhere:

    .venv/bin/python benchmarks/experiments/make_defaults.py
"""

from __future__ import annotations

from pathlib import Path

import yaml

from peft_atlas.bench.config import default_method_options

import reference_impls as ri

HERE = Path(__file__).resolve().parent

TEMPLATE = """\
# {method} on ViT-B/16 (original ImageNet-21k weights) over the 19 VTAB-1k tasks.
# Options are the method's defaults. Run from the repository root:
#   peft-atlas bench benchmarks/experiments/{method}/default.yaml --data-root /path/to/vtab-1k
method:
  name: {method}
  options: {options}
backbone:
  model: vit_base_patch16_224.orig_in21k
  pretrained: true
data:
  kind: vtab-1k        # all 19 tasks; the folder comes from --data-root (or data.root)
train:
  selection: val200    # train on train800, report test accuracy at the best val200 epoch
  epochs: 100
  batch_size: 64
  optimizer: adamw
  lr: 0.001
  weight_decay: 0.0001
  warmup_epochs: 10
seed: 0
"""


def render(method: str) -> str:
    """The text of `<method>/default.yaml`."""
    options = yaml.safe_dump(default_method_options(method), default_flow_style=True, sort_keys=False, width=1000).strip()
    return TEMPLATE.format(method=method, options=options)


def main() -> None:
    """Write the missing default configs and say which ones were written."""
    for method in ri.list_methods(backbone="vit"):
        path = HERE / method / "default.yaml"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(method), encoding="utf-8")
        print(f"wrote {path.relative_to(HERE.parent.parent)}")


if __name__ == "__main__":
    main()

"""VTAB-micro: every registered method on every VTAB-micro task, on a CPU, with nothing to download.

For each method this writes an experiment config, `benchmarks/experiments/<method>/micro.yaml`
(the method's default options, the VTAB-micro backbone, the seven tasks and the training
settings below), and runs it with `peft-atlas bench` in its own process, which writes
`benchmarks/measured/vtab-micro/<method>.json` with full provenance. The backbone is pretrained
first if it is not cached (see `peft_atlas.bench.micro.micro_backbone_checkpoint`).

Learning rates (AdamW, cosine schedule; `LR_GROUPS` below) were chosen by the best val200
accuracy (never test accuracy) of one representative per group, tried at 2-3 rates on `digits`
and `dsprites_ori`: linear probing 3e-2 (of 1e-2, 3e-2); prompts 1e-2 (VPT-shallow, of 3e-3,
1e-2, 3e-2); low-rank and other weight reparameterizations 1e-2 (LoRA, of 2e-3, 5e-3, 1e-2);
biases, norms and scalings 5e-3 (BitFit, of 5e-3, 1e-2, 2e-2); adapters and side networks 2e-3
(Adapter, of 2e-3, 5e-3, 1e-2); full fine-tuning 1e-3 (of 5e-4, 1e-3, 2e-3). Partial-k takes
2e-3 untried. A method registered later and not listed takes `DEFAULT_LR`.

Usage (from anywhere; paths are relative to the repository):

    python benchmarks/vtab_micro.py                      # every method, every task
    python benchmarks/vtab_micro.py --methods lora bitfit --tasks digits count

A run limited to some tasks writes its configs and measured runs under `build/vtab-micro/`, so the
committed full-suite runs are never replaced by partial ones.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import yaml

from peft_atlas.bench.config import default_method_options

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "benchmarks" / "experiments"
MEASURED = REPO / "benchmarks" / "measured" / "vtab-micro"
PARTIAL = REPO / "build" / "vtab-micro"

TRAIN = {
    "selection": "val200",
    "epochs": 6,
    "batch_size": 32,
    "eval_batch_size": 500,
    "optimizer": "adamw",
    "weight_decay": 0.0001,
    "schedule": "cosine",
    "warmup_epochs": 1,
    "device": "cpu",
}
"""Training settings shared by every method (the learning rate comes from `LR_GROUPS`)."""

LR_GROUPS: dict[float, tuple[str, ...]] = {
    3e-2: ("linear-probing",),
    1e-2: ("vpt-shallow", "vpt-deep", "visual-prompting", "prefix-tuning",
           "lora", "dora", "vera", "fact", "kadaptation", "glora"),
    5e-3: ("bitfit", "ln-tuning", "ia3", "ssf"),
    2e-3: ("adapter", "adaptformer", "convpass", "repadapter", "noah", "lst", "side-tuning", "partial-k"),
    1e-3: ("full-finetuning",),
}
"""Learning rate to the methods trained with it (see the module docstring for how it was chosen)."""
DEFAULT_LR = 5e-3

HEADER = """\
# {method} on the VTAB-micro backbone over the VTAB-micro tasks, on a CPU.
# Written by benchmarks/vtab_micro.py (edit LR_GROUPS or TRAIN there, not this file).
# Options are the method's defaults; lr {lr} ({why}).
# Run from the repository root:
#   peft-atlas bench {config} --out {out}
"""


def learning_rate(method: str) -> tuple[float, str]:
    """The learning rate of a method and why it has it."""
    for lr, methods in LR_GROUPS.items():
        if method in methods:
            return lr, "its group in LR_GROUPS"
    return DEFAULT_LR, "not listed in LR_GROUPS: DEFAULT_LR"


def experiment(method: str, tasks: list[str]) -> dict[str, object]:
    """The experiment config of one method, as plain data."""
    from peft_atlas.bench.micro import MICRO_IMAGE_SIZE, MICRO_MEAN, MICRO_STD, micro_backbone_config

    backbone = micro_backbone_config()
    return {
        "description": f"{method} (default options) on VTAB-micro",
        "method": {"name": method, "options": default_method_options(method)},
        "backbone": {"model": backbone["model"], "checkpoint": "micro", "model_kwargs": backbone["model_kwargs"]},
        # Recorded for the reader; peft_atlas.bench.micro prepares the images exactly so.
        "data": {"kind": "micro", "tasks": tasks, "image_size": MICRO_IMAGE_SIZE, "interpolation": "bilinear",
                 "mean": list(MICRO_MEAN), "std": list(MICRO_STD)},
        "train": {**TRAIN, "lr": learning_rate(method)[0]},
        "seed": 0,
    }


def write_config(path: Path, method: str, tasks: list[str], out: Path) -> None:
    """Write a method's config (only if its text changed), checked by the config schema."""
    from peft_atlas.bench.config import parse_config

    data = experiment(method, tasks)
    parse_config(data, str(path))  # raises ConfigError, naming the field, if the table is wrong
    lr, why = learning_rate(method)
    header = HEADER.format(method=method, lr=lr, why=why, config=_relative(path), out=_relative(out))
    text = header + yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {_relative(path)}")


def _relative(path: Path) -> str:
    try:
        return path.resolve().relative_to(REPO).as_posix()
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    """Run the suite; return 1 if any method failed."""
    import reference_impls as ri

    from peft_atlas.bench.micro import MICRO_TASKS, micro_backbone_checkpoint

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", metavar="METHOD", help="default: every registered method")
    parser.add_argument("--tasks", nargs="+", metavar="TASK", help=f"default: all ({', '.join(MICRO_TASKS)})")
    args = parser.parse_args(argv)
    methods = args.methods or ri.list_methods()
    tasks = args.tasks or list(MICRO_TASKS)
    unknown = [m for m in methods if m not in ri.list_methods()] + [t for t in tasks if t not in MICRO_TASKS]
    if unknown:
        parser.error(f"unknown method or task: {', '.join(unknown)}; methods: {', '.join(ri.list_methods())}; "
                     f"tasks: {', '.join(MICRO_TASKS)}")
    full_suite = set(tasks) == set(MICRO_TASKS)

    started = time.perf_counter()
    print(f"backbone: {micro_backbone_checkpoint(quiet=False)}", flush=True)
    failed = []
    for method in methods:
        if full_suite:
            config, out = CONFIGS / method / "micro.yaml", MEASURED / f"{method}.json"
        else:
            config, out = PARTIAL / "configs" / f"{method}.yaml", PARTIAL / "measured" / f"{method}.json"
        write_config(config, method, tasks, out)
        command = [sys.executable, "-m", "peft_atlas.bench.cli", _relative(config), "--out", _relative(out), "--quiet"]
        began = time.perf_counter()
        done = subprocess.run(command, cwd=REPO)
        print(f"{method}: {time.perf_counter() - began:.0f} s" + ("" if done.returncode == 0 else " FAILED"), flush=True)
        if done.returncode != 0:
            failed.append(method)
    print(f"{len(methods)} methods x {len(tasks)} tasks in {time.perf_counter() - started:.0f} s"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

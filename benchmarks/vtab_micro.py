"""VTAB-micro: every registered method on every VTAB-micro task, on a CPU, with nothing to download.

For each method this writes an experiment config, `benchmarks/experiments/<method>/micro.yaml`
(the method's default options, the VTAB-micro backbone, the seven tasks, the training settings
below and the method's learning rate), and runs it with `peft-atlas bench` in its own process,
once per seed, which writes `benchmarks/measured/vtab-micro/<method>-seed<N>.json` with full
provenance. The backbone is
the committed one (see `peft_atlas.bench.micro.micro_backbone_weights`).

Learning rates are chosen per method on val200, never on test accuracy, by

    python benchmarks/vtab_micro.py --select-lr

which trains each method (seed 0) at three rates, the rate of its group in `LR_GROUPS` times
1/3, 1 and 3, and keeps the one with the best val200 score: the mean over the tasks of the val200
top-1 of the epoch each task's run selects (a tie goes to the lower rate). When the best rate is
at an end of the grid, the grid grows by another factor of 3 past that end (above the highest
when every rate scores the same), up to `MAX_EXTENSIONS` times, so a chosen rate is an interior optimum unless the cap was reached. The
val200 score of every candidate, the backbone's hash and the winner go to
`benchmarks/experiments/micro-lr.yaml`; the winner's run is the method's seed-0 result (its config
is the candidate's, written as `micro.yaml`, so the recorded command re-runs it). The groups
themselves come from an earlier choice on the first backbone (one representative per group, 2-3
rates on two tasks); they only set the centre of each method's grid. A method without a selected
rate trains at its group's.

Every method then runs at its chosen rate with the seeds of `SEEDS` (`--seeds` to change), one
file per seed: `benchmarks/measured/vtab-micro/<method>-seed<N>.json`. A run already there with the
same config on the same backbone is kept, so an interrupted suite resumes.

Usage (from anywhere; paths are relative to the repository):

    python benchmarks/vtab_micro.py --select-lr --jobs 2    # choose the rates, then every seed
    python benchmarks/vtab_micro.py --jobs 2                # every seed at the chosen rates
    python benchmarks/vtab_micro.py --methods lora bitfit --tasks digits count

A run limited to some tasks writes its configs and measured runs under `build/vtab-micro/`, so the
committed full-suite runs are never replaced by partial ones. `--jobs N` runs N methods at once,
each with cores/N torch threads (results depend on the thread count, which every run records).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from statistics import fmean


from peft_atlas.bench import lr_search
from peft_atlas.bench.config import default_method_options
from peft_atlas.bench.lr_search import choose, measured_path
from peft_atlas.bench.lr_search import relative as _relative

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "benchmarks" / "experiments"
MEASURED = REPO / "benchmarks" / "measured" / "vtab-micro"
PARTIAL = REPO / "build" / "vtab-micro"
CANDIDATES = REPO / "build" / "vtab-micro-lr"
SELECTED = CONFIGS / "micro-lr.yaml"

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
"""Training settings shared by every method (the learning rate is the method's own)."""

LR_GROUPS: dict[float, tuple[str, ...]] = {
    3e-2: ("linear-probing",),
    1e-2: ("vpt-shallow", "vpt-deep", "visual-prompting", "prefix-tuning",
           "lora", "dora", "vera", "fact", "kadaptation", "glora"),
    5e-3: ("bitfit", "ln-tuning", "ia3", "ssf"),
    2e-3: ("adapter", "adaptformer", "convpass", "repadapter", "noah", "lst", "side-tuning", "partial-k"),
    1e-3: ("full-finetuning",),
}
"""Centre of each method's learning-rate grid (see the module docstring)."""
DEFAULT_LR = 5e-3
LR_FACTORS = (1 / 3, 1.0, 3.0)
"""The grid of `--select-lr`: these multiples of the group's rate."""
LR_STEP = 3.0
"""Factor between a grid's end and the rate added past it when the best rate is at that end."""
MAX_EXTENSIONS = 1
"""Most rates added past the ends of one method's grid."""
SEEDS = (0, 1, 2)
"""Seeds of the suite; every reported number is their mean, with their standard deviation."""

HEADER = """\
# {method} on the VTAB-micro backbone over the VTAB-micro tasks, on a CPU.
# Written by benchmarks/vtab_micro.py (edit LR_GROUPS or TRAIN there, not this file).
# Options are the method's defaults; lr {lr} ({why}).
# Run from the repository root, for each seed N of the suite:
#   peft-atlas bench {config} --seed N --out {out}
"""


def group_rate(method: str) -> tuple[float, str]:
    """The rate of a method's group in `LR_GROUPS` and how it got it."""
    for lr, methods in LR_GROUPS.items():
        if method in methods:
            return lr, "its group in LR_GROUPS"
    return DEFAULT_LR, "not listed in LR_GROUPS: DEFAULT_LR"


def candidate_rates(method: str) -> list[float]:
    """The learning rates `--select-lr` tries for a method, lowest first (3 significant digits)."""
    centre, _ = group_rate(method)
    return [float(f"{centre * factor:.3g}") for factor in LR_FACTORS]


def extension(scores: dict[float, float], added: int) -> float | None:
    """The rate to try next when the best of `scores` (val200) is at an end of the grid, else None."""
    return lr_search.next_rate(scores, added, MAX_EXTENSIONS, LR_STEP)


def read_selected(path: Path = SELECTED) -> dict[str, dict]:
    """The per-method entries of the selection file (empty if there is none)."""
    return lr_search.read_selected(path)


def learning_rate(method: str) -> tuple[float, str]:
    """The learning rate of a method and why it has it: chosen on val200, else its group's."""
    selected = read_selected().get(method)
    if selected is not None:
        return selected["chosen"], f"chosen on val200 from {selected['candidates']}, see {SELECTED.name}"
    return group_rate(method)


def val200_score(run: dict) -> float:
    """Mean over a run's tasks of the val200 top-1 of the epoch each task selected."""
    return fmean(task["history"][task["selected_epoch"] - 1]["val_top1"] for task in run["tasks"])


def experiment(method: str, tasks: list[str], lr: float | None = None) -> dict[str, object]:
    """The experiment config of one method, as plain data (at `lr`, else its `learning_rate`)."""
    from peft_atlas.bench.micro import MICRO_IMAGE_SIZE, MICRO_MEAN, MICRO_STD, micro_backbone_config

    backbone = micro_backbone_config()
    return {
        "description": f"{method} (default options) on VTAB-micro",
        "method": {"name": method, "options": default_method_options(method)},
        "backbone": {"model": backbone["model"], "checkpoint": "micro", "model_kwargs": backbone["model_kwargs"]},
        # Recorded for the reader; peft_atlas.bench.micro prepares the images exactly so.
        "data": {"kind": "micro", "tasks": tasks, "image_size": MICRO_IMAGE_SIZE, "interpolation": "bilinear",
                 "mean": list(MICRO_MEAN), "std": list(MICRO_STD)},
        "train": {**TRAIN, "lr": learning_rate(method)[0] if lr is None else lr},
        "seed": 0,
    }


def write_config(path: Path, method: str, tasks: list[str], out: Path, lr: float | None = None,
                 why: str | None = None) -> None:
    """Write a method's config (only if its text changed), checked by the config schema."""
    data = experiment(method, tasks, lr)
    if lr is None:
        lr, why = learning_rate(method)
    header = HEADER.format(method=method, lr=lr, why=why, config=_relative(path), out=_relative(out))
    lr_search.write_config_file(path, header.replace("-seed0.json", "-seedN.json"), data)


def select_learning_rates(methods: list[str], tasks: list[str], jobs: int, threads: int) -> list[str]:
    """Run the candidate rates of every method, record the choice, keep the winners' runs.

    The first round runs each method's grid; every further round runs one more rate for each
    method whose best rate so far is at an end of what it tried (see `extension`).

    Returns:
        The methods that failed.
    """
    from peft_atlas.bench.micro import micro_backbone_weights

    sha256 = micro_backbone_weights().sha256

    def run_candidate(method: str, lr: float) -> Path | None:
        config, out = CANDIDATES / method / f"lr{lr:g}.yaml", CANDIDATES / method / f"lr{lr:g}.json"
        write_config(config, method, tasks, out, lr, "a candidate of --select-lr")
        return out if lr_search.run_or_keep(config, out, sha256, threads) else None

    scores, tried, failed = lr_search.search_rates(
        methods, candidate_rates, run_candidate, val200_score,
        grid_size=len(LR_FACTORS), max_extensions=MAX_EXTENSIONS, step=LR_STEP, jobs=jobs)
    entries = read_selected()
    for method in methods:
        if method in failed:
            continue
        rates = sorted(scores[method])
        chosen = choose(scores[method])
        entries[method] = {"chosen": chosen, "candidates": rates, "val200": {lr: scores[method][lr] for lr in rates}}
        _adopt(method, tasks, tried[method][chosen])
    lr_search.write_selection(
        SELECTED, "Learning rates of VTAB-micro, chosen on val200. Written by benchmarks/vtab_micro.py --select-lr.",
        entries, criterion="mean over the tasks of the val200 top-1 of the epoch each task's run selects; "
                           "a tie goes to the lower rate",
        factors=LR_FACTORS, step=LR_STEP, max_extensions=MAX_EXTENSIONS, sha256=sha256, script="benchmarks/vtab_micro.py")
    return sorted(failed)


def _adopt(method: str, tasks: list[str], candidate: Path) -> None:
    """Make the winning candidate the method's result: its config becomes `micro.yaml` (a second
    run of the same config on the same machine and thread count gives the same numbers)."""
    config, out = CONFIGS / method / "micro.yaml", measured_path(MEASURED, method, 0)
    lr = json.loads(candidate.read_text(encoding="utf-8"))["config"]["train"]["lr"]
    write_config(config, method, tasks, out, lr, f"chosen on val200, see {SELECTED.name}")
    lr_search.adopt(candidate, config, out)
    print(f"{method}: lr {lr:g} chosen; wrote {_relative(out)}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the suite; return 1 if any method failed."""
    import reference_impls as ri

    from peft_atlas.bench.micro import MICRO_TASKS, micro_backbone_weights

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", metavar="METHOD", help="default: every registered method")
    parser.add_argument("--tasks", nargs="+", metavar="TASK", help=f"default: all ({', '.join(MICRO_TASKS)})")
    parser.add_argument("--select-lr", action="store_true", help="choose each method's learning rate on val200 first")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (each with cores/jobs threads)")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS), metavar="SEED",
                        help=f"default: {' '.join(map(str, SEEDS))}")
    args = parser.parse_args(argv)
    registered = ri.list_methods(backbone="vit")  # VTAB-micro runs on a ViT
    methods = args.methods or registered
    tasks = args.tasks or list(MICRO_TASKS)
    unknown = [m for m in methods if m not in registered] + [t for t in tasks if t not in MICRO_TASKS]
    if unknown:
        parser.error(f"unknown method or task: {', '.join(unknown)}; methods: {', '.join(registered)}; "
                     f"tasks: {', '.join(MICRO_TASKS)}")
    full_suite = set(tasks) == set(MICRO_TASKS)
    if args.select_lr and not full_suite:
        parser.error("--select-lr chooses on every task; leave out --tasks")
    jobs = max(1, args.jobs)
    threads = max(1, (os.cpu_count() or 1) // jobs)

    started = time.perf_counter()
    weights = micro_backbone_weights(quiet=False)
    print(f"backbone: {weights.path} ({weights.origin}, sha256 {weights.sha256[:12]})", flush=True)
    failed = select_learning_rates(methods, tasks, jobs, threads) if args.select_lr else []
    configs = {}
    for method in (m for m in methods if m not in failed):
        if full_suite:
            configs[method] = (CONFIGS / method / "micro.yaml", MEASURED)
        else:
            configs[method] = (PARTIAL / "configs" / f"{method}.yaml", PARTIAL / "measured")
        write_config(configs[method][0], method, tasks, measured_path(configs[method][1], method, 0))
    failed = sorted(set(failed) | lr_search.run_seeds(configs, args.seeds, weights.sha256, jobs=jobs, threads=threads))
    print(f"{len(methods)} methods x {len(tasks)} tasks in {time.perf_counter() - started:.0f} s"
          + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

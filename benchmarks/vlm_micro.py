"""VLM-micro: every vision-language method, base-to-novel, on a CPU, with nothing to download.

For each CLIP method this writes an experiment config, `benchmarks/experiments/<method>/vlm-micro.yaml`
(the method's options below, the VLM-micro CLIP, the `turned` task with 16 shots per base class,
the training settings below and the method's learning rate), and runs it with `peft-atlas bench`
in its own process, once per seed, which writes
`benchmarks/measured/vlm-micro/<method>-seed<N>.json` with full provenance. The CLIP model is the
committed one (see `peft_atlas.bench.vlm_micro.vlm_micro_weights`).

Learning rates are chosen per method on the validation split, never on test accuracy, by

    python benchmarks/vlm_micro.py --select-lr

which trains each method with seed 0 at its group's rate in `LR_GROUPS` times 1/3, 1 and 3 and
keeps the rate with the best validation accuracy of the reported model (the validation images
of the base classes, classified after the last epoch; a tie goes to the lower rate). While the
best rate is at an end of what was tried, one more rate 3 times past that end is tried, at most
`MAX_EXTENSIONS` times (above the highest when every rate scores the same: none has moved the
method yet). The novel classes play no part in the choice: they stand for classes
nobody has seen when the method is tuned. The score of every rate, the CLIP model's hash and the
winner go to `benchmarks/experiments/vlm-micro-lr.yaml`; the winner's run is the method's seed-0
result. Methods with nothing to train (zero-shot CLIP, Tip-Adapter) have no rate to choose.

Every method then runs with the seeds of `SEEDS`; a run already there with the same config and
seed on the same CLIP model is kept, so an interrupted suite resumes.

A change to the benchmark's design is tried first as a trial of `DEV_TRIALS` on the development
split, `turned-dev` (other base and novel shapes, other images) with the seeds of `DEV_SEEDS`, at
the committed rates: `--dev TRIAL` writes its configs and runs into
`benchmarks/trials/vlm-micro-dev/<trial>/` and prints each method's mean Base and Novel there.
The rule for adopting a trial is fixed before it runs (see `DEV_RULE`), so the benchmark's novel
classes are looked at once, after the design is chosen.

Usage (paths are relative to the repository):

    python benchmarks/vlm_micro.py --select-lr --jobs 2   # choose the rates, then every seed
    python benchmarks/vlm_micro.py --jobs 2               # every seed at the chosen rates
    python benchmarks/vlm_micro.py --methods coop cocoop --seeds 0
    python benchmarks/vlm_micro.py --dev suite --jobs 2   # the benchmark's design on the development split

`--jobs N` runs N trainings at once, each with cores/N torch threads (`--threads` to set them;
results depend on the thread count, which every run records).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any


from peft_atlas.bench import lr_search
from peft_atlas.bench.lr_search import choose, measured_path
from peft_atlas.bench.lr_search import relative as _relative

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "benchmarks" / "experiments"
MEASURED = REPO / "benchmarks" / "measured" / "vlm-micro"
CANDIDATES = REPO / "build" / "vlm-micro-lr"
SELECTED = CONFIGS / "vlm-micro-lr.yaml"
CONFIG_NAME = "vlm-micro.yaml"
TRIALS = REPO / "benchmarks" / "trials" / "vlm-micro-dev"

TRAIN: dict[str, Any] = {
    "epochs": 5,
    "batch_size": 4,
    "eval_batch_size": 500,
    "optimizer": "sgd",
    "momentum": 0.9,
    "weight_decay": 0.0005,
    "schedule": "cosine",
    "warmup_epochs": 1,
    "device": "cpu",
}
"""Training settings shared by every method (the learning rate is the method's own): the schedule
of MaPLe's base-to-novel config (`configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml` of
muzairkhattak/multimodal-prompt-learning at 69bce21: SGD, 5 epochs, batch 4, cosine schedule after
one warmup epoch), with momentum 0.9 and weight decay 5e-4: 640 steps over the 512 training images.
CoCoOp, which encodes every class's prompt for every image, then takes under a minute."""

OPTIONS: dict[str, dict[str, Any]] = {
    "coop": {"init_text": "a photo of a"},
    "prograd": {"n_ctx": 4},
    "maple": {"depth": 2},
}
"""Options that differ from a method's defaults. CoOp: the context starts from "a photo of a" (the
config CoCoOp's base-to-novel scripts name for CoOp). ProGrad: 4 context vectors, which start as
"a photo of a" (its default of 16 does not fit the text encoder's 16 token positions). MaPLe:
prompts in the first 2 blocks of each tower (its default depth of 9 exceeds the small model's 4
vision and 6 text blocks; the depth was set for the first benchmark's 3 text blocks and kept)."""

LR_GROUPS: dict[float, tuple[str, ...]] = {
    0.03: ("coop", "cocoop", "kgcoop", "prograd", "maple", "vpt-clip"),
    0.01: ("clip-adapter", "taskres", "tip-adapter-f"),
}
"""Centre of each method's learning-rate grid: prompts, and feature adapters or residuals (from a
look at CoOp's and TaskRes's validation accuracy at a few rates while the benchmark was built)."""
DEFAULT_LR = 0.01
LR_FACTORS = (1 / 3, 1.0, 3.0)
LR_STEP = 3.0
MAX_EXTENSIONS = 3
SEEDS = (0, 1, 2)
"""Seeds of the suite; every reported number is their mean, with their standard deviation."""

RATES_TEXT_3X64 = {"clip-adapter": 0.09, "cocoop": 0.03, "coop": 0.03, "kgcoop": 0.09, "maple": 0.01, "prograd": 0.01,
                   "taskres": 0.81, "tip-adapter-f": 0.09, "vpt-clip": 0.03}
"""The rates `--select-lr` chose on the validation split for the first benchmark, on the `text-3x64`
CLIP (the selection file at the commit that added the design trials); every trial runs at them."""

DEV_TRIALS: dict[str, dict[str, Any]] = {
    "suite": {"why": "the benchmark's first design as it was (the text-3x64 CLIP), every method, to see whether "
                     "what it showed holds on other classes", "recipe": "text-3x64"},
    "coop-own-schedule": {
        "why": "CoOp with the schedule of its own config (configs/trainers/CoOp/vit_b16.yaml of KaiyangZhou/CoOp "
               "at ff61507: 200 epochs in batches of 32), the schedule behind the CoOp rows of the papers' "
               "base-to-novel tables (the MaPLe README gives CoOp 200 epochs); the rate stays the committed one",
        "methods": ["coop"], "train": {"epochs": 200, "batch_size": 32}, "recipe": "text-3x64"},
    "coop-random-context": {
        "why": "CoOp's context drawn at random, N(0, 0.02^2), instead of starting from 'a photo of a', as in "
               "CoOp's own configs (configs/trainers/CoOp/vit_b16.yaml at ff61507 sets no CTX_INIT), with 8 "
               "vectors (16 do not fit the 16 token positions)",
        "methods": ["coop"], "options": {"init_text": None, "n_ctx": 8}, "recipe": "text-3x64"},
    "text-6x128": {
        "why": "a text encoder of 6 blocks of width 128 instead of 3 of width 64 (recipe text-6x128): with the "
               "small one CoOp's learned context moved the base classes' text features but hardly the novel ones' "
               "(benchmarks/vlm_micro_drift.py), as if context and class name interacted too little; CLIP's has 12 "
               "blocks of width 512",
        "methods": ["zero-shot-clip", "coop", "kgcoop", "cocoop"], "recipe": "text-6x128"},
}
"""Design trials on the development split: why each is tried, which methods it runs (default: all),
the CLIP recipe it runs on, and what it changes in their configs (`train` settings, method
`options`). Every trial runs at the rates of `RATES_TEXT_3X64`."""
DEV_RULE = ("a trial's change is adopted for the benchmark only if, on turned-dev over the dev seeds, CoOp's mean "
            "novel accuracy falls more than 1 point below zero-shot CLIP's while its base accuracy rises")
"""The rule for adopting a trial, fixed before any trial ran."""

HEADER = """\
# {method} on the VLM-micro CLIP, base-to-novel on the `turned` task, on a CPU.
# Written by benchmarks/vlm_micro.py (edit OPTIONS, LR_GROUPS or TRAIN there, not this file).
# lr {lr} ({why}). Run from the repository root, for each seed N of the suite:
#   peft-atlas bench {config} --seed N --out {out}
"""


def methods() -> list[str]:
    """The vision-language methods of the registry."""
    import reference_impls as ri

    return ri.list_methods(backbone="clip")


def trains(method: str) -> bool:
    """Whether the method has parameters to train (else it runs as applied, with no rate)."""
    return method not in ("zero-shot-clip", "tip-adapter")


def options(method: str) -> dict[str, Any]:
    """The method's options on VLM-micro: its defaults, with `OPTIONS` applied."""
    from peft_atlas.bench.config import default_method_options

    return {**default_method_options(method), **OPTIONS.get(method, {})}


def group_rate(method: str) -> float:
    """The centre of a method's grid."""
    return next((lr for lr, members in LR_GROUPS.items() if method in members), DEFAULT_LR)


def candidate_rates(method: str) -> list[float]:
    """The rates `--select-lr` tries first, lowest first (3 significant digits)."""
    return [float(f"{group_rate(method) * factor:.3g}") for factor in LR_FACTORS]


def extension(scores: dict[float, float], added: int) -> float | None:
    """The next rate to try when the best one is at an end of those tried, else None."""
    return lr_search.next_rate(scores, added, MAX_EXTENSIONS, LR_STEP)


def val_score(run: dict) -> float:
    """Mean over the run's tasks of the validation accuracy after the last epoch (the reported model)."""
    values = [task["history"][-1]["val_top1"] for task in run["tasks"]]
    return sum(values) / len(values)


def read_selected(path: Path = SELECTED) -> dict[str, dict]:
    """The per-method entries of the selection file (empty if there is none)."""
    return lr_search.read_selected(path)


def learning_rate(method: str) -> tuple[float, str]:
    """A method's rate and why: chosen on validation, else its group's."""
    selected = read_selected().get(method)
    if selected is not None:
        return selected["chosen"], f"chosen on the validation split from {selected['candidates']}, see {SELECTED.name}"
    if not trains(method):
        return group_rate(method), "unused: the method has nothing to train"
    return group_rate(method), "its group's in LR_GROUPS"


def experiment(method: str, lr: float | None = None) -> dict[str, Any]:
    """The experiment config of one method as plain data (at `lr`, else its `learning_rate`)."""
    from peft_atlas.bench.vlm_micro import BENCHMARK_TASKS, SHOTS

    return {
        "description": f"{method} on VLM-micro (base-to-novel)",
        "method": {"name": method, "options": options(method)},
        "backbone": {"clip": "vlm-micro"},
        "data": {"kind": "vlm-micro", "tasks": list(BENCHMARK_TASKS), "shots": SHOTS},
        "train": {**TRAIN, "lr": learning_rate(method)[0] if lr is None else lr},
        "seed": 0,
    }


def write_config(path: Path, method: str, out: Path, lr: float | None = None, why: str | None = None) -> None:
    """Write a method's config (only if its text changed), checked by the config schema."""
    data = experiment(method, lr)
    if lr is None:
        lr, why = learning_rate(method)
    header = HEADER.format(method=method, lr=lr, why=why, config=_relative(path),
                           out=_relative(out).replace("-seed0.json", "-seedN.json"))
    lr_search.write_config_file(path, header, data)


def dev_experiment(method: str, trial: str) -> dict[str, Any]:
    """A method's config in a design trial: its benchmark config on `turned-dev` with the trial's changes."""
    changes = DEV_TRIALS[trial]
    data = experiment(method, RATES_TEXT_3X64.get(method, DEFAULT_LR))
    data["description"] = f"{method} on VLM-micro's development split, trial {trial}"
    data["backbone"]["recipe"] = changes["recipe"]
    data["data"]["tasks"] = ["turned-dev"]
    data["train"].update(changes.get("train", {}))
    data["method"]["options"].update(changes.get("options", {}))
    return data


def run_trial(trial: str, chosen: list[str], jobs: int, threads: int, sha256: str) -> list[str]:
    """Run a design trial's methods with every dev seed; print mean Base and Novel; return the methods that failed."""
    from peft_atlas.bench.vlm_micro import DEV_SEEDS

    directory = TRIALS / trial
    configs = {}
    for method in DEV_TRIALS[trial].get("methods", chosen):
        path = directory / f"{method}.yaml"
        header = (f"# {method}, VLM-micro design trial {trial!r}: {DEV_TRIALS[trial]['why']}\n"
                  f"# Written by benchmarks/vlm_micro.py --dev {trial}; run with seeds {list(DEV_SEEDS)}.\n")
        lr_search.write_config_file(path, header, dev_experiment(method, trial))
        configs[method] = (path, directory)
    failed = lr_search.run_seeds(configs, list(DEV_SEEDS), sha256, jobs=jobs, threads=threads)
    for method in configs:
        if method not in failed:
            print(trial_summary(directory, method, DEV_SEEDS), flush=True)
    return sorted(failed)


def trial_summary(directory: Path, method: str, seeds: tuple[int, ...]) -> str:
    """One line: a method's mean Base and Novel (and their spread) over the seeds' runs in `directory`."""
    import json
    import statistics

    runs = [json.loads(measured_path(directory, method, seed).read_text(encoding="utf-8")) for seed in seeds]
    base = [run["tasks"][0]["top1"] for run in runs]
    novel = [run["tasks"][0]["novel"]["top1"] for run in runs]
    return (f"{method}: base {statistics.mean(base):.2f} ± {statistics.stdev(base):.2f}, "
            f"novel {statistics.mean(novel):.2f} ± {statistics.stdev(novel):.2f} (seeds {', '.join(map(str, seeds))})")


def select_learning_rates(chosen: list[str], jobs: int, threads: int, sha256: str) -> list[str]:
    """Run the candidate rates of every method that trains, record the choice, keep the winners' runs.

    Returns:
        The methods that failed.
    """
    def run_candidate(method: str, lr: float) -> Path | None:
        config, out = CANDIDATES / method / f"lr{lr:g}.yaml", CANDIDATES / method / f"lr{lr:g}.json"
        write_config(config, method, out, lr, "a candidate of --select-lr")
        return out if lr_search.run_or_keep(config, out, sha256, threads) else None

    scores, files, failed = lr_search.search_rates(
        chosen, candidate_rates, run_candidate, val_score,
        grid_size=len(LR_FACTORS), max_extensions=MAX_EXTENSIONS, step=LR_STEP, jobs=jobs)
    entries = read_selected()
    for method in chosen:
        if method in failed:
            continue
        rates = sorted(scores[method])
        best = choose(scores[method])
        entries[method] = {"chosen": best, "candidates": rates, "val": {lr: scores[method][lr] for lr in rates}}
    lr_search.write_selection(
        SELECTED, "Learning rates of VLM-micro, chosen on the validation split. Written by benchmarks/vlm_micro.py "
        "--select-lr.", entries,
        criterion="validation accuracy (base classes, 4 images per class) of the model after the last epoch, "
                  "seed 0; a tie goes to the lower rate; the novel classes are never looked at",
        factors=LR_FACTORS, step=LR_STEP, max_extensions=MAX_EXTENSIONS, sha256=sha256, script="benchmarks/vlm_micro.py")
    for method in chosen:
        if method not in failed:
            _adopt(method, files[method][entries[method]["chosen"]])
    return sorted(failed)


def _adopt(method: str, candidate: Path) -> None:
    """Make the winning candidate the method's seed-0 result: its config becomes `vlm-micro.yaml`."""
    config, out = CONFIGS / method / CONFIG_NAME, measured_path(MEASURED, method, 0)
    write_config(config, method, out)
    run = lr_search.adopt(candidate, config, out)
    print(f"{method}: lr {run['config']['train']['lr']:g} chosen; wrote {_relative(out)}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the suite; return 1 if any method failed."""
    from peft_atlas.bench.vlm_micro import recipe_config, vlm_micro_weights

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", metavar="METHOD", help="default: every vision-language method")
    parser.add_argument("--select-lr", action="store_true", help="choose each method's learning rate on validation first")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (each with cores/jobs threads)")
    parser.add_argument("--threads", type=int, help="torch threads of each run (default: cores/jobs)")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS), metavar="SEED",
                        help=f"default: {' '.join(map(str, SEEDS))}")
    parser.add_argument("--dev", choices=sorted(DEV_TRIALS), metavar="TRIAL",
                        help=f"run a design trial on the development split instead: {', '.join(DEV_TRIALS)}")
    args = parser.parse_args(argv)
    registered = methods()
    chosen = args.methods or registered
    unknown = [m for m in chosen if m not in registered]
    if unknown:
        parser.error(f"unknown method: {', '.join(unknown)}; vision-language methods: {', '.join(registered)}")
    jobs = max(1, args.jobs)
    threads = args.threads or max(1, (os.cpu_count() or 1) // jobs)

    started = time.perf_counter()
    recipe = recipe_config(DEV_TRIALS[args.dev]["recipe"] if args.dev else None)
    weights = vlm_micro_weights(recipe, quiet=False)
    print(f"CLIP model: {weights.path} ({weights.origin}, sha256 {weights.sha256[:12]})", flush=True)
    if args.dev:
        failed = run_trial(args.dev, chosen, jobs, threads, weights.sha256)
        print(f"trial {args.dev} in {time.perf_counter() - started:.0f} s" + (f"; failed: {', '.join(failed)}" if failed else ""))
        return 1 if failed else 0
    failed = (select_learning_rates([m for m in chosen if trains(m)], jobs, threads, weights.sha256)
              if args.select_lr else [])
    configs = {}
    for method in (m for m in chosen if m not in failed):
        configs[method] = (CONFIGS / method / CONFIG_NAME, MEASURED)
        write_config(configs[method][0], method, measured_path(MEASURED, method, 0))
    failed = sorted(set(failed) | lr_search.run_seeds(configs, args.seeds, weights.sha256, jobs=jobs, threads=threads))
    print(f"{len(chosen)} methods in {time.perf_counter() - started:.0f} s"
          + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

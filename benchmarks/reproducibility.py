"""How far a committed VTAB-micro row moves when it is re-run with other arithmetic.

Another machine runs the same configuration on the same committed backbone and data, but its
floating-point sums come out in another order: another thread count splits them differently, and
another CPU runs other vector kernels (AVX-512, AVX2 or SSE) in PyTorch, MKL and oneDNN. This
script re-runs committed rows under such variants on one machine and measures how far each lands
from the committed numbers:

- `same`: the committed settings again (1 thread, the CPU's own kernels), the same-machine check;
- `2-threads`: 2 torch threads instead of 1;
- `generic-kernels`: 1 thread with PyTorch's portable kernels (`ATEN_CPU_CAPABILITY=default`),
  MKL limited to SSE4.2 and oneDNN to SSE4.1, as on a CPU without AVX;
- `2-threads-generic-kernels`: both at once.

It writes `benchmarks/measured/reproducibility.json`: every variant's per-task top-1 and mean of
group means, their differences from the committed row, and, beside them, the standard deviation
of the committed row over its seeds, so a reader can see whether other arithmetic moves a result
less or more than another seed does. It also writes the tolerance of the re-run test
(`tests/test_reproduction.py`), which re-runs the committed linear-probing row on any machine:
the largest difference any variant showed, but never less than one test prediction per task
(100 / the task's test-set size; on the mean of group means, that step on every task), because
the variants cannot emulate every CPU (AVX-512 kernels, other BLAS builds) and one flipped
prediction is the smallest difference another machine can show.

Usage (from the repository root; about a minute per linear-probing run on one core):

    python benchmarks/reproducibility.py                        # linear probing
    python benchmarks/reproducibility.py --methods linear-probing lora   # keep linear probing: it sets the tolerance
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from statistics import fmean, stdev

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "benchmarks" / "experiments"
MEASURED = REPO / "benchmarks" / "measured" / "vtab-micro"
RERUNS = REPO / "build" / "reproducibility"
OUT = REPO / "benchmarks" / "measured" / "reproducibility.json"

GENERIC_KERNELS = {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
                   "ONEDNN_MAX_CPU_ISA": "SSE41"}
"""Environment that makes PyTorch, MKL and oneDNN use the kernels of a CPU without AVX."""

VARIANTS: dict[str, dict[str, str]] = {
    "same": {"OMP_NUM_THREADS": "1"},
    "2-threads": {"OMP_NUM_THREADS": "2"},
    "generic-kernels": {"OMP_NUM_THREADS": "1", **GENERIC_KERNELS},
    "2-threads-generic-kernels": {"OMP_NUM_THREADS": "2", **GENERIC_KERNELS},
}
"""Name of each variant to the environment its run gets (on top of the caller's)."""

FORMAT = ("peft-atlas-reproducibility", 1)
TOLERANCE_ROW = "linear-probing"
"""The method whose committed seed-0 row the re-run test trains again on every machine."""


def committed_runs(method: str) -> list[dict]:
    """The committed VTAB-micro runs of a method, one per seed, by seed."""
    runs = [json.loads(path.read_text(encoding="utf-8")) for path in MEASURED.glob(f"{method}-seed*.json")]
    if not runs:
        raise SystemExit(f"{MEASURED}: no committed run of {method} (expected {method}-seed<N>.json)")
    return sorted(runs, key=lambda run: run["seed"])


def rerun(method: str, variant: str, reference: dict) -> dict:
    """Run the method's committed config with seed 0 under a variant; the measured run.

    A re-run already in `build/reproducibility/` of the same config on the same backbone is
    kept, so the document can be rewritten (say, once more seeds are committed) without training.
    """
    out = RERUNS / f"{method}-{variant}.json"
    if out.is_file():
        kept = json.loads(out.read_text(encoding="utf-8"))
        if kept["config"] == reference["config"] and kept.get("backbone_weights") == reference.get("backbone_weights"):
            print(f"{method} {variant}: kept {out.relative_to(REPO)}", flush=True)
            return kept
    config = (CONFIGS / method / "micro.yaml").relative_to(REPO).as_posix()
    command = [sys.executable, "-m", "peft_atlas.bench.cli", config, "--seed", "0",
               "--out", str(out), "--quiet"]
    env = {key: value for key, value in os.environ.items() if key not in GENERIC_KERNELS}
    began = time.perf_counter()
    subprocess.run(command, cwd=REPO, env={**env, **VARIANTS[variant]}, check=True)
    print(f"{method} {variant}: {time.perf_counter() - began:.0f} s", flush=True)
    return json.loads(out.read_text(encoding="utf-8"))


def compare(method: str, variants: list[str]) -> dict:
    """Re-run a method under each variant and measure the differences from its seed-0 row."""
    runs = committed_runs(method)
    reference = runs[0]
    if reference["seed"] != 0:
        raise SystemExit(f"{method}: the committed runs have no seed 0")
    tasks = list(reference["metrics"]["top1"])
    seed_std = ({task: stdev(run["metrics"]["top1"][task] for run in runs) for task in tasks}
                if len(runs) > 1 else None)
    entry: dict = {
        "committed": f"{MEASURED.relative_to(REPO).as_posix()}/{method}-seed0.json",
        "committed_hardware": reference["hardware"]["cpu"],
        "committed_threads": reference["hardware"].get("torch_threads"),
        "seeds": [run["seed"] for run in runs],
        "seed_std": {"per_task": seed_std,
                     "mean_of_group_means": stdev(run["metrics"]["mean_of_group_means"] for run in runs)
                     if len(runs) > 1 else None},
        "variants": {},
    }
    for variant in variants:
        run = rerun(method, variant, reference)
        if run["config"] != reference["config"]:
            raise SystemExit(f"{method} {variant}: the re-run's config differs from {entry['committed']}")
        differences = {task: round(run["metrics"]["top1"][task] - reference["metrics"]["top1"][task], 6)
                       for task in tasks}
        entry["variants"][variant] = {
            "environment": VARIANTS[variant],
            "torch_threads": run["hardware"].get("torch_threads"),
            "wall_time_s": run["wall_time_s"],
            "top1": run["metrics"]["top1"],
            "difference": differences,
            "max_abs_task_difference": max(abs(d) for d in differences.values()),
            "mean_of_group_means": run["metrics"]["mean_of_group_means"],
            "mean_of_group_means_difference": round(
                run["metrics"]["mean_of_group_means"] - reference["metrics"]["mean_of_group_means"], 6),
            "identical": run["metrics"] == reference["metrics"],
        }
    moved = [v for v in entry["variants"].values()]
    entry["max_abs_task_difference"] = max(v["max_abs_task_difference"] for v in moved)
    entry["max_abs_mean_difference"] = max(abs(v["mean_of_group_means_difference"]) for v in moved)
    if seed_std:
        entry["mean_seed_std_per_task"] = fmean(seed_std.values())
    return entry


def tolerance(entry: dict) -> dict:
    """The re-run test's tolerance from one method's entry (see the module docstring)."""
    committed = json.loads((REPO / entry["committed"]).read_text(encoding="utf-8"))
    step = {task["task"]: 100 / task["num_test"] for task in committed["tasks"]}
    groups: dict[str, list[float]] = {}
    for task in committed["tasks"]:
        groups.setdefault(task["group"], []).append(step[task["task"]])
    mean_step = fmean(fmean(steps) for steps in groups.values())
    return {
        "row": entry["committed"],
        "per_task": {task: round(max(entry["max_abs_task_difference"], step[task]), 4) for task in step},
        "mean_of_group_means": round(max(entry["max_abs_mean_difference"], mean_step), 4),
        "rule": "the largest difference any variant showed, but at least one test prediction per task "
                "(100 / test-set size; on the mean of group means, that step on every task)",
    }


def main(argv: list[str] | None = None) -> int:
    """Measure every requested method under every variant and write the document."""
    import torch

    from peft_atlas.bench.results import cpu_model

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["linear-probing"], metavar="METHOD")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args(argv)
    RERUNS.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    document = {
        "format": FORMAT[0], "format_version": FORMAT[1],
        "command": shlex.join(["python", "benchmarks/reproducibility.py", *(argv if argv is not None else sys.argv[1:])]),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "cores": os.cpu_count(), "torch": torch.__version__},
        "methods": {method: compare(method, args.variants) for method in args.methods},
    }
    if TOLERANCE_ROW in document["methods"]:
        document["tolerance"] = tolerance(document["methods"][TOLERANCE_ROW])
    # Re-runs kept from build/reproducibility/ take no time here; each variant records its own.
    document["this_invocation_s"] = round(time.perf_counter() - started, 1)
    OUT.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {OUT.relative_to(REPO)} in {document['this_invocation_s']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

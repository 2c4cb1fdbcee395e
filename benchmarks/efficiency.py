"""Efficiency of every reference implementation, each figure measured against its own baseline.

For each registered method (default configuration) on a timm ViT (default `vit_base_patch16_224`,
224 px, batch 8, 100 classes, random initialization), on the CPU of the machine that runs it:

- train step (forward, backward, AdamW step) relative to full fine-tuning;
- peak memory of a train step relative to full fine-tuning;
- inference of the unmerged method relative to the plain backbone;
- for mergeable methods, inference after `merge(unload=True)` relative to the plain backbone.

How. Each method is timed in a process of its own, forked from this one, which holds every model
of the comparison: the plain backbone (trained as full fine-tuning, inferred as the plain model),
the method applied and, if mergeable, a second copy merged and unloaded. All start from the same
weights and the same batch. After `--warmup` untimed rounds, every round runs, back to back: full
fine-tuning step, method step, plain inference, unmerged inference, merged inference; every other
round runs in the reverse order, so that no operation always goes first. Each round gives one
ratio per figure, from two measurements taken seconds apart, so load that changes slowly on the
machine cancels out. The run reports, per figure, the median of the per-round ratios and their
interquartile range (25th and 75th percentiles, "inclusive" method of `statistics.quantiles`),
and keeps every raw time. Timing both sides in one process matters: separate processes timed in
turn (an earlier version of this script) differed by up to 10 % on the same computation, more
than the differences the checks look for.

The control. `full-finetuning` is always measured first, against a second identical model: the
same computation on both sides, so its spread is the noise of the measurement. A run whose
control does not hold 1.00 within the tolerance is rejected as too noisy to judge anything.

Peak memory: a process holding one model only, its resident set is that measurement's. It runs
one train step (which allocates gradients and optimizer state), resets its resident-set
high-water mark (Linux `/proc/self/clear_refs`, value 5) and reads it (`VmHWM`) after a second
step. Both sides carry the same Python and torch runtime, so the ratio is one of whole processes,
not of tensors alone. Memory does not depend on load, so the baseline is measured three times
(at the start, in the middle and at the end of the run) and each method's ratio is given against
each of them: the spread shows how repeatable the measurement is. Where the reset is unavailable,
the mark covers the process's whole life.

Checks. The run fails (exit code 1, no output file, each failing method and its figures named on
stderr, the rejected document kept in a temporary file) when a figure contradicts what the
method does. `t` is `--tolerance` (default 0.05): ratios within 5 % of 1.00 count as equal, a
margin the control must stay within, so that only figures that cannot be right fail the run.

0. The control (see above): fails when the interquartile range of its train or inference
   ratios, widened by t on each side, does not hold 1.00.
1. A method that adds tokens, branches or operations to the forward pass (`FORWARD[m] ==
   "adds"`) cannot run faster than the plain backbone unmerged: fails when the 75th percentile
   of its inference ratios is below 1 - t.
2. A merged model is the plain backbone again: fails when the interquartile range of its merged
   inference ratios, widened by t on each side, does not hold 1.00.
3. A method whose gradient flows through every backbone block (`GRADIENT[m] == "backbone"`)
   cannot have a cheaper train step than one whose gradient never enters the backbone
   (`GRADIENT[m] == "none"`): fails when the 75th percentile of the first is below the 25th
   percentile of the second minus t.

Results go to `--out` (default benchmarks/measured/efficiency.json), which the site renders on
its Efficiency page.

Usage: python benchmarks/efficiency.py [--rounds 4] [--methods lora bitfit ...] [--threads 2]
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import platform
import re
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # reference_impls, also when the package is not installed

FORMAT, FORMAT_VERSION = "peft-atlas-efficiency", 2
DEFAULT_OUT = REPO / "benchmarks" / "measured" / "efficiency.json"
CLASSES = 100

# What a method does to the forward pass of the plain backbone before merging: "adds" tokens,
# branches or operations, or leaves it "same" (it trains parameters the backbone already has).
FORWARD = {
    "adapter": "adds", "adaptformer": "adds", "bitfit": "same", "convpass": "adds", "dora": "adds",
    "fact": "adds", "full-finetuning": "same", "glora": "adds", "ia3": "adds", "kadaptation": "adds",
    "linear-probing": "same", "ln-tuning": "same", "lora": "adds", "lst": "adds", "noah": "adds",
    "partial-k": "same", "prefix-tuning": "adds", "repadapter": "adds", "side-tuning": "adds",
    "ssf": "adds", "vera": "adds", "visual-prompting": "adds", "vpt-deep": "adds", "vpt-shallow": "adds",
}
# Where the training gradient flows: through every "backbone" block (to the input or the first
# tuned parameter), through the "last-blocks" only, or "none" (it never enters the backbone).
GRADIENT = {
    "adapter": "backbone", "adaptformer": "backbone", "bitfit": "backbone", "convpass": "backbone",
    "dora": "backbone", "fact": "backbone", "full-finetuning": "backbone", "glora": "backbone",
    "ia3": "backbone", "kadaptation": "backbone", "linear-probing": "none", "ln-tuning": "backbone",
    "lora": "backbone", "lst": "none", "noah": "backbone", "partial-k": "last-blocks",
    "prefix-tuning": "backbone", "repadapter": "backbone", "side-tuning": "none", "ssf": "backbone",
    "vera": "backbone", "visual-prompting": "backbone", "vpt-deep": "backbone", "vpt-shallow": "backbone",
}
# Full fine-tuning measured against a second, identical model: the same computation on both
# sides, so its ratios show the noise of the measurement itself. Every run measures it first.
CONTROL = "full-finetuning"
FIGURES = ("train_vs_full", "memory_vs_full", "inference_vs_plain", "merged_vs_plain")


# --- measurements, each in a fresh process --------------------------------------------------------

def _reset_peak() -> None:
    """Set the resident-set high-water mark to the current resident set (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # the mark then covers the whole process


def _peak_mb() -> float:
    """The resident-set high-water mark of this process, in MiB."""
    try:
        status = Path("/proc/self/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024
    except (OSError, AttributeError):
        scale = 2**20 if sys.platform == "darwin" else 2**10  # bytes on macOS, KiB on Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


class Subject:
    """One model with its batch and optimizer, and the two operations that are timed.

    Args:
        name: The registered method applied to the backbone ("full-finetuning" for the baseline).
        settings: model, model_kwargs, batch_size and threads.
        merged: Merge the method and unload its wrappers (the plain architecture again).
    """

    def __init__(self, name: str, settings: dict, merged: bool = False):
        import timm
        import torch

        import reference_impls as ri

        self.torch = torch
        torch.manual_seed(0)  # every model of a run starts from the same weights
        self.model = timm.create_model(settings["model"], pretrained=False, num_classes=CLASSES,
                                       **settings["model_kwargs"])
        self.image_size = tuple(self.model.patch_embed.img_size)[0]
        self.images = torch.randn(settings["batch_size"], 3, self.image_size, self.image_size,
                                  generator=torch.Generator().manual_seed(1))
        self.labels = torch.randint(0, CLASSES, (settings["batch_size"],), generator=torch.Generator().manual_seed(2))
        if ri.get_spec(name).needs_data:
            ri.prepare(self.model, name, [(self.images, self.labels)])  # chooses what to tune from the batch
        else:
            ri.apply(self.model, name)
        if merged:
            ri.merge(self.model, unload=True)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.trainable = sum(p.numel() for p in params)
        self.optimizer = None if merged else torch.optim.AdamW(params, lr=1e-4)

    def train(self) -> None:
        """One step: forward, cross-entropy, backward, AdamW."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        self.torch.nn.functional.cross_entropy(self.model(self.images), self.labels).backward()
        self.optimizer.step()

    def infer(self) -> None:
        """One forward pass of the batch without gradients."""
        self.model.eval()
        with self.torch.no_grad():
            self.model(self.images)


def time_method(method: str, settings: dict, rounds: int, warmup: int) -> dict:
    """Interleaved rounds of one method against its baselines, all models in this process.

    Returns:
        trainable, image_size and the per-round seconds of every timed operation.
    """
    import torch

    import reference_impls as ri

    torch.set_num_threads(settings["threads"])
    baseline = Subject("full-finetuning", settings)  # trains as full fine-tuning, infers as the plain model
    subject = Subject(method, settings)
    sequence = [("full_train", baseline.train), ("train", subject.train),
                ("plain_inference", baseline.infer), ("inference", subject.infer)]
    if ri.get_spec(method).mergeable:
        sequence.append(("merged_inference", Subject(method, settings, merged=True).infer))
    for _ in range(warmup):
        for _, operation in sequence:
            operation()
    raw: dict[str, list[float]] = {}
    for index in range(rounds):
        # Every other round runs backwards, so that no operation always goes first: a steady
        # drift of the machine's speed cancels over an even number of rounds.
        for key, operation in sequence if index % 2 == 0 else sequence[::-1]:
            started = time.perf_counter()
            operation()
            raw.setdefault(f"{key}_s", []).append(round(time.perf_counter() - started, 4))
    return {"trainable": subject.trainable, "image_size": subject.image_size, "rounds": raw}


def peak_memory(name: str, settings: dict) -> float:
    """Peak resident set (MiB) of a train step of `name` in a process that holds that model alone."""
    import torch

    torch.set_num_threads(settings["threads"])
    subject = Subject(name, settings)
    subject.train()  # the first step allocates the gradients and the optimizer state
    _reset_peak()
    subject.train()
    return round(_peak_mb(), 1)


def in_fresh_process(context: multiprocessing.context.BaseContext, function, *args):
    """Run `function(*args)` in a new forked process and return its result (errors re-raised)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:  # one task, then it exits
        return pool.submit(function, *args).result()


# --- statistics and checks ---------------------------------------------------------------------

def summary(values: list[float]) -> dict:
    """Median and interquartile range of per-round values (at least two)."""
    p25, median, p75 = statistics.quantiles(values, n=4, method="inclusive")
    return {"median": round(median, 4), "p25": round(p25, 4), "p75": round(p75, 4)}


def ratios(numerators: list[float], denominators: list[float]) -> list[float]:
    """Per-round ratios of two interleaved series."""
    return [a / b for a, b in zip(numerators, denominators, strict=True)]


def _show(figure: dict) -> str:
    return f"{figure['median']:.2f}x (IQR {figure['p25']:.2f}-{figure['p75']:.2f})"


def _holds_one(figure: dict, tolerance: float) -> bool:
    """Whether the interquartile range, widened by `tolerance` on each side, holds 1.00."""
    return figure["p25"] - tolerance <= 1 <= figure["p75"] + tolerance


def check(rows: list[dict], tolerance: float) -> list[str]:
    """Figures that contradict what a method does (the rules of the module docstring).

    Args:
        rows: Per method: "method" and the summaries of `FIGURES` ("merged_vs_plain" None when
            not mergeable).
        tolerance: Ratios within this distance of 1.00 count as equal.

    Returns:
        One message per violation, naming the method and its figures; empty when all hold.
    """
    failures = []
    for row in rows:
        if row["method"] == CONTROL:
            for key in ("train_vs_full", "inference_vs_plain"):
                if not _holds_one(row[key], tolerance):
                    failures.append(f"{CONTROL}: {key} {_show(row[key])} against an identical model: the "
                                    f"measurement's own noise exceeds the tolerance {tolerance:.2f}; run it on a "
                                    f"quieter machine (rule 0: IQR +/- {tolerance:.2f} holds 1.00)")
        unmerged, merged = row["inference_vs_plain"], row["merged_vs_plain"]
        if FORWARD[row["method"]] == "adds" and unmerged["p75"] < 1 - tolerance:
            failures.append(f"{row['method']}: unmerged inference {_show(unmerged)} the plain backbone, "
                            f"but it adds to the forward pass (rule: 75th percentile >= {1 - tolerance:.2f})")
        if merged is not None and not _holds_one(merged, tolerance):
            failures.append(f"{row['method']}: merged inference {_show(merged)} the plain backbone, "
                            f"but merged it is the plain backbone (rule: IQR +/- {tolerance:.2f} holds 1.00)")
    through = [r for r in rows if GRADIENT[r["method"]] == "backbone"]
    outside = [r for r in rows if GRADIENT[r["method"]] == "none"]
    for slow in through:
        for fast in outside:
            if slow["train_vs_full"]["p75"] < fast["train_vs_full"]["p25"] - tolerance:
                failures.append(
                    f"{slow['method']}: train step {_show(slow['train_vs_full'])} full fine-tuning, cheaper "
                    f"than {fast['method']} at {_show(fast['train_vs_full'])}, though its gradient flows "
                    f"through the backbone and {fast['method']}'s does not (rule: 75th percentile of the "
                    f"first >= 25th percentile of the second - {tolerance:.2f})")
    return failures


# --- the run -----------------------------------------------------------------------------------

def method_row(method: str, timed: dict, peak_mb: float, baseline_peaks_mb: list[float]) -> dict:
    """A method's row of the output: its figures from its own rounds, and the raw measurements."""
    import reference_impls as ri

    raw = timed["rounds"]
    return {
        "method": method,
        "forward": FORWARD[method],
        "gradient": GRADIENT[method],
        "mergeable": ri.get_spec(method).mergeable,
        "trainable": timed["trainable"],
        "train_vs_full": summary(ratios(raw["train_s"], raw["full_train_s"])),
        "memory_vs_full": summary([peak_mb / baseline for baseline in baseline_peaks_mb]),
        "inference_vs_plain": summary(ratios(raw["inference_s"], raw["plain_inference_s"])),
        "merged_vs_plain": (summary(ratios(raw["merged_inference_s"], raw["plain_inference_s"]))
                            if "merged_inference_s" in raw else None),
        "peak_mb": peak_mb,
        "rounds": raw,
    }


def _cpu() -> str:
    try:
        return re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text()).group(1).strip()
    except (OSError, AttributeError):
        return platform.processor() or platform.machine()


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_base_patch16_224", help="timm model name")
    parser.add_argument("--model-kwargs", type=json.loads, default={},
                        help='JSON object passed to timm.create_model, e.g. \'{"img_size": 32}\'')
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4,
                        help="timed rounds per method (at least 2; an even number balances the order)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds of each new worker")
    parser.add_argument("--threads", type=int, default=_cores(),
                        help="torch threads per worker (default: the usable cores)")
    parser.add_argument("--tolerance", type=float, default=0.05, help="ratios this close to 1.00 count as equal")
    parser.add_argument("--methods", nargs="+", help="only these methods (default: every registered one)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the JSON document to write")
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (a spread needs two rounds)")
    return args


def run(args: argparse.Namespace, methods: list[str], command: str) -> dict:
    """Measure the control and every method; the output document (not yet checked)."""
    import timm
    import torch

    settings = {"model": args.model, "model_kwargs": args.model_kwargs, "batch_size": args.batch_size,
                "threads": args.threads}
    started = time.time()
    commit, dirty = _git("rev-parse", "HEAD"), bool(_git("status", "--porcelain"))  # the code that measures
    # Fork before any tensor operation: children start in milliseconds, without a second import.
    context = multiprocessing.get_context("fork")
    methods = [CONTROL] + [m for m in methods if m != CONTROL]
    # The baseline's peak memory is deterministic up to the allocator: measured at the start, in
    # the middle and at the end of the run, its spread shows how far that holds.
    checkpoints = {0, len(methods) // 2, len(methods)}
    baseline_peaks_mb: list[float] = []
    timed, peaks = {}, {}
    for index, method in enumerate(methods + [None]):
        if index in checkpoints:
            baseline_peaks_mb.append(in_fresh_process(context, peak_memory, CONTROL, settings))
        if method is None:
            break
        timed[method] = in_fresh_process(context, time_method, method, settings, args.rounds, args.warmup)
        peaks[method] = in_fresh_process(context, peak_memory, method, settings)
        print(f"{method:18} timed and measured  [{time.time() - started:.0f} s]", file=sys.stderr, flush=True)
    rows = [method_row(m, timed[m], peaks[m], baseline_peaks_mb) for m in methods]
    for row in rows:
        print(f"{row['method']:18} train {_show(row['train_vs_full'])}  memory {_show(row['memory_vs_full'])}  "
              f"inference {_show(row['inference_vs_plain'])}"
              + (f"  merged {_show(row['merged_vs_plain'])}" if row["merged_vs_plain"] else ""), file=sys.stderr)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "command": command,
        "conditions": {
            "model": args.model, "model_kwargs": args.model_kwargs, "image_size": timed[CONTROL]["image_size"],
            "batch_size": args.batch_size, "classes": CLASSES, "threads": args.threads,
            "rounds": args.rounds, "warmup": args.warmup, "tolerance": args.tolerance,
            "cpu": _cpu(), "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "timm": timm.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "git_commit": commit, "git_dirty": dirty,
            "wall_time_s": round(time.time() - started, 1),
        },
        # The baselines over the whole run, for scale; every ratio uses its own rounds.
        "baseline": {"train_s": summary([v for row in rows for v in row["rounds"]["full_train_s"]]),
                     "inference_s": summary([v for row in rows for v in row["rounds"]["plain_inference_s"]]),
                     "peak_mb": summary(baseline_peaks_mb), "peaks_mb": baseline_peaks_mb},
        "methods": rows,
    }


def publish(document: dict, out: Path) -> int:
    """Write the document if it passes `check`; otherwise keep it aside and say why.

    Returns:
        The exit code: 0 written, 1 rejected (`out` untouched).
    """
    text = json.dumps(document, indent=2) + "\n"
    failures = check(document["methods"], document["conditions"]["tolerance"])
    if failures:
        with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="efficiency-rejected-", delete=False) as kept:
            kept.write(text)
        print(f"sanity checks failed, nothing written to {out}:", file=sys.stderr)
        for failure in failures:
            print(f"  {failure}", file=sys.stderr)
        print(f"the rejected measurement is in {kept.name}", file=sys.stderr)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Measure, check and write; returns the exit code (2: bad arguments or unclassified methods)."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    import reference_impls as ri

    registered = ri.list_methods(backbone="vit")
    unclassified = [name for name in registered if name not in FORWARD or name not in GRADIENT]
    if unclassified:
        print(f"classify in FORWARD and GRADIENT first: {', '.join(unclassified)}", file=sys.stderr)
        return 2
    unknown = sorted(set(args.methods or ()) - set(registered))
    if unknown:
        print(f"not registered: {', '.join(unknown)}", file=sys.stderr)
        return 2
    command = shlex.join(["python", "benchmarks/efficiency.py", *argv])
    return publish(run(args, args.methods or registered, command), args.out)


if __name__ == "__main__":
    sys.exit(main())

"""Efficiency of every reference implementation on ViT-B/16, measured in one run.

For each registered method (default configuration) on `vit_base_patch16_224` at 224 px, batch 8,
on the CPU of the machine that runs it:

- trainable parameters;
- train-step time (forward, backward, AdamW step) and peak memory, relative to full fine-tuning;
- inference latency unmerged and, for mergeable methods, after `merge(unload=True)`, relative to
  the plain backbone;
- for LoRA, DoRA, VeRA and (IA)3: the same train step with HF PEFT's implementation of the same
  configuration, as a ratio to ours.

Every measurement runs in its own subprocess, so peak memory (max resident set size) belongs to
that measurement alone. Times are medians over repeated steps after warm-up. Results go to
benchmarks/measured/efficiency.json, which the site renders on its Efficiency page.

Usage: python benchmarks/efficiency.py [--steps 3] [--methods lora bitfit ...]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "benchmarks" / "measured" / "efficiency.json"
BACKBONE, BATCH, IMAGE, CLASSES = "vit_base_patch16_224", 8, 224, 100
# HF PEFT configurations equal to our defaults (fused qkv: HF PEFT adapts the whole qkv matrix,
# so ours is run with targets=("qkv",) for the comparison).
PEER_CASES = {
    "lora": ({"r": 8, "alpha": 8.0, "targets": ("qkv",)},
             "LoraConfig(r=8, lora_alpha=8, target_modules=['qkv'])"),
    "dora": ({"r": 8, "alpha": 8.0, "targets": ("qkv",)},
             "LoraConfig(r=8, lora_alpha=8, target_modules=['qkv'], use_dora=True)"),
    "vera": ({"r": 256, "targets": ("qkv",)},
             "VeraConfig(r=256, target_modules=['qkv'])"),
    "ia3": ({"targets": ("qkv", "fc2"), "feedforward": ("fc2",)},
            "IA3Config(target_modules=['qkv', 'fc2'], feedforward_modules=['fc2'])"),
}


def _model():
    import timm
    import torch

    torch.manual_seed(0)
    return timm.create_model(BACKBONE, pretrained=False, num_classes=CLASSES)


def _peer_model(spec: str):
    import peft

    config = eval(spec, {n: getattr(peft, n) for n in ("LoraConfig", "VeraConfig", "IA3Config")})
    model = peft.get_peft_model(_model(), config)
    for name, param in model.named_parameters():
        if name.startswith("base_model.model.head."):
            param.requires_grad_(True)
    return model


def _adapt(model, method: str, kwargs: dict, batch: tuple) -> None:
    """Apply a method; one that chooses what to tune from data is prepared on the timed batch."""
    import reference_impls as ri

    if ri.get_spec(method).needs_data:
        ri.prepare(model, method, [batch], **kwargs)
    else:
        ri.apply(model, method, **kwargs)


def _time(function, steps: int) -> float:
    function()  # warm-up
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(kind: str, method: str, kwargs: dict, steps: int) -> dict:
    """One measurement, run inside a fresh subprocess (see `main`)."""
    import torch

    sys.path.insert(0, str(REPO))
    import reference_impls as ri

    images = torch.randn(BATCH, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, CLASSES, (BATCH,), generator=torch.Generator().manual_seed(2))
    result: dict = {}
    if kind == "plain-inference":
        model = _model().eval()
        with torch.no_grad():
            result["seconds"] = _time(lambda: model(images), steps)
    elif kind in ("train", "peer-train"):
        if kind == "peer-train":
            model = _peer_model(PEER_CASES[method][1])
        else:
            model = _model()
            _adapt(model, method, kwargs, (images, labels))
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(images), labels).backward()
            optimizer.step()

        result["seconds"] = _time(step, steps)
        result["trainable"] = sum(p.numel() for p in params)
    elif kind == "inference":
        model = _model()
        _adapt(model, method, kwargs, (images, labels))
        model.eval()
        with torch.no_grad():
            result["seconds"] = _time(lambda: model(images), steps)
            if ri.get_spec(method).mergeable:
                ri.merge(model, unload=True)
                result["merged_seconds"] = _time(lambda: model(images), steps)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def run(kind: str, method: str, kwargs: dict, steps: int) -> dict:
    """Run `measure` in a subprocess and return its result."""
    command = [sys.executable, __file__, "--child", json.dumps([kind, method, kwargs, steps])]
    output = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per measurement")
    parser.add_argument("--methods", nargs="*", help="only these methods (default: all)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, method, kwargs, steps = json.loads(args.child)
        print(json.dumps(measure(kind, method, kwargs, steps)))
        return

    sys.path.insert(0, str(REPO))
    import reference_impls as ri
    import timm
    import torch

    names = args.methods or ri.list_methods()
    started = time.time()
    plain = run("plain-inference", "", {}, args.steps)
    full = run("train", "full-finetuning", {}, args.steps)
    rows = []
    for name in names:
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        train = run("train", name, {}, args.steps)
        inference = run("inference", name, {}, args.steps)
        row = {
            "method": name,
            "trainable": train["trainable"],
            "train_step_s": train["seconds"],
            "train_vs_full": train["seconds"] / full["seconds"],
            "peak_rss_mb": train["peak_rss_mb"],
            "memory_vs_full": train["peak_rss_mb"] / full["peak_rss_mb"],
            "inference_s": inference["seconds"],
            "inference_vs_plain": inference["seconds"] / plain["seconds"],
        }
        if "merged_seconds" in inference:
            row["merged_inference_s"] = inference["merged_seconds"]
            row["merged_vs_plain"] = inference["merged_seconds"] / plain["seconds"]
        if name in PEER_CASES:
            ours = run("train", name, PEER_CASES[name][0], args.steps)
            peer = run("peer-train", name, {}, args.steps)
            row["peer"] = {"config": PEER_CASES[name][1], "ours_s": ours["seconds"],
                           "peer_s": peer["seconds"], "ours_vs_peer": ours["seconds"] / peer["seconds"],
                           "ours_trainable": ours["trainable"], "peer_trainable": peer["trainable"]}
        rows.append(row)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    document = {
        "setup": {"backbone": BACKBONE, "batch": BATCH, "image": IMAGE, "classes": CLASSES,
                  "steps": args.steps, "statistic": "median after one warm-up step",
                  "threads": torch.get_num_threads(), "machine": platform.machine(),
                  "processor": platform.processor() or platform.machine(),
                  "torch": torch.__version__, "timm": timm.__version__, "git_commit": commit,
                  "wall_time_s": round(time.time() - started, 1)},
        "plain_inference_s": plain["seconds"],
        "full_finetuning": {"train_step_s": full["seconds"], "peak_rss_mb": full["peak_rss_mb"]},
        "rows": rows,
    }
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {OUTPUT}", file=sys.stderr)


if __name__ == "__main__":
    main()

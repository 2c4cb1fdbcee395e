"""How far a prompt method moves the class features of VLM-micro's CLIP, base and novel classes apart.

KgCoOp's explanation of CoOp's loss on novel classes (the README of htyao89/KgCoOp at c43ccc3)
is that the degradation follows the distance between the learned prompt's text features and the
hand-written prompt's. This script measures that distance on the
development split, `turned-dev`, so that it never looks at the benchmark's novel classes: it
trains a method with its config in a design trial (its CLIP recipe and rate) for each dev seed,
as the trial does, and prints for the base and the novel classes the mean and the lowest cosine similarity
between each class's feature under the learned prompt and under "a photo of a {class}.", with
both accuracies.

    python benchmarks/vlm_micro_drift.py                       # CoOp and KgCoOp, trial suite, seeds 100-102
    python benchmarks/vlm_micro_drift.py --trial text-6x128 --methods coop --seeds 100
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import vlm_micro as suite  # noqa: E402  (the suite's configs)

PROMPT_METHODS = ("coop", "kgcoop", "prograd", "maple")
"""Methods whose class features do not depend on the image, so each class has one feature."""


def drift(method: str, seed: int, trial: str = "suite", *, train: bool = True) -> dict[str, dict[str, float]]:
    """Train `method` as in design `trial` with `seed`; per class half, the cosine of learned to hand-written features and both accuracies.

    With `train=False` the method is measured as applied (CoOp's context is then the words of "a
    photo of a", so its features are the hand-written prompt's).
    """
    from reference_impls.clip import encode_tokens, tokenize

    from peft_atlas.bench.clip_backbone import build_clip
    from peft_atlas.bench.clip_runner import apply_clip_method, train_clip, transfer_to_classes
    from peft_atlas.bench.config import parse_config
    from peft_atlas.bench.distributed import seed_everything
    from peft_atlas.bench.runner import resolve_config
    from peft_atlas.bench.vlm_micro import load_vlm_micro_task

    data = suite.dev_experiment(method, trial)
    data["seed"] = seed
    config = resolve_config(parse_config(data, f"{method} on turned-dev"))
    task = load_vlm_micro_task("turned-dev", seed)

    def build() -> torch.nn.Module:
        seed_everything(seed)
        return build_clip(config.backbone)

    model = build()
    apply_clip_method(model, config, task.classnames, task.train)
    if train:
        train_clip(model, config, task, torch.device("cpu"), quiet=True)
    novel_model, _ = transfer_to_classes(model, build, task.novel_classnames)
    result = {}
    with torch.no_grad():
        for half, trained, names, test in (("base", model, task.classnames, task.test),
                                           ("novel", novel_model, task.novel_classnames, task.novel_test)):
            learned = F.normalize(trained.peft_classifier.text_features(trained, None), dim=-1)
            hand = F.normalize(encode_tokens(trained, tokenize(trained, [f"a photo of a {n}." for n in names])), dim=-1)
            cosine = (learned * hand).sum(dim=-1)
            images = F.normalize(trained.encode_image(test.images), dim=-1)
            result[half] = {
                "cos_mean": float(cosine.mean()), "cos_min": float(cosine.min()),
                "top1_learned": 100.0 * float(((images @ learned.t()).argmax(1) == test.labels).float().mean()),
                "top1_hand": 100.0 * float(((images @ hand.t()).argmax(1) == test.labels).float().mean()),
            }
    return result


def main(argv: list[str] | None = None) -> int:
    from peft_atlas.bench.vlm_micro import DEV_SEEDS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", choices=PROMPT_METHODS, default=["coop", "kgcoop"])
    parser.add_argument("--seeds", nargs="+", type=int, default=list(DEV_SEEDS))
    parser.add_argument("--trial", choices=sorted(suite.DEV_TRIALS), default="suite",
                        help="the design trial whose config (CLIP recipe, rate, changes) is trained")
    args = parser.parse_args(argv)
    print(f"trial {args.trial}, CLIP recipe {suite.DEV_TRIALS[args.trial]['recipe']}")
    print("method  seed  half   cos mean  cos min  top1 learned  top1 hand-written")
    for method in args.methods:
        for seed in args.seeds:
            for half, row in drift(method, seed, args.trial).items():
                print(f"{method:7s} {seed:4d}  {half:5s}  {row['cos_mean']:8.3f} {row['cos_min']:8.3f}"
                      f"  {row['top1_learned']:12.2f}  {row['top1_hand']:12.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What the laptop suites (VTAB-micro, VLM-micro) share: the learning-rate search and resumable runs.

A suite script owns its methods, its configs and how it scores a run on validation data; this
module owns what is the same in both: the grid that grows past an end holding the best rate, the
tie rule, running one config in its own process, and knowing a run that is already there (so an
interrupted suite resumes).

Example:
    >>> from peft_atlas.bench.lr_search import choose, next_rate
    >>> choose({0.01: 60.0, 0.03: 62.0, 0.1: 62.0})  # a tie goes to the lower rate
    0.03
    >>> next_rate({0.01: 60.0, 0.03: 61.0, 0.1: 62.0}, added=0, max_extensions=1, step=3.0)
    0.3
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

__all__ = ["REPO", "adopt", "choose", "is_same_run", "measured_path", "next_rate", "read_selected", "relative",
           "resolved_config", "run_bench", "run_or_keep", "run_seeds", "search_rates", "write_selection"]

REPO = Path(__file__).resolve().parents[2]
"""The repository root: suite commands run from it and name files relative to it."""


def relative(path: Path) -> str:
    """`path` relative to the repository when it lies inside it, else as given."""
    try:
        return path.resolve().relative_to(REPO).as_posix()
    except ValueError:
        return str(path)


def write_config_file(path: Path, header: str, data: dict[str, Any]) -> None:
    """Write an experiment config under its comment header, only if its text changed.

    Raises:
        ConfigError: If `data` is not a valid config (names `path` and the field), before writing.
    """
    from .config import parse_config

    parse_config(data, str(path))
    text = header + yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {relative(path)}", flush=True)


def measured_path(directory: Path, method: str, seed: int) -> Path:
    """Where the run of one method with one seed is written."""
    return directory / f"{method}-seed{seed}.json"


def run_bench(config: Path, out: Path, threads: int, seed: int = 0) -> bool:
    """Run one config with `seed` in its own process with `threads` torch threads; True if it succeeded."""
    command = [sys.executable, "-m", "peft_atlas.bench.cli", relative(config), "--seed", str(seed),
               "--out", relative(out), "--quiet"]
    began = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    print(f"{relative(out)}: {time.perf_counter() - began:.0f} s" + ("" if done.returncode == 0 else " FAILED"),
          flush=True)
    return done.returncode == 0


def choose(scores: dict[float, float]) -> float:
    """The rate with the best validation score; a tie goes to the lower rate."""
    return min(scores, key=lambda lr: (-scores[lr], lr))


def next_rate(scores: dict[float, float], added: int, max_extensions: int, step: float) -> float | None:
    """The rate to try next when the best of `scores` is at an end of those tried, else None.

    A tie goes to the lower rate, except when every rate ties: then the next rate is above the
    highest, since a flat score means no rate tried has moved the method yet.

    Args:
        scores: Validation score of every rate tried so far.
        added: How many rates were already added past the initial grid.
        max_extensions: How many rates may be added at most.
        step: The factor between the end rate and the next one past it.
    """
    if added >= max_extensions:
        return None
    best = choose(scores)
    if len(set(scores.values())) == 1:
        # every rate scores the same: none moved the method from where it started, so go higher
        return float(f"{max(scores) * step:.3g}")
    if best == max(scores):
        return float(f"{best * step:.3g}")
    if best == min(scores):
        return float(f"{best / step:.3g}")
    return None


def read_selected(path: Path) -> dict[str, dict]:
    """The per-method entries of a selection file (empty if there is none)."""
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text(encoding="utf-8")).get("methods", {})


def resolved_config(config: Path, seed: int) -> dict[str, Any]:
    """The config file as a run with `seed` records it (defaults filled in)."""
    from .config import load_config, with_overrides
    from .runner import resolve_config

    return resolve_config(with_overrides(load_config(config), seed=seed)).model_dump(mode="json")


def is_same_run(out: Path, expected: dict[str, Any], sha256: str) -> bool:
    """Whether `out` holds a run of exactly the `expected` resolved config on the backbone with `sha256`.

    The recorded config is read as the current schema reads it, so a field added since (with its
    default) does not make an old run look different.
    """
    from .config import parse_config

    if not out.is_file():
        return False
    run = json.loads(out.read_text(encoding="utf-8"))
    recorded = parse_config(run["config"], str(out)).model_dump(mode="json")
    return recorded == expected and (run.get("backbone_weights") or {}).get("sha256") == sha256


def run_or_keep(config: Path, out: Path, sha256: str, threads: int, seed: int = 0) -> bool:
    """Run `config` with `seed` into `out` unless `out` already holds that run on this backbone; True if it is there."""
    if is_same_run(out, resolved_config(config, seed), sha256):
        print(f"{relative(out)}: kept (same config, seed and backbone)", flush=True)
        return True
    return run_bench(config, out, threads, seed)


def run_seeds(configs: dict[str, tuple[Path, Path]], seeds: list[int], sha256: str, *, jobs: int,
              threads: int) -> set[str]:
    """Run each method's config with every seed into its directory, keeping the runs already there.

    Args:
        configs: Per method, its config file and the directory of its `<method>-seed<N>.json` runs.
        seeds: The seeds, run in order.
        sha256: The backbone's hash: a run on another backbone is run again.
        jobs: Runs at once.
        threads: Torch threads of each run.

    Returns:
        The methods of which a run failed.
    """
    work = [(method, config, measured_path(directory, method, seed), seed)
            for method, (config, directory) in configs.items() for seed in seeds]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        done = list(pool.map(lambda item: run_or_keep(item[1], item[2], sha256, threads, item[3]), work))
    return {method for (method, *_), ok in zip(work, done) if not ok}


def search_rates(methods: list[str], first_rates: Callable[[str], list[float]],
                 run_candidate: Callable[[str, float], Path | None], score: Callable[[dict], float], *,
                 grid_size: int, max_extensions: int, step: float, jobs: int,
                 ) -> tuple[dict[str, dict[float, float]], dict[str, dict[float, Path]], set[str]]:
    """Run every method's first rates, then, while its best rate is at an end, one more rate past it.

    Args:
        methods: The methods to tune.
        first_rates: A method's initial grid.
        run_candidate: Runs (or keeps) one method at one rate; the path of its run, None if it failed.
        score: A run's validation score (never its test accuracy).
        grid_size: Rates in an initial grid (the rates past it count as added).
        max_extensions: Rates that may be added past the initial grid.
        step: The factor between an end rate and the next one past it.
        jobs: Candidates run at once.

    Returns:
        Per method, the score (3 decimals) and the run file of every rate tried; and the methods
        of which a run failed (they are tuned no further).
    """
    scores: dict[str, dict[float, float]] = {method: {} for method in methods}
    files: dict[str, dict[float, Path]] = {method: {} for method in methods}
    failed: set[str] = set()
    pending = {method: first_rates(method) for method in methods}
    while pending:
        work = [(method, lr) for method, rates in pending.items() for lr in rates]
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            outs = list(pool.map(lambda item: run_candidate(*item), work))
        for (method, lr), out in zip(work, outs):
            if out is None:
                failed.add(method)
                continue
            files[method][lr] = out
            scores[method][lr] = round(score(json.loads(out.read_text(encoding="utf-8"))), 3)
        pending = {}
        for method in methods:
            if method in failed:
                continue
            following = next_rate(scores[method], len(scores[method]) - grid_size, max_extensions, step)
            if following is not None:
                print(f"{method}: best rate {choose(scores[method]):g} is at an end of the grid; trying {following:g}",
                      flush=True)
                pending[method] = [following]
    return scores, files, failed


def write_selection(path: Path, title: str, entries: dict[str, dict], *, criterion: str, factors: tuple[float, ...],
                    step: float, max_extensions: int, sha256: str, script: str) -> None:
    """Write a suite's selection file: how rates were scored and grown, the backbone, the command
    that ran, and per method the rates tried with their scores and the one chosen.

    Args:
        path: The selection file.
        title: Its first line, a comment saying what it is and what writes it.
        entries: Per method, its `chosen` rate, its `candidates` and their scores.
        criterion: How a rate is scored.
        factors: The initial grid, as factors of the method's group rate.
        step: The factor between an end rate and the next one past it.
        max_extensions: Rates that may be added past the initial grid.
        sha256: The backbone's hash.
        script: The suite script, as the recorded command names it.
    """
    document = {
        "criterion": criterion,
        "grid": f"the rate of the method's group in LR_GROUPS times {', '.join(f'{f:.3g}' for f in factors)}; "
                f"while the best rate is at an end, one more rate {step:g} times past that end "
                f"(above the highest when every rate scores the same; at most {max_extensions} added)",
        "backbone_sha256": sha256,
        "command": shlex.join(["python", script, *sys.argv[1:]]),
        "methods": dict(sorted(entries.items())),
    }
    path.write_text(f"# {title}\n" + yaml.safe_dump(document, sort_keys=False, width=100), encoding="utf-8")
    print(f"wrote {relative(path)}", flush=True)


def adopt(candidate: Path, config: Path, out: Path) -> dict[str, Any]:
    """Make a winning candidate run the method's seed-0 result, written to `out`.

    The run is kept as measured; only its recorded command changes, to name the committed
    `config` (written by the caller) and `out`.

    Raises:
        RuntimeError: If `config` would run something else than the candidate did.
    """
    run = json.loads(candidate.read_text(encoding="utf-8"))
    if not is_same_run(candidate, resolved_config(config, 0), run["backbone_weights"]["sha256"]):
        raise RuntimeError(f"{candidate}: its config differs from {config}; re-run instead of adopting it")
    run["command"] = run["command"].replace(relative(candidate.with_suffix(".yaml")), relative(config)).replace(
        relative(candidate), relative(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")
    return run

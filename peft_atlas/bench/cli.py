"""Run an experiment config and write its measured run.

One process (CPU or one GPU), from the repository root:

    peft-atlas bench benchmarks/experiments/lora/default.yaml --data-root /data/vtab-1k

Several processes (DistributedDataParallel: gloo on CPU, nccl on CUDA, one GPU per process):

    python -m torch.distributed.run --standalone --nproc_per_node 2 -m peft_atlas.bench.cli \\
        benchmarks/experiments/lora/default.yaml --data-root /data/vtab-1k

Both give the same metrics: the global batch (`train.batch_size`) is split over the processes.
The run goes to `benchmarks/measured/<method>/<variant>-seed<N>.json` unless `--out` is given.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

# Nothing else at module level: `peft-atlas` builds its parser from this module without torch,
# and torchrun starts this module without the docs toolchain.

DISTRIBUTED_LAUNCH = "python -m torch.distributed.run --standalone --nproc_per_node {n} -m peft_atlas.bench.cli"


def default_measured_path(config_path: Path, method: str, seed: int) -> Path:
    """`<x>/benchmarks/measured/<method>/<variant>-seed<N>.json` for a config at
    `<x>/benchmarks/experiments/<method>/<variant>.yaml`; otherwise next to the config."""
    config_path = config_path.resolve()
    experiments = config_path.parent.parent
    if experiments.name == "experiments":
        return experiments.parent / "measured" / method / f"{config_path.stem}-seed{seed}.json"
    return config_path.with_name(f"{config_path.stem}-seed{seed}.measured.json")


def _shown(path: Path) -> str:
    """A path relative to the working directory when it is inside it, else absolute."""
    path = path.resolve()
    try:
        return path.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return str(path)


def reproduce_command(config_path: Path, seed: int, data_root: str | None, out: Path, world_size: int) -> str:
    """The command line that repeats a run (run from the same working directory)."""
    launcher = DISTRIBUTED_LAUNCH.format(n=world_size) if world_size > 1 else "peft-atlas bench"
    parts = [_shown(config_path), "--seed", str(seed)]
    if data_root is not None:
        parts += ["--data-root", str(Path(data_root).resolve())]
    parts += ["--out", _shown(out)]
    return f"{launcher} {shlex.join(parts)}"


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `peft-atlas bench` and of `python -m peft_atlas.bench.cli`."""
    parser.add_argument("config", help="experiment config, e.g. benchmarks/experiments/lora/default.yaml")
    parser.add_argument("--data-root", help="folder of the tasks: VTAB-1k, or the data sets of a CLIP protocol "
                                            "(overrides data.root)")
    parser.add_argument("--out", help="measured-results file to write (default: benchmarks/measured/<method>/<variant>-seed<N>.json)")
    parser.add_argument("--seed", type=int, help="seed (overrides the config's seed)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _error(error: Exception) -> int:
    """Report a config, data or backbone error in one message, without a traceback."""
    print(f"error: {error}", file=sys.stderr)
    return 2


def run_bench(args: argparse.Namespace) -> int:
    """Run `args.config` (see `add_bench_arguments`) and write the measured run on rank 0.

    Only errors of the input are reported as such: the config (`ConfigError`), the data
    (`DataError`) and the backbone or its checkpoint (`BackboneError`). Anything else is a bug
    and propagates with its traceback.

    Returns:
        0 on success, 2 if the config, the data, the backbone or its checkpoint cannot be used.
    """
    import torch.distributed as dist

    from .backbone import BackboneError
    from .config import ConfigError, load_config, with_overrides
    from .distributed import init_distributed, rank_and_world, select_device
    from .results import summarize, write_results
    from .runner import resolve_config, run_experiment
    from .vtab import DataError

    config_path = Path(args.config)
    try:
        config = resolve_config(with_overrides(load_config(config_path), seed=args.seed, data_root=args.data_root))
    except ConfigError as error:
        return _error(error)
    started_group = init_distributed(select_device(config.train.device))
    try:
        rank, world = rank_and_world()
        results = run_experiment(config, quiet=args.quiet)
    except (DataError, BackboneError) as error:
        return _error(error)
    finally:
        if started_group:
            dist.destroy_process_group()
    if rank == 0:
        out = Path(args.out) if args.out else default_measured_path(config_path, config.method.name, config.seed)
        command = reproduce_command(config_path, config.seed, config.data.root if args.data_root else None, out, world)
        write_results(out, config, results, command)
        metrics = summarize(results)
        for r in results:
            if r.novel is not None:
                hm = metrics.base_novel[r.task].hm
                print(f"{r.task:>16}  base {r.top1:6.2f}  novel {r.novel.top1:6.2f}  HM {hm:6.2f}  "
                      f"(epoch {r.selected_epoch}, {r.selection})")
            else:
                print(f"{r.task:>16}  {r.group:<12} top-1 {r.top1:6.2f}  (epoch {r.selected_epoch}, {r.selection})")
        if metrics.base_novel_mean is not None:
            mean = metrics.base_novel_mean
            print(f"average base {mean.base:.2f}, novel {mean.novel:.2f}, HM {mean.hm:.2f}")
        else:
            print(f"mean of tasks {metrics.mean_of_tasks:.2f}, mean of group means {metrics.mean_of_group_means:.2f}")
        print(f"wrote {_shown(out)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m peft_atlas.bench.cli` (the form torchrun starts)."""
    parser = argparse.ArgumentParser(prog="python -m peft_atlas.bench.cli", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bench_arguments(parser)
    return run_bench(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())

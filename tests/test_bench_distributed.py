"""Two processes under torchrun (gloo, CPU) give the metrics of one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from bench_support import make_vtab_folder, tiny_config, write_config  # noqa: E402

from peft_atlas.cli import main  # noqa: E402
from peft_atlas.measured import read_measured_run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path: Path) -> None:
    data = make_vtab_folder(tmp_path / "vtab")
    # 9 training examples in global batches of 4: the last batch (1 example) leaves rank 1 idle.
    config = write_config(tmp_path / "tiny.yaml", tiny_config(data))
    assert main(["bench", str(config), "--out", str(tmp_path / "one.json"), "--quiet"]) == 0
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "peft_atlas.bench.cli", str(config), "--out", str(tmp_path / "two.json"), "--quiet"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = read_measured_run(tmp_path / "one.json"), read_measured_run(tmp_path / "two.json")
    assert two.protocol["processes"] == 2 and two.command.startswith("python -m torch.distributed.run")
    assert two.metrics == one.metrics  # accuracies are exact counts: bit-equal
    for a, b in zip(one.tasks, two.tasks, strict=True):
        assert (a.test_correct, a.selected_epoch) == (b.test_correct, b.selected_epoch)
        assert [e.val_top1 for e in a.history] == [e.val_top1 for e in b.history]
        # Gradients are summed in another order across processes: losses agree to float32 rounding.
        for ea, eb in zip(a.history, b.history, strict=True):
            assert eb.train_loss == pytest.approx(ea.train_loss, rel=1e-5)

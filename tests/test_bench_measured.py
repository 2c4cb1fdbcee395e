"""Measured runs have one format and one reader: a broken file is a validation problem naming the
file, line and field (never a silently missing row), and the site reads them without torch."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from bench_support import measured_run_document
from peft_atlas.cli import main
from peft_atlas.measured import MeasuredFileError, load_measured_runs, read_measured_run

REPO = Path(__file__).resolve().parents[1]
RUN = "benchmarks/measured/vtab-micro/lora-seed0.json"


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """The repository's data files (taxonomy, bibliography, measured runs, implementations)."""
    root = tmp_path / "repo"
    for part in ("taxonomy", "bib", "benchmarks/measured", "reference_impls"):
        shutil.copytree(REPO / part, root / part, ignore=shutil.ignore_patterns("__pycache__", "tests"))
    return root


def _edit(root: Path, change: Callable[[dict], object]) -> str:
    """Change the parsed run with `change`, write it back as the harness does; return the text."""
    path = root / RUN
    document = json.loads(path.read_text(encoding="utf-8"))
    change(document)
    text = json.dumps(document, indent=2) + "\n"
    path.write_text(text, encoding="utf-8")
    return text


def _line(text: str, fragment: str) -> int:
    """The line on which the first occurrence of `fragment` ends."""
    return text[: text.index(fragment) + len(fragment)].count("\n") + 1


def _validate(root: Path, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    status = main(["--root", str(root), "validate"])
    captured = capsys.readouterr()
    return status, captured.out + captured.err


def test_the_copy_is_valid_and_every_run_is_read(repo_copy: Path, capsys: pytest.CaptureFixture) -> None:
    status, output = _validate(repo_copy, capsys)
    runs, problems = load_measured_runs(repo_copy)
    assert status == 0 and problems == [], output
    assert len(runs) == len(list((repo_copy / "benchmarks/measured").glob("*/*.json"))) > 0
    assert re.search(rf"{len(runs)} measured runs", output)
    # efficiency.json, directly in benchmarks/measured/, is a file of another format
    assert "benchmarks/measured/efficiency.json" not in {loaded.file for loaded in runs}


def test_malformed_json_names_file_and_line(repo_copy: Path, capsys: pytest.CaptureFixture) -> None:
    path = repo_copy / RUN
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[4] = lines[4].rstrip(",")  # a missing comma on line 5
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    status, output = _validate(repo_copy, capsys)
    assert status == 1
    assert re.search(rf"{RUN}:[56]: malformed JSON: Expecting ',' delimiter", output), output


# (case, how to break the run, text on the line the problem names, expected problem)
# A missing field is reported on the line of the object that lacks it: the first task's "{".
@pytest.mark.parametrize("case, change, fragment, expected", [
    ("missing-field", lambda d: d["tasks"][0].pop("top1"), '\n  "tasks": [\n    {',
     "tasks.0.top1: missing required field 'top1'"),
    ("wrong-type", lambda d: d.update(seed="0"), '"seed": "0"',
     "seed: Input should be a valid integer (got '0', str)"),
    ("wrong-nested-type", lambda d: d["metrics"].update(mean_of_tasks=[1]), '"mean_of_tasks": [',
     "metrics.mean_of_tasks: Input should be a valid number (got [1], list)"),
    ("unknown-field", lambda d: d["peak_memory"].update(gpu_bytes=1), '"gpu_bytes": 1',
     "peak_memory.gpu_bytes: unknown field 'gpu_bytes' (expected one of: max_rss_bytes, cuda_max_allocated_bytes)"),
    ("bad-selection", lambda d: d["config"]["train"].update(selection="best-test"), '"selection": "best-test"',
     "config.train.selection: Input should be 'val200' or 'last-epoch' (got 'best-test', str)"),
    ("wrong-marker", lambda d: d.update(format="peft-atlas-bench"), '"format": "peft-atlas-bench"',
     "format: expected 'peft-atlas-bench-result' (a measured-results file of this version), got 'peft-atlas-bench'"),
    ("wrong-version", lambda d: d.update(format_version=2), '"format_version": 2',
     "format_version: expected 1 (a measured-results file of this version), got 2"),
])
def test_invalid_run_is_a_problem_with_file_line_and_field(
    repo_copy: Path, capsys: pytest.CaptureFixture, case: str, change: Callable[[dict], object],
    fragment: str, expected: str,
) -> None:
    text = _edit(repo_copy, change)
    status, output = _validate(repo_copy, capsys)
    assert status == 1 and "problem(s) found" in output and "Traceback" not in output
    line = _line(text, fragment)
    assert f"{RUN}:{line}: {expected}" in output, output
    runs, _ = load_measured_runs(repo_copy)
    assert RUN not in {loaded.file for loaded in runs}  # the row is gone, and the problem says why


def test_not_an_object(repo_copy: Path, capsys: pytest.CaptureFixture) -> None:
    (repo_copy / RUN).write_text("[1, 2]\n", encoding="utf-8")
    status, output = _validate(repo_copy, capsys)
    assert status == 1 and f"{RUN}:1: expected a JSON object, got list" in output


def test_reader_raises_with_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    document = measured_run_document()
    path.write_text(json.dumps(document, indent=2), encoding="utf-8")
    assert read_measured_run(path).metrics.mean_of_tasks == 50.0
    del document["command"]
    document["seed"] = -0.5
    path.write_text(json.dumps(document, indent=2), encoding="utf-8")
    with pytest.raises(MeasuredFileError) as caught:
        read_measured_run(path, "run.json")
    assert [(p.file, p.field, p.message) for p in caught.value.problems] == [
        ("run.json", "command", "missing required field 'command'"),
        ("run.json", "seed", "Input should be a valid integer (got -0.5, float)"),
    ]
    assert all(p.line > 0 for p in caught.value.problems)


def test_the_site_reads_measured_runs_without_torch() -> None:
    code = """
import json, sys
from pathlib import Path
import peft_atlas.mkdocs_hook
from peft_atlas.kb import load
from peft_atlas.render import load_generated_data, render_pages
kb, problems = load(Path("."))
pages = render_pages(kb, load_generated_data(Path(".")))
heavy = [m for m in ("torch", "timm", "reference_impls", "peft_atlas.bench") if m in sys.modules]
print(json.dumps([len(kb.measured), len(problems), "benchmarks/measured/" in pages["results/vtab-micro.md"], heavy]))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    runs, problems, shown, heavy = json.loads(done.stdout.strip().splitlines()[-1])
    assert runs > 0 and problems == 0 and shown
    assert heavy == []

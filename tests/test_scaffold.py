"""`peft-atlas new`: the scaffold lists exactly what is left to fill, and filled in it is a method."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from peft_atlas.cli import main
from peft_atlas.kb import load
from peft_atlas.render import render_pages

from conftest import REPO

# The facts a contributor writes over the placeholders, field by field.
FACTS = {
    "name": "MyAdapter",
    "full_name": "My Adapter",
    "category": "addition",
    "subtype": "adapter",
    "modality": "[vision]",
    "year": "2025",
    "venue": "CVPR 2025",
    "paper": "https://arxiv.org/abs/2501.00001",
    "code": "https://github.com/example/my-adapter",
    "summary": "A bottleneck adapter after each MLP.",
    "method": "'$h = x + W_u \\sigma(W_d x)$'",
    "insertion": "[mlp]",
    "applications": "[image-classification]",
    "mergeable": "false",
    "mergeable_note": "The nonlinearity keeps the branch out of the weights.",
    "trainable_params": "'$2dr$ per block'",
}
BIB_FACTS = """\
@inproceedings{doe2025my,
  author    = {Doe, Jane},
  title     = {My Adapter},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2025},
  url       = {https://arxiv.org/abs/2501.00001}
}
"""


def fill(text: str) -> str:
    """Replace every placeholder line of the scaffolded entry by the facts."""
    lines = []
    for line in text.splitlines():
        field = line.split(":", 1)[0]
        if "TODO(new)" in line and field in FACTS:
            line = f"{field}: {FACTS[field]}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def problem_fields(root: Path) -> list[str]:
    _, problems = load(root)
    return sorted(f"{p.file}:{p.field}" for p in problems)


def test_new_lists_what_to_fill_and_filled_it_is_on_the_site(mini_kb: Path, capsys) -> None:
    assert main(["--root", str(mini_kb), "new", "my-adapter", "--bib", "doe2025my"]) == 0
    entry, bib = mini_kb / "taxonomy/methods/my-adapter.yaml", mini_kb / "bib/doe2025my.bib"
    assert "wrote taxonomy/methods/my-adapter.yaml" in capsys.readouterr().out
    _, problems = load(mini_kb)
    # every problem is a to-do, one per field to fill: nothing else, nothing missing
    assert all(p.message.startswith("to fill: ") for p in problems), [str(p) for p in problems]
    assert problem_fields(mini_kb) == sorted(
        [f"taxonomy/methods/my-adapter.yaml:{f}" for f in FACTS
         if f not in ("modality", "insertion", "applications")]
        + ["taxonomy/methods/my-adapter.yaml:modality.0", "taxonomy/methods/my-adapter.yaml:insertion.0",
           "taxonomy/methods/my-adapter.yaml:applications.0"]
        + [f"bib/doe2025my.bib:doe2025my.{f}" for f in ("author", "title", "booktitle", "year", "url")])
    line_of_year = next(p.line for p in problems if p.field == "year")
    assert entry.read_text().splitlines()[line_of_year - 1].startswith("year:")

    entry.write_text(fill(entry.read_text()))
    bib.write_text(BIB_FACTS)
    kb, problems = load(mini_kb)
    assert problems == []
    pages = render_pages(kb)
    assert "# MyAdapter" in pages["methods/my-adapter.md"]
    assert "methods/my-adapter.md" in pages["methods/index.md"] or "my-adapter" in pages["methods/index.md"]


def test_new_refuses_an_existing_id_and_writes_nothing(mini_kb: Path, capsys) -> None:
    before = sorted(p.relative_to(mini_kb) for p in mini_kb.rglob("*"))
    assert main(["--root", str(mini_kb), "new", "lora", "--bib", "doe2025my"]) == 2
    assert "taxonomy/methods/lora.yaml already exists: nothing was written" in capsys.readouterr().err
    assert main(["--root", str(mini_kb), "new", "My_Adapter"]) == 2
    assert "expected a lowercase slug" in capsys.readouterr().err
    assert sorted(p.relative_to(mini_kb) for p in mini_kb.rglob("*")) == before


def test_new_impl_adds_an_importable_method_and_its_two_test_rows(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    shutil.copytree(REPO / "reference_impls", root / "reference_impls",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (root / "taxonomy" / "methods").mkdir(parents=True)
    assert main(["--root", str(root), "new", "my-adapter", "--bib", "doe2025my", "--impl"]) == 0

    cases = ast.parse((root / "reference_impls/tests/common.py").read_text())
    counts = ast.parse((root / "reference_impls/tests/test_param_counts.py").read_text())

    def list_items(tree: ast.Module, name: str) -> list[str]:
        node = next(n for n in tree.body if isinstance(n, (ast.Assign, ast.AnnAssign))
                    and getattr(n, "target", None) is not None and getattr(n.target, "id", "") == name
                    or isinstance(n, ast.Assign) and any(getattr(t, "id", "") == name for t in n.targets))
        return [ast.unparse(item) for item in node.value.elts]

    assert list_items(cases, "CASES")[-1] == "Case('my-adapter')"
    assert list_items(counts, "COUNTS")[-1] == "('my-adapter', {}, None)"
    # the scaffolded file registers a method that applies (and trains nothing but the head yet)
    script = ("import timm, reference_impls as ri; m = timm.create_model('vit_tiny_patch16_224', "
              "pretrained=False, num_classes=3); ri.apply(m, 'my-adapter'); print(ri.trainable_parameters(m))")
    out = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True,
                         env={"PYTHONPATH": str(root), "PATH": ""}, check=True).stdout
    assert out.strip() == str(192 * 3 + 3)
    todo_lines = [line for line in (root / "reference_impls/methods/my_adapter.py").read_text().splitlines()
                  if "TODO(new)" in line]
    assert len(todo_lines) >= 5 and re.search(r'register\("my-adapter"', (
        root / "reference_impls/methods/my_adapter.py").read_text())


@pytest.mark.parametrize("args", [["new", "lora-x", "--bib", "bad key!"]])
def test_new_rejects_a_malformed_bib_key(mini_kb: Path, args: list[str], capsys) -> None:
    assert main(["--root", str(mini_kb), *args]) == 2
    assert "--bib 'bad key!': expected a key like hu2022lora" in capsys.readouterr().err
    assert not (mini_kb / "taxonomy/methods/lora-x.yaml").exists()

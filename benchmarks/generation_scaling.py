"""Time loading + validating + page generation for synthetic knowledge bases of growing size.

Usage: python benchmarks/generation_scaling.py [--sizes 33 100 300 1000]

Each synthetic method is a copy of a real entry with a new id, its own BibTeX entry and one
VTAB-1k results row, so every cross-check and every page template runs. Prints one line per
size and the time per method, to show whether generation grows linearly.
"""

from __future__ import annotations

import argparse
import re
import shutil
import tempfile
import time
from pathlib import Path

from peft_atlas.kb import cited_bib_keys, load
from peft_atlas.render import render_pages

REPO = Path(__file__).resolve().parents[1]


def make_knowledge_base(root: Path, size: int) -> None:
    """Write a synthetic knowledge base of ``size`` methods under ``root``."""
    (root / "taxonomy" / "methods").mkdir(parents=True)
    (root / "taxonomy" / "reported" / "vtab-1k").mkdir(parents=True)
    (root / "bib").mkdir()
    for name in ("categories.yaml", "benchmarks.yaml"):
        shutil.copy(REPO / "taxonomy" / name, root / "taxonomy" / name)
    # Implementations are found by scanning their sources: the real ones serve every copy.
    (root / "reference_impls").symlink_to(REPO / "reference_impls", target_is_directory=True)
    # Only the BibTeX the copies cite (the real results rows are not copied, nor their sources).
    cited = cited_bib_keys(load(REPO, check_math=False)[0], include_results=False) | {"jie2023fact"}
    for bib in REPO.glob("bib/*.bib"):
        if bib.stem in cited:
            shutil.copy(bib, root / "bib" / bib.name)
    templates = sorted((REPO / "taxonomy" / "methods").glob("*.yaml"))
    if size < len(templates):
        raise SystemExit(f"size must be at least {len(templates)} (one copy of every real method)")
    stems = "|".join(re.escape(t.stem) for t in templates)
    related_id = re.compile(rf"(?<=[{{\s]id: )({stems})(?=[,}}\s])")
    fact_rows = (REPO / "taxonomy" / "reported" / "vtab-1k" / "jie2023fact.yaml").read_text()
    first_row = fact_rows[fact_rows.index("  - method:"):].split("\n  - method:")[0]
    row_body = first_row.split("\n", 1)[1].rstrip("\n")
    # the copies are other methods: the row's parameter count and its preset are not theirs
    row_body = re.sub(r"\n    (params_m|params_include_head|preset): [^\n]*", "", row_body)
    rows = []
    for index in range(size):
        template = templates[index % len(templates)]
        new_id = f"{template.stem}-{index}"
        text = template.read_text().replace(f"id: {template.stem}\n", f"id: {new_id}\n", 1)
        # Related ids point at the first copy of each method, which always exists.
        head, _, tail = text.partition(f"id: {new_id}\n")
        text = head + f"id: {new_id}\n" + related_id.sub(
            lambda m: f"{m.group(1)}-{[t.stem for t in templates].index(m.group(1))}", tail)
        (root / "taxonomy" / "methods" / f"{new_id}.yaml").write_text(text)
        rows.append(f"  - method: {new_id}\n{row_body}")
    (root / "taxonomy" / "reported" / "vtab-1k" / "synthetic.yaml").write_text(
        "benchmark: vtab-1k\nrows:\n" + "\n".join(rows) + "\n")


def measure(size: int) -> tuple[float, float, float, int]:
    """Seconds to load+cross-check, to render, and to check every formula; number of pages."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "kb"
        make_knowledge_base(root, size)
        started = time.perf_counter()
        kb, problems = load(root, check_math=False)
        loaded = time.perf_counter()
        if problems:
            raise SystemExit(f"synthetic knowledge base is invalid: {problems[:3]}")
        pages = render_pages(kb)
        rendered = time.perf_counter()
        load(root, check_math=True)
        math_s = time.perf_counter() - rendered - (loaded - started)
        return loaded - started, rendered - loaded, math_s, len(pages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[33, 100, 300, 1000])
    args = parser.parse_args()
    print("generation = load + cross-check + render; validate adds the LaTeX check (the build")
    print("renders every formula anyway, so it skips that check)")
    print(f"{'methods':>8} {'pages':>6} {'load s':>7} {'render s':>9} {'generation s':>13} "
          f"{'ms/method':>10} {'+LaTeX check s':>15}")
    for size in args.sizes:
        load_s, render_s, math_s, pages = measure(size)
        total = load_s + render_s
        print(f"{size:>8} {pages:>6} {load_s:>7.2f} {render_s:>9.2f} {total:>13.2f} "
              f"{1000 * total / size:>10.2f} {math_s:>15.2f}")


if __name__ == "__main__":
    main()

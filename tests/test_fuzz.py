"""Property-based: the loader turns any input into problems, never into a traceback."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import write_mini_kb
from peft_atlas.kb import load
from peft_atlas.yamlio import load_yaml

YAML_ALPHABET = st.sampled_from(list("abc:-[]{}#&*!|>'\"%@` \n\t,?0123456789.\\$") + ["\u00e9", "\x00", "\ufeff"])


@given(st.text(alphabet=YAML_ALPHABET, max_size=200))
@settings(max_examples=300, deadline=None)
def test_yaml_reader_never_raises(text):
    document, problems = load_yaml(text, "x.yaml")
    assert document is not None or problems


def mutate(text: str, data: st.DataObject) -> str:
    """Delete, duplicate or replace a random slice, or swap two lines."""
    lines = text.splitlines(keepends=True)
    kind = data.draw(st.sampled_from(["delete", "duplicate", "replace", "swap", "retype"]))
    i = data.draw(st.integers(0, len(lines) - 1))
    j = data.draw(st.integers(i, min(len(lines), i + 3)))
    if kind == "delete":
        del lines[i:j]
    elif kind == "duplicate":
        lines[i:i] = lines[i:j]
    elif kind == "replace":
        lines[i] = data.draw(st.text(alphabet=YAML_ALPHABET, max_size=40)) + "\n"
    elif kind == "swap":
        lines[i], lines[j - 1] = lines[j - 1], lines[i]
    else:
        line = lines[i]
        if ":" in line:
            key = line.split(":", 1)[0]
            value = data.draw(st.sampled_from(["[]", "{}", "null", "3", "-1.5", "true", "'x'", "[[1]]", "{a: b}"]))
            lines[i] = f"{key}: {value}\n"
    return "".join(lines)


@given(st.data())
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_loader_reports_mutated_files_without_raising(data):
    with tempfile.TemporaryDirectory() as tmp:
        root = write_mini_kb(Path(tmp) / "kb")
        target = data.draw(st.sampled_from([
            "taxonomy/methods/lora.yaml", "taxonomy/reported/vtab-1k/hu2022lora.yaml",
            "taxonomy/categories.yaml", "taxonomy/benchmarks.yaml", "bib/hu2022lora.bib"]))
        path = root / target
        path.write_text(mutate(path.read_text(encoding="utf-8"), data), encoding="utf-8")
        kb, problems = load(root)
        for problem in problems:
            assert problem.file and problem.message



@given(st.data())
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_loader_reports_mutated_base_to_novel_files_without_raising(data):
    from conftest import base_novel_yaml, write_base_novel
    from peft_atlas.render import render_pages

    with tempfile.TemporaryDirectory() as tmp:
        root = write_mini_kb(Path(tmp) / "kb")
        write_base_novel(root, mutate(base_novel_yaml(extra="    known_inconsistency: x\n"), data))
        kb, problems = load(root)
        for problem in problems:
            assert problem.file and problem.message
        if not problems:
            render_pages(kb)  # whatever validates also renders

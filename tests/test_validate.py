"""The validator: the real data is clean, and every kind of bad input is a clear problem."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import REPO, base_novel_yaml, edit, results_yaml, write, write_base_novel
from peft_atlas.kb import base_novel_mismatches, harmonic_mean, harmonic_mean_tolerance, load
from peft_atlas.render import render_pages


def problems_of(root: Path) -> list[str]:
    return [str(p) for p in load(root)[1]]


def test_repository_knowledge_base_is_valid():
    kb, problems = load(REPO)
    assert [str(p) for p in problems] == []
    assert len(kb.methods) >= 30
    categories = {(m.category, m.subtype) for m in kb.methods.values()}
    every_subtype = {(c.id, s.id) for c in kb.categories.categories for s in c.subtypes}
    assert every_subtype <= categories, f"subtypes without a method: {every_subtype - categories}"


def test_mini_knowledge_base_is_valid(mini_kb):
    assert problems_of(mini_kb) == []


LORA = "taxonomy/methods/lora.yaml"
# (case id, how to break the mini knowledge base, text expected in a problem)
BAD_INPUTS = [
    ("malformed-yaml", lambda r: edit(r, LORA, "name: LoRA", "name: [LoRA"),
     "taxonomy/methods/lora.yaml:3: malformed YAML"),
    ("tab-indented-yaml", lambda r: edit(r, LORA, "aliases:", "\taliases:"), "malformed YAML"),
    ("empty-file", lambda r: write(r, LORA, ""), "lora.yaml: the file is empty"),
    ("not-a-mapping", lambda r: write(r, LORA, "- just\n- a list\n"),
     "lora.yaml:1: expected a mapping of fields (got ['just', 'a list'], list)"),
    ("unknown-field", lambda r: edit(r, LORA, "name: LoRA", "name: LoRA\ncolour: blue"),
     "lora.yaml:3: colour: unknown field 'colour' (expected one of: id, name"),
    ("missing-field", lambda r: edit(r, LORA, "summary: Learns a low-rank update of frozen weights.\n", ""),
     "lora.yaml:1: summary: missing required field 'summary'"),
    ("wrong-type", lambda r: edit(r, LORA, "year: 2022", "year: '2022'"),
     "lora.yaml:8: year: Input should be a valid integer (got '2022', str)"),
    ("html-in-name", lambda r: edit(r, LORA, "name: LoRA", "name: 'LoRA <script>alert(1)</script>'"),
     "lora.yaml:2: name: expected a plain name without '<' or '>'"),
    ("unknown-category", lambda r: edit(r, LORA, "category: partial", "category: partial-based"),
     "lora.yaml:5: category: unknown category 'partial-based' (expected one of: addition, partial"),
    ("unknown-subtype", lambda r: edit(r, LORA, "subtype: reparameter", "subtype: lowrank"),
     "subtype: unknown subtype 'lowrank' for category 'partial' (expected one of: specification, reparameter)"),
    ("unknown-insertion", lambda r: edit(r, LORA, "insertion: [attention-qkv]", "insertion: [qkv]"),
     "insertion.0: unknown insertion point 'qkv'"),
    ("unknown-application", lambda r: edit(r, LORA, "applications: [image-classification]",
                                           "applications: [classification]"),
     "applications.0: unknown application 'classification' (expected one of: audio-visual"),
    ("duplicate-id", lambda r: write(r, "taxonomy/methods/lora-copy.yaml",
                                     (r / LORA).read_text().replace("id: lora", "id: dora")),
     "duplicate id 'dora' (also in taxonomy/methods/dora.yaml)"),
    ("id-not-file-name", lambda r: edit(r, LORA, "id: lora", "id: lora-v2"),
     "lora.yaml:1: id: id 'lora-v2' must equal the file name (expected lora-v2.yaml)"),
    ("id-not-a-slug", lambda r: edit(r, LORA, "id: lora", "id: LoRA_2"),
     "id: expected a lowercase slug"),
    ("dangling-bib", lambda r: edit(r, LORA, "bib: [hu2022lora]", "bib: [hu2021lora]"),
     "bib.0: unknown bib key 'hu2021lora' (expected a file bib/hu2021lora.bib)"),
    ("dangling-related", lambda r: edit(r, LORA, "{id: dora, relation", "{id: qlora, relation"),
     "related.0.id: unknown method id 'qlora'"),
    ("bad-relation", lambda r: edit(r, LORA, "relation: generalized_by", "relation: cousin_of"),
     "related.0.relation: Input should be 'builds_on'"),
    ("self-related", lambda r: edit(r, LORA, "{id: dora, relation", "{id: lora, relation"),
     "a method cannot be related to itself"),
    ("dangling-impl", lambda r: edit(r, LORA, "mergeable: true", "mergeable: true\nimpl: no-such-impl"),
     "impl: unknown implementation 'no-such-impl'"),
    ("bad-url", lambda r: edit(r, LORA, "paper: https://", "paper: ftp://"), "paper: String should match pattern"),
    ("year-disagrees-with-bib", lambda r: edit(r, LORA, "year: 2022", "year: 2021"),
     "lora.yaml:8: year: year 2021 disagrees with its BibTeX (bib/hu2022lora.bib:1 has year = 2022)"),
    ("venue-disagrees-with-bib", lambda r: edit(r, LORA, "venue: ICLR 2022", "venue: CVPR 2022"),
     "lora.yaml:9: venue: venue 'CVPR 2022' disagrees with its BibTeX (bib/hu2022lora.bib:1: "
     "'International Conference on Learning Representations')"),
    ("venue-year-disagrees", lambda r: edit(r, LORA, "venue: ICLR 2022", "venue: ICLR 2021"),
     "venue: venue 'ICLR 2021' names the year 2021 but year is 2022"),
    ("unknown-latex-macro", lambda r: edit(r, LORA, "with rank $r$", "with rank $\\rank r$"),
     "method: unknown LaTeX macro '\\rank' in '\\rank r'"),
    ("uncited-bib", lambda r: write(r, "bib/smith2020orphan.bib",
                                    "@misc{smith2020orphan,\n  author = {Smith, A.},\n  title = {Orphan},\n"
                                    "  year = {2020},\n  url = {https://example.org}\n}\n"),
     "bib/smith2020orphan.bib:1: smith2020orphan: no method, results row, benchmark, preset or category "
     "source cites 'smith2020orphan'"),
    ("bad-math", lambda r: edit(r, LORA, "with rank $r$", "with rank $r_$"), "cannot render the LaTeX 'r_'"),
    ("unbalanced-math", lambda r: edit(r, LORA, "with rank $r$", "with rank $\\frac{r$"),
     "method: unbalanced braces in the LaTeX"),
    ("row-without-source", lambda r: edit(r, "taxonomy/reported/vtab-1k/hu2022lora.yaml",
                                          '    source: {bib: hu2022lora, table: "Table 1"}\n', ""),
     "hu2022lora.yaml:3: rows.0.source: missing required field 'source'"),
    ("row-source-without-table", lambda r: edit(r, "taxonomy/reported/vtab-1k/hu2022lora.yaml",
                                                ', table: "Table 1"', ""),
     "rows.0.source.table: missing required field 'table'"),
    ("row-dangling-method", lambda r: edit(r, "taxonomy/reported/vtab-1k/hu2022lora.yaml",
                                           "method: lora", "method: qlora"),
     "rows.0.method: unknown method id 'qlora'"),
    ("row-unknown-task", lambda r: edit(r, "taxonomy/reported/vtab-1k/hu2022lora.yaml",
                                        "cifar100: 70.0", "cifar10: 70.0"),
     "rows.0.per_task.cifar10: unknown task 'cifar10' of vtab-1k"),
    ("row-mean-disagrees", lambda r: write(r, "taxonomy/reported/vtab-1k/hu2022lora.yaml", results_yaml(mean=72.5)),
     "rows.0.mean: printed mean 72.5 disagrees with the mean-of-tasks (70.00)"),
    ("row-accuracy-out-of-range", lambda r: edit(r, "taxonomy/reported/vtab-1k/hu2022lora.yaml",
                                                 "dtd: 70.0", "dtd: 170.0"),
     "per_task.dtd: expected an accuracy between 0 and 100"),
    ("row-unknown-benchmark", lambda r: edit(r, "taxonomy/reported/vtab-1k/hu2022lora.yaml",
                                             "benchmark: vtab-1k", "benchmark: vtab-2k"),
     "benchmark: unknown benchmark 'vtab-2k'"),
    ("malformed-bibtex", lambda r: write(r, "bib/hu2022lora.bib", "@inproceedings{hu2022lora,\n  title = {LoRA\n"),
     "bib/hu2022lora.bib:1: malformed BibTeX entry"),
    ("bibtex-missing-field", lambda r: edit(r, "bib/hu2022lora.bib",
                                            "  booktitle = {International Conference on Learning Representations},\n", ""),
     "hu2022lora.booktitle: @inproceedings needs the field 'booktitle'"),
    ("bibtex-duplicate-key-in-file", lambda r: write(r, "bib/hu2022lora.bib",
                                                     (r / "bib/hu2022lora.bib").read_text() * 2),
     "duplicate BibTeX key 'hu2022lora'"),
    ("bibtex-duplicate-key-across-files", lambda r: write(r, "bib/hu2022lora-copy.bib",
                                                          (r / "bib/hu2022lora.bib").read_text()),
     "duplicate BibTeX key 'hu2022lora' (also in bib/hu2022lora-copy.bib)"),
    ("bibtex-key-not-file-name", lambda r: edit(r, "bib/liu2024dora.bib", "{liu2024dora,", "{liu2024weight,"),
     "the key must equal the file name (expected 'liu2024dora')"),
    ("bibtex-bad-year", lambda r: edit(r, "bib/liu2024dora.bib", "year = {2024}", "year = {in press}"),
     "liu2024dora.year: expected a four-digit year"),
    # base-to-novel rows (dtd is on line 17 of base_novel_yaml, the printed average on line 20)
    ("b2n-missing-novel", lambda r: write_base_novel(r, base_novel_yaml().replace(
        "dtd: {base: 80.0, novel: 70.0,", "dtd: {base: 80.0,")),
     "base-to-novel/hu2022lora.yaml:17: rows.0.base_novel.dtd.novel: missing required field 'novel' "
     "(expected the accuracy on the novel classes"),
    ("b2n-not-a-number", lambda r: write_base_novel(r, base_novel_yaml().replace(
        "dtd: {base: 80.0, novel: 70.0,", "dtd: {base: 80.0, novel: seventy,")),
     "hu2022lora.yaml:17: rows.0.base_novel.dtd.novel: Input should be a valid number (got 'seventy', str)"),
    ("b2n-unknown-task", lambda r: write_base_novel(r, base_novel_yaml().replace("imagenet:", "imagenet1k:")),
     "hu2022lora.yaml:9: rows.0.base_novel.imagenet1k: unknown task 'imagenet1k' of base-to-novel "
     "(expected one of: imagenet, caltech101,"),
    ("b2n-missing-task", lambda r: write_base_novel(r, base_novel_yaml().replace(
        "      ucf101: {base: 80.0, novel: 70.0, hm: 74.67}\n", "")),
     "rows.0.base_novel: missing task(s) ucf101: a row of base-to-novel gives base, novel and hm for each of its 11 tasks"),
    ("b2n-hm-disagrees", lambda r: write_base_novel(r, base_novel_yaml().replace(
        "dtd: {base: 80.0, novel: 70.0, hm: 74.67}", "dtd: {base: 80.0, novel: 70.0, hm: 74.69}")),
     "hu2022lora.yaml:17: rows.0.base_novel.dtd.hm: printed HM 74.69 of dtd disagrees with the harmonic mean of "
     "its printed base and novel (74.667; differences up to 0.010 are rounding)"),
    ("b2n-average-hm-disagrees", lambda r: write_base_novel(r, base_novel_yaml(mean_hm=75.0)),
     "hu2022lora.yaml:20: rows.0.base_novel_mean.hm: printed HM 75.00 of the average disagrees with the harmonic "
     "mean of the printed average base and novel (74.667"),
    ("b2n-average-base-disagrees", lambda r: write_base_novel(r, base_novel_yaml().replace(
        "base_novel_mean: {base: 80.0,", "base_novel_mean: {base: 80.5,")),
     "rows.0.base_novel_mean.base: printed base 80.50 of the average disagrees with the mean of the printed base "
     "accuracies of the tasks (80.000"),
    ("b2n-missing-average", lambda r: write_base_novel(r, base_novel_yaml().replace(
        "    base_novel_mean: {base: 80.0, novel: 70.0, hm: 74.67}\n", "")),
     "rows.0.base_novel_mean: missing the printed average over the tasks"),
    ("b2n-average-only-hm-disagrees", lambda r: write_base_novel(r, re.sub(
        r"    base_novel:\n(      .*\n)+", "", base_novel_yaml(mean_hm=75.0))),
     "hu2022lora.yaml:8: rows.0.base_novel_mean.hm: printed HM 75.00 of the average disagrees with the harmonic "),
    ("b2n-neither-tasks-nor-average", lambda r: write_base_novel(r, re.sub(
        r"    base_novel:\n(      .*\n)+    base_novel_mean: .*\n", "", base_novel_yaml())),
     "rows.0.base_novel: a row of base-to-novel needs base_novel: base, novel and hm for each of its 11 tasks"),
    ("b2n-accuracy-out-of-range", lambda r: write_base_novel(r, base_novel_yaml().replace(
        "dtd: {base: 80.0,", "dtd: {base: 180.0,")),
     "rows.0.base_novel.dtd.base: expected an accuracy between 0 and 100, got 180.0"),
    ("b2n-per-task-instead", lambda r: write_base_novel(r, base_novel_yaml(extra="    mean: 74.67\n")),
     "rows.0.mean: base-to-novel is a base-to-novel benchmark: give base_novel"),
    ("b2n-wrong-convention", lambda r: write_base_novel(r, base_novel_yaml().replace(
        "mean_convention: mean-of-tasks", "mean_convention: mean-of-group-means")),
     "rows.0.protocol.mean_convention: the average of a base-to-novel row is the mean over its tasks"),
    ("b2n-fields-on-accuracy-benchmark", lambda r: write(r, "taxonomy/reported/vtab-1k/hu2022lora.yaml",
     results_yaml() + "    base_novel_mean: {base: 80.0, novel: 70.0, hm: 74.67}\n"),
     "rows.0.base_novel_mean: base_novel_mean is only for base-to-novel benchmarks (vtab-1k rows give per_task"),
    ("benchmark-unknown-kind", lambda r: edit(r, "taxonomy/benchmarks.yaml", "kind: base-to-novel", "kind: b2n"),
     "kind: Input should be 'accuracy' or 'base-to-novel'"),
]


@pytest.mark.parametrize("case, break_it, expected", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_a_clear_problem(mini_kb, case, break_it, expected):
    break_it(mini_kb)
    problems = problems_of(mini_kb)
    assert any(expected in p for p in problems), f"{expected!r} not in {problems}"


def test_every_problem_is_reported_not_just_the_first(mini_kb):
    chosen = ["unknown-category", "dangling-related", "row-unknown-task", "bibtex-bad-year"]
    for case, break_it, _ in BAD_INPUTS:
        if case in chosen:
            break_it(mini_kb)
    assert len(problems_of(mini_kb)) >= len(chosen)


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "peft_atlas.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_cli_validate_exits_non_zero_without_traceback(mini_kb):
    for _, break_it, _ in BAD_INPUTS[:2] + BAD_INPUTS[21:22] + BAD_INPUTS[29:30]:
        break_it(mini_kb)
    result = run_cli("validate", cwd=mini_kb)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert "problem(s) found" in result.stderr
    assert result.stderr.count("\n") >= 4


def test_cli_validate_is_clean_on_the_repository():
    result = run_cli("validate", cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok:")


def test_schema_files_are_up_to_date(mini_kb):
    (mini_kb / "taxonomy/schema/method.schema.json").write_text("{}", encoding="utf-8")
    result = run_cli("validate", cwd=mini_kb)
    assert result.returncode == 1
    assert "method.schema.json: JSON Schema is missing or out of date" in result.stderr


def test_inconsistent_source_is_kept_when_explained(mini_kb):
    write(mini_kb, "taxonomy/reported/vtab-1k/hu2022lora.yaml", results_yaml(mean=72.5)
          + "    known_inconsistency: the paper's mean does not match its own tasks\n")
    assert problems_of(mini_kb) == []


def test_mean_convention_is_checked_both_ways(mini_kb):
    # 19 tasks: natural 7 at 80, specialized 4 at 60, structured 8 at 40.
    from conftest import TASKS
    values = [80.0] * 7 + [60.0] * 4 + [40.0] * 8
    per_task = ", ".join(f"{t}: {v}" for t, v in zip(TASKS, values))
    body = results_yaml().replace(", ".join(f"{t}: 70.0" for t in TASKS), per_task)
    tasks_mean, groups_mean = sum(values) / 19, (80 + 60 + 40) / 3
    write(mini_kb, "taxonomy/reported/vtab-1k/hu2022lora.yaml",
          body.replace("mean: 70.0", f"mean: {groups_mean:.1f}").replace("mean-of-tasks", "mean-of-group-means"))
    assert problems_of(mini_kb) == []
    write(mini_kb, "taxonomy/reported/vtab-1k/hu2022lora.yaml", body.replace("mean: 70.0", f"mean: {groups_mean:.1f}"))
    assert any("is the convention mean-of-group-means?" in p for p in problems_of(mini_kb))
    write(mini_kb, "taxonomy/reported/vtab-1k/hu2022lora.yaml", body.replace("mean: 70.0", f"mean: {tasks_mean:.1f}"))
    assert problems_of(mini_kb) == []


RESULTS = "taxonomy/reported/vtab-1k/hu2022lora.yaml"


def with_implementation(root: Path, presets: list[str]) -> None:
    """Give the mini knowledge base's LoRA an implementation and a counts file with these presets."""
    import json

    (root / "reference_impls").mkdir()
    write(root, "reference_impls/lora.py", 'register("lora", LoRAConfig, apply_lora, mergeable=True)\n')
    edit(root, LORA, "mergeable: true", "mergeable: true\nimpl: lora")
    entry = {"options": "r=8", "source": "hu2022lora: r 8 on q and v", "note": "", "method": 294912, "head": 76900, "trainable": 371812}
    write(root, "reference_impls/param_counts.json",
          json.dumps({"methods": {"lora": []}, "presets": {"lora": {name: entry for name in presets}}}))


def test_a_parameter_count_names_its_preset_or_says_why_not(mini_kb):
    from conftest import TASKS

    with_implementation(mini_kb, ["vtab-1k", "fgvc"] + [f"vtab-1k-tk/{t}" for t in TASKS[:-1]])
    # an implemented method's count without a preset, and no word on why
    assert problems_of(mini_kb) == [
        f"{RESULTS}:9: rows.0.params_m: name the preset of implementation 'lora' that reproduces this count "
        "(field preset), or say why no preset does (field no_preset)"]
    # a note is not a reason: only no_preset says why no preset reproduces the count
    write(mini_kb, RESULTS, results_yaml() + "    note: No preset reproduces it, the rank is not stated.\n")
    assert len(problems_of(mini_kb)) == 1
    write(mini_kb, RESULTS, results_yaml() + "    no_preset: The source does not state the rank.\n")
    assert problems_of(mini_kb) == []
    write(mini_kb, RESULTS, results_yaml() + "    preset: vtab-1k\n    no_preset: The rank is not stated.\n")
    assert problems_of(mini_kb) == [f"{RESULTS}:12: rows.0.no_preset: give either preset or no_preset, not both"]
    write(mini_kb, RESULTS, results_yaml() + "    preset: vtab-1k\n")
    assert problems_of(mini_kb) == []
    write(mini_kb, RESULTS, results_yaml() + "    preset: vtab-1k-r8\n")
    assert problems_of(mini_kb) == [
        f"{RESULTS}:11: rows.0.preset: unknown preset 'vtab-1k-r8' of implementation 'lora' "
        "(expected one of: vtab-1k, fgvc, " + ", ".join(f"vtab-1k-tk/{t}" for t in TASKS[:-1]) + ")"]
    # per-task presets must cover every task of the row's benchmark
    write(mini_kb, RESULTS, results_yaml() + "    preset: vtab-1k-tk/*\n")
    assert problems_of(mini_kb) == [
        f"{RESULTS}:11: rows.0.preset: implementation 'lora' has no preset 'vtab-1k-tk/<task>' for: smallnorb_ele"]
    write(mini_kb, RESULTS, results_yaml() + "    preset: vtab-1k-tt/*\n")
    assert "has no per-task presets 'vtab-1k-tt/<task>'" in problems_of(mini_kb)[0]
    # a preset or a head flag without a count
    write(mini_kb, RESULTS, results_yaml().replace("    params_m: 0.29\n", "") + "    preset: vtab-1k\n"
          "    params_include_head: true\n")
    assert problems_of(mini_kb) == [
        f"{RESULTS}:10: rows.0.preset: preset describes params_m, which this row does not have",
        f"{RESULTS}:11: rows.0.params_include_head: params_include_head describes params_m, which this row does not have"]
    write(mini_kb, RESULTS, results_yaml() + "    preset: Vtab 1k\n")
    assert problems_of(mini_kb) == [f"{RESULTS}:11: rows.0.preset: expected a preset name like 'vtab-1k', "
                                    "'vtab-1k/dtd' or 'vtab-1k-tk/*' (got 'Vtab 1k', str)"]


def test_a_preset_source_starts_with_a_known_bib_key(mini_kb):
    import json

    with_implementation(mini_kb, ["vtab-1k"])
    counts = mini_kb / "reference_impls/param_counts.json"
    document = json.loads(counts.read_text())
    document["presets"]["lora"]["vtab-1k"]["source"] = "the official repository, configs/lora.yaml"
    counts.write_text(json.dumps(document))
    write(mini_kb, RESULTS, results_yaml() + "    preset: vtab-1k\n")
    assert problems_of(mini_kb) == [
        "reference_impls/param_counts.json: presets.lora.vtab-1k.source: must start with the bib key of the paper "
        "the configuration comes from (a file in bib/), got 'the official repository, configs/lora.yaml'"]


def test_a_preset_of_a_method_without_implementation_is_a_problem(mini_kb):
    write(mini_kb, RESULTS, results_yaml() + "    preset: vtab-1k\n")
    assert problems_of(mini_kb) == [
        f"{RESULTS}:11: rows.0.preset: method 'lora' has no reference implementation, so it has no presets"]


def test_a_base_to_novel_row_is_valid_and_its_inconsistency_can_be_explained(mini_kb):
    write_base_novel(mini_kb, base_novel_yaml())
    assert problems_of(mini_kb) == []
    # a source whose HM contradicts its own accuracies is kept when the row says why
    write_base_novel(mini_kb, base_novel_yaml(hm=75.0, extra="    known_inconsistency: the paper's HMs are off\n"))
    assert problems_of(mini_kb) == []
    # ...but not its structural mistakes
    write_base_novel(mini_kb, base_novel_yaml(extra="    known_inconsistency: x\n").replace("imagenet:", "imagenet1k:"))
    assert any("unknown task 'imagenet1k'" in p for p in problems_of(mini_kb))


def test_an_average_hm_that_is_a_mean_of_hms_is_named(mini_kb):
    # two groups of data sets with different trade-offs: the HM of the averages (73.78) is not the
    # mean of the per-data-set HMs (73.46), and the message says which convention the number fits
    rows = base_novel_yaml()
    for task in ("imagenet", "caltech101", "oxford_pets", "stanford_cars", "flowers102"):
        rows = rows.replace(f"{task}: {{base: 80.0, novel: 70.0, hm: 74.67}}",
                            f"{task}: {{base: 90.0, novel: 60.0, hm: 72.0}}")
    average_base = (5 * 90 + 6 * 80) / 11
    average_novel = (5 * 60 + 6 * 70) / 11
    mean_of_hms = (5 * 72.0 + 6 * 74.67) / 11
    rows = rows.replace("base_novel_mean: {base: 80.0, novel: 70.0, hm: 74.67}",
                        f"base_novel_mean: {{base: {average_base:.2f}, novel: {average_novel:.2f}, hm: {mean_of_hms:.2f}}}")
    write_base_novel(mini_kb, rows)
    [problem] = problems_of(mini_kb)
    assert "rows.0.base_novel_mean.hm: printed HM 73.46 of the average disagrees" in problem
    assert "it equals the mean of the printed per-task HMs (73.46), a different averaging convention" in problem


# (base, novel) pairs and their rounding: the tolerance must accept every consistent printed row
@given(st.floats(1, 99.99), st.floats(1, 99.99), st.sampled_from([1, 2]))
@settings(max_examples=400, deadline=None)
def test_harmonic_mean_tolerance_covers_rounding_of_printed_numbers(base, novel, decimals):
    printed_base, printed_novel = round(base, decimals), round(novel, decimals)
    printed_hm = round(harmonic_mean(base, novel), decimals)
    recomputed = harmonic_mean(printed_base, printed_novel)
    assert abs(recomputed - printed_hm) <= harmonic_mean_tolerance(printed_base, printed_novel, decimals)


def test_harmonic_mean_tolerance_is_tight_where_it_matters():
    # equal accuracies at two decimals: half a unit for the printed HM, half a unit moved by the inputs
    assert harmonic_mean_tolerance(70.0, 70.0, 2) == pytest.approx(0.010, abs=1e-5)
    # very different accuracies weigh the rounding of the smaller one almost twice
    assert 0.014 < harmonic_mean_tolerance(99.0, 1.0, 2) < 0.015
    assert harmonic_mean_tolerance(70.0, 70.0, 1) == pytest.approx(0.10, abs=1e-5)
    assert harmonic_mean(80.0, 70.0) == pytest.approx(74.6667, abs=1e-4)


def test_mismatches_of_a_base_to_novel_row_are_listed(mini_kb):
    write_base_novel(mini_kb, base_novel_yaml(extra="    known_inconsistency: x\n").replace(
        "dtd: {base: 80.0, novel: 70.0, hm: 74.67}", "dtd: {base: 80.0, novel: 70.0, hm: 80.0}"))
    kb, problems = load(mini_kb)
    assert problems == []
    [loaded] = [r for r in kb.results if r.benchmark == "base-to-novel"]
    [mismatch] = base_novel_mismatches(loaded.row, kb.benchmarks["base-to-novel"])
    assert (mismatch.task, mismatch.field, mismatch.printed) == ("dtd", "hm", 80.0)
    assert mismatch.recomputed == pytest.approx(74.6667, abs=1e-4)


def test_repository_base_to_novel_rows_are_sourced_and_complete():
    kb, _ = load(REPO, check_math=False)
    benchmark = kb.benchmarks["base-to-novel"]
    rows = [r.row for r in kb.results if r.benchmark == "base-to-novel"]
    assert sum(set(row.base_novel) == set(benchmark.task_ids()) for row in rows) >= 10  # rows with every data set
    for row in rows:
        # every data set, or none when the source prints only the average
        assert set(row.base_novel) in (set(benchmark.task_ids()), set()) and row.base_novel_mean is not None
        assert row.source.bib in kb.bib and row.source.table.startswith(("Table", "README"))
        # a row is either consistent or says why it is not
        assert bool(base_novel_mismatches(row, benchmark)) == bool(row.known_inconsistency), row.method


COVERAGE = """\
name: A list
source: https://example.org/list
papers:
  - title: "LoRA: Low-Rank Adaptation of Large Language Models"
    paper: https://arxiv.org/abs/2106.09685
  - title: "A Survey of Everything"
    paper: null
  - title: "Some Method Nobody Added"
"""
EXCLUDED = """\
papers:
  - title: A Survey of Everything
    url: https://example.org/survey
    reason: survey
    note: A survey, not a method.
"""


def test_every_listed_paper_is_an_entry_or_an_exclusion(mini_kb: Path) -> None:
    (mini_kb / "taxonomy" / "coverage").mkdir()
    write(mini_kb, "taxonomy/coverage/a-list.yaml", COVERAGE)
    write(mini_kb, "taxonomy/excluded.yaml", EXCLUDED)
    assert [str(p) for p in load(mini_kb)[1]] == [
        "taxonomy/coverage/a-list.yaml:8: papers.2.title: 'Some Method Nobody Added' is neither a method "
        "entry (no entry's BibTeX has this title) nor a row of taxonomy/excluded.yaml: add the method with "
        "`peft-atlas new`, or exclude it with its reason; if the paper's published title differs from the "
        "list's, set `entry:` to its id"]
    edit(mini_kb, "taxonomy/coverage/a-list.yaml", '  - title: "Some Method Nobody Added"\n',
         '  - title: "Some Method Nobody Added"\n    entry: dora\n')
    kb, problems = load(mini_kb)
    assert problems == []
    pages = render_pages(kb)
    assert "| 1 | LoRA: Low-Rank Adaptation of Large Language Models | [LoRA](methods/lora.md) |" in pages["coverage.md"]
    assert "| 2 | A Survey of Everything | excluded (survey): A survey, not a method. |" in pages["coverage.md"]
    assert "| 3 | Some Method Nobody Added | [DoRA](methods/dora.md) |" in pages["coverage.md"]
    assert "1 paper by reason:\nsurvey 1." in pages["coverage.md"]


@pytest.mark.parametrize(("reason", "expected"), [
    ("somehow", "papers.0.reason: Input should be 'not-a-method', 'out-of-scope', 'survey', 'duplicate' or 'unverified'"),
    ("duplicate", "papers.0.duplicate_of: a duplicate names the method entry that covers it"),
])
def test_exclusions_say_why(mini_kb: Path, reason: str, expected: str) -> None:
    write(mini_kb, "taxonomy/excluded.yaml", EXCLUDED.replace("reason: survey", f"reason: {reason}"))
    problems = [str(p) for p in load(mini_kb)[1]]
    assert any(expected in p for p in problems), problems


def test_applications_page_lists_each_method_under_its_tasks(mini_kb: Path) -> None:
    kb, problems = load(mini_kb)
    page = render_pages(kb)["applications.md"]
    classification, language = page.split("## Image classification")[1], page.split("## Language tasks")[1]
    assert "[DoRA](methods/dora.md)" in classification and "[LoRA](methods/lora.md)" in classification
    assert "[DoRA](methods/dora.md)" in language.split("##")[0]
    assert "[LoRA](methods/lora.md)" not in language.split("##")[0]
    assert "## Point clouds" not in page  # no method, no section


CROSSWALK = """\
libraries:
  - {id: hf-peft, name: HF PEFT, url: "https://github.com/huggingface/peft", version: v0.13.0}
methods:
  lora:
    - library: hf-peft
      name: LoraConfig
      config: "LoraConfig(r=8, target_modules=['qkv'])"
      note: timm's fused qkv gets one low-rank pair for q, k and v together
      source: https://github.com/huggingface/peft/blob/main/src/peft/tuners/lora/config.py
"""


def test_crosswalk_rows_show_on_the_card_and_name_known_ids(mini_kb: Path) -> None:
    write(mini_kb, "taxonomy/crosswalk.yaml", CROSSWALK)
    kb, problems = load(mini_kb)
    assert problems == []
    card = render_pages(kb)["methods/lora.md"]
    assert "## In other libraries" in card
    assert ("| [HF PEFT](https://github.com/huggingface/peft) v0.13.0 | [<code>LoraConfig</code>](https://github.com/"
            "huggingface/peft/blob/main/src/peft/tuners/lora/config.py) | <code>LoraConfig(r=8, target_modules="
            "&#91;&#39;qkv&#39;&#93;)</code> | timm&#39;s fused qkv gets one") in card
    assert "## In other libraries" not in render_pages(kb)["methods/dora.md"]
    write(mini_kb, "taxonomy/crosswalk.yaml", CROSSWALK.replace("  lora:", "  qlora:").replace(
        "- library: hf-peft", "- library: adapterhub"))
    assert sorted(str(p) for p in load(mini_kb)[1]) == [
        "taxonomy/crosswalk.yaml:4: methods.qlora: unknown method id 'qlora' (expected the id of a file in "
        "taxonomy/methods/)",
        "taxonomy/crosswalk.yaml:5: methods.qlora.0.library: unknown library 'adapterhub' (expected one of: hf-peft)"]


def test_a_base_to_novel_row_may_print_only_its_average(mini_kb: Path) -> None:
    """Some sources (a README) print only the average over the 11 data sets: such a row is valid."""
    write_base_novel(mini_kb, re.sub(r"    base_novel:\n(      .*\n)+", "", base_novel_yaml()))
    assert load(mini_kb)[1] == []


def test_a_row_copying_an_earlier_source_must_say_so(mini_kb: Path) -> None:
    """The same 19 numbers in a later paper are one result, not two: the later row names the
    earliest source as copy_of, or validation says which row it copies."""
    later = results_yaml().replace("source: {bib: hu2022lora", "source: {bib: liu2024dora")
    write(mini_kb, "taxonomy/reported/vtab-1k/liu2024dora.yaml", later)
    assert [str(p) for p in load(mini_kb)[1]] == [
        "taxonomy/reported/vtab-1k/liu2024dora.yaml:3: rows.0.copy_of: the 19 per-task numbers equal those of "
        "taxonomy/reported/vtab-1k/hu2022lora.yaml (row 0, hu2022lora Table 1), the earliest source printing "
        "them: add copy_of: {bib: hu2022lora, table: \"Table 1\"}"]
    write(mini_kb, "taxonomy/reported/vtab-1k/liu2024dora.yaml", later.replace(
        "    source: {bib: liu2024dora, table: \"Table 1\"}\n",
        "    source: {bib: liu2024dora, table: \"Table 1\"}\n    copy_of: {bib: hu2022lora, table: \"Table 1\"}\n"))
    assert load(mini_kb)[1] == []
    # the earlier source cannot name the later one as its original (a cycle of copies)
    edit(mini_kb, "taxonomy/reported/vtab-1k/hu2022lora.yaml", "    source: {bib: hu2022lora, table: \"Table 1\"}\n",
         "    source: {bib: hu2022lora, table: \"Table 1\"}\n    copy_of: {bib: liu2024dora, table: \"Table 1\"}\n")
    assert [str(p) for p in load(mini_kb)[1]] == [
        "taxonomy/reported/vtab-1k/hu2022lora.yaml:3: rows.0.copy_of: copy_of names liu2024dora, which is not "
        "earlier than this row's source hu2022lora (order: year, then arXiv id, then key): a row copies only an "
        "earlier source"]


def test_every_reported_row_carries_a_complete_fingerprint(mini_kb: Path) -> None:
    edit(mini_kb, "taxonomy/reported/vtab-1k/hu2022lora.yaml", " image_source: image-files,", "")
    problems = [str(p) for p in load(mini_kb)[1]]
    assert any("rows.0.protocol.image_source: missing required field 'image_source'" in p for p in problems), problems


def test_parser_noise_never_reaches_the_output(mini_kb: Path) -> None:
    """A broken BibTeX entry gives one problem with file, line and the parser's reason; nothing
    else is printed."""
    write(mini_kb, "bib/hu2022lora.bib", "@inproceedings{hu2022lora,\n  author = {Hu, E.},\n  title = {LoRA\n")
    result = subprocess.run([sys.executable, "-m", "peft_atlas.cli", "--root", str(mini_kb), "validate"],
                            capture_output=True, text=True)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and result.stdout == ""
    assert all(re.match(r"^(bib|taxonomy)/\S+:\d+: |^\d+ problem\(s\) found\.$", line) for line in lines), lines
    assert ("bib/hu2022lora.bib:1: malformed BibTeX entry starting here: unexpectedly reached end of file "
            "(expected @type{key, field = {value}, ...})") in lines

"""Load the knowledge base from its files and check every cross-reference.

`load` never raises on bad input: it returns what it could load plus every problem found, each
with file, line, field and what was expected.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Any

from pydantic import BaseModel

from .bib import BibEntry, parse_bib_file
from .mathml import math_problems
from .measured import LoadedRun, load_measured_runs
from .problems import Problem, todo_problems, validate_model
from .scaffold import marker_lines
from .schema import (BaseNovel, Benchmark, BenchmarksFile, CategoriesFile, CrosswalkFile, ExcludedFile, Method,
                     PaperList, ResultRow, ResultsFile)
from .yamlio import LocatedYaml, load_yaml

# Tables print accuracies rounded to 0.1: the mean of rounded tasks is off by up to 0.05 and the
# printed mean by another 0.05 (a little more where the source rounded half-down), so a recomputed
# mean may differ from the printed one by slightly over 0.1.
MEAN_TOLERANCE = 0.11
# A registration is a call at the start of a line, ending a line: register("lora", LoRAConfig, ...).
_REGISTER_CALL = re.compile(r"""^register\(\s*["']([a-z0-9-]+)["'](.*?)\)\s*$""", re.M | re.S)
# A method that chooses what to tune from data registers a prepare step: register(..., prepare=fn).
_PREPARE_ARGUMENT = re.compile(r"\bprepare\s*=")
# A vision-language method acts on open_clip CLIP models: register(..., backbone="clip").
_CLIP_ARGUMENT = re.compile(r"""\bbackbone\s*=\s*["']clip["']""")


@dataclass
class LoadedRow:
    """A results row with where it came from."""

    row: ResultRow
    benchmark: str
    file: str
    line: int
    index: int


@dataclass
class KnowledgeBase:
    """Everything the site is generated from.

    Attributes:
        root: Repository root.
        categories: The category tree, facets and insertion-point vocabulary.
        benchmarks: Benchmarks by id, in file order.
        methods: Methods by id, sorted by id.
        method_files: Relative path of each method's file.
        results: Every reported results row, in file order.
        measured: Every measured run of this repository's harness (benchmarks/measured/), by file.
        bib: BibTeX entries by key, sorted by key.
        impls: Names registered by the reference implementations, each with its module
            (``reference_impls.methods.lora``).
        data_driven_impls: The registered names whose method chooses what to tune from the
            training data (registered with a ``prepare`` step).
        clip_impls: The registered names that act on open_clip CLIP models (vision-language
            methods, registered with ``backbone="clip"``).
        presets: Preset names of each registered implementation (from
            reference_impls/param_counts.json); None when that file is missing.
    """

    root: Path
    categories: CategoriesFile | None = None
    benchmarks: dict[str, Benchmark] = field(default_factory=dict)
    methods: dict[str, Method] = field(default_factory=dict)
    method_files: dict[str, str] = field(default_factory=dict)
    results: list[LoadedRow] = field(default_factory=list)
    measured: list[LoadedRun] = field(default_factory=list)
    bib: dict[str, BibEntry] = field(default_factory=dict)
    impls: dict[str, str] = field(default_factory=dict)
    data_driven_impls: set[str] = field(default_factory=set)
    clip_impls: set[str] = field(default_factory=set)
    presets: dict[str, list[str]] | None = None
    # Each method's names in other libraries (taxonomy/crosswalk.yaml), or None without that file.
    crosswalk: Any = None
    # Papers deliberately not entries (taxonomy/excluded.yaml) and the public lists covered.
    excluded: list = field(default_factory=list)
    paper_lists: dict[str, Any] = field(default_factory=dict)
    # Bib keys the presets name as their sources.
    preset_bib_keys: set[str] = field(default_factory=set)
    # Ids of method files that exist but failed validation: not reported again as dangling.
    invalid_method_ids: set[str] = field(default_factory=set)

    def category(self, category_id: str):
        """The category with this id (None if unknown)."""
        assert self.categories is not None
        return next((c for c in self.categories.categories if c.id == category_id), None)


# ---------------------------------------------------------------- validation

# Readable messages for the patterns of schema.py, by (pydantic error type, field name).
_HINTS = {
    ("string_pattern_mismatch", "id"): "expected a lowercase slug (letters, digits and single hyphens)",
    ("string_pattern_mismatch", "name"): "expected a plain name without '<' or '>'",
    ("string_pattern_mismatch", "full_name"): "expected a plain name without '<' or '>'",
    ("string_pattern_mismatch", "preset"): "expected a preset name like 'vtab-1k', 'vtab-1k/dtd' or 'vtab-1k-tk/*'",
    ("missing", "base"): "missing required field 'base' (expected the accuracy on the base classes, "
                         "e.g. {base: 80.1, novel: 70.2, hm: 74.82})",
    ("missing", "novel"): "missing required field 'novel' (expected the accuracy on the novel classes, "
                          "e.g. {base: 80.1, novel: 70.2, hm: 74.82})",
}


def _validate(model: type[BaseModel], doc: LocatedYaml, file: str) -> tuple[Any, list[Problem]]:
    """Validate one document; a document with values left to fill (`peft-atlas new`) gives one
    problem per such value, plus the schema's complaints about the other fields, and no model."""
    todos, todo_paths = todo_problems(doc.data, file, doc.line_of)
    value, problems = validate_model(model, doc.data, file, doc.line_of, _HINTS)
    if not todos:
        return value, problems
    others = [p for p in problems if not any(p.field == t or p.field.startswith(t + ".") for t in todo_paths)]
    return None, todos + others


# ---------------------------------------------------------------- loading

def _read(path: Path, root: Path) -> tuple[LocatedYaml | None, list[Problem]]:
    rel = path.relative_to(root).as_posix()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        return None, [Problem(rel, 0, "", f"cannot read the file: {error}")]
    return load_yaml(text, rel)


def scan_impl_names(root: Path) -> tuple[dict[str, str], set[str], set[str]]:
    """Names registered in reference_impls with their modules, the names registered with a
    ``prepare`` step, and the names acting on CLIP models, found without importing it (the docs
    toolchain has no torch)."""
    names: dict[str, str] = {}
    data_driven: set[str] = set()
    clip: set[str] = set()
    package = root / "reference_impls"
    if package.is_dir():
        for path in sorted(package.rglob("*.py")):
            if "tests" in path.relative_to(package).parts:
                continue
            module = ".".join(path.relative_to(root).with_suffix("").parts)
            for name, arguments in _REGISTER_CALL.findall(path.read_text(encoding="utf-8")):
                names[name] = module
                if _PREPARE_ARGUMENT.search(arguments):
                    data_driven.add(name)
                if _CLIP_ARGUMENT.search(arguments):
                    clip.add(name)
    return names, data_driven, clip


PARAM_COUNTS = "reference_impls/param_counts.json"


# A preset's source starts with the bib key of the paper whose configuration it is.
_LEADING_BIB_KEY = re.compile(r"[A-Za-z][\w-]*\d{4}[\w-]*")


def read_preset_names(root: Path, bib_keys: Iterable[str]
                      ) -> tuple[dict[str, list[str]] | None, set[str], list[Problem]]:
    """Preset names of every implementation, from the counts file ``python -m
    reference_impls.param_counts`` writes (the docs toolchain cannot import the presets), the bib
    keys their sources name, and a problem for every preset whose source does not start with a
    known bib key."""
    path = root / PARAM_COUNTS
    if not path.is_file():
        return None, set(), []
    try:
        presets = json.loads(path.read_text(encoding="utf-8")).get("presets", {})
        sources = {(impl, name): str(entry.get("source", "")) for impl, named in presets.items()
                   for name, entry in named.items()}
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as error:
        return None, set(), [Problem(PARAM_COUNTS, 0, "presets", f"cannot read the presets: {error}")]
    known = set(bib_keys)
    cited: set[str] = set()
    problems = []
    for (impl, name), source in sorted(sources.items()):
        key = _LEADING_BIB_KEY.match(source)
        if key is not None:
            cited.add(key.group())
        if key is None or key.group() not in known:
            problems.append(Problem(PARAM_COUNTS, 0, f"presets.{impl}.{name}.source",
                                    f"must start with the bib key of the paper the configuration comes from "
                                    f"(a file in bib/), got {source!r}"))
    return {impl: list(named) for impl, named in presets.items()}, cited, problems


def load(root: Path | str, check_math: bool = True) -> tuple[KnowledgeBase, list[Problem]]:
    """Load and cross-check the knowledge base under ``root``.

    Args:
        root: Repository root holding taxonomy/ and bib/.
        check_math: Also render every formula once to find broken LaTeX (the site build renders
            them anyway and can skip this).

    Returns:
        The knowledge base (possibly partial) and every problem found, sorted.
    """
    root = Path(root).resolve()
    kb = KnowledgeBase(root=root)
    problems: list[Problem] = []

    def load_model(path: Path, model: type[BaseModel]) -> tuple[Any, LocatedYaml | None]:
        doc, found = _read(path, root)
        problems.extend(found)
        if doc is None:
            return None, None
        value, found = _validate(model, doc, path.relative_to(root).as_posix())
        problems.extend(found)
        return value, doc

    categories_path = root / "taxonomy" / "categories.yaml"
    if categories_path.is_file():
        kb.categories, _ = load_model(categories_path, CategoriesFile)
    else:
        problems.append(Problem("taxonomy/categories.yaml", 0, "", "file is missing"))

    benchmarks_path = root / "taxonomy" / "benchmarks.yaml"
    if benchmarks_path.is_file():
        benchmarks, _ = load_model(benchmarks_path, BenchmarksFile)
        if benchmarks:
            kb.benchmarks = {b.id: b for b in benchmarks.benchmarks}

    for path in sorted((root / "bib").glob("*.bib")):
        entries, found = parse_bib_file(path, root)
        problems.extend(found)
        for entry in entries:
            if entry.key in kb.bib:
                problems.append(Problem(entry.file, entry.line, entry.key,
                                        f"duplicate BibTeX key '{entry.key}' (also in {kb.bib[entry.key].file})"))
                continue
            if entry.key != path.stem:
                problems.append(Problem(entry.file, entry.line, entry.key,
                                        f"the key must equal the file name (expected '{path.stem}')"))
            kb.bib[entry.key] = entry
    kb.bib = dict(sorted(kb.bib.items()))

    kb.impls, kb.data_driven_impls, kb.clip_impls = scan_impl_names(root)
    kb.presets, kb.preset_bib_keys, found = read_preset_names(root, kb.bib)
    problems.extend(found)

    method_docs: dict[str, LocatedYaml] = {}
    for path in sorted((root / "taxonomy" / "methods").glob("*.y*ml")):
        rel = path.relative_to(root).as_posix()
        method, doc = load_model(path, Method)
        if method is None or doc is None:
            raw_id = doc.data.get("id") if doc is not None and isinstance(doc.data, dict) else None
            kb.invalid_method_ids.add(raw_id if isinstance(raw_id, str) else path.stem)
            continue
        if method.id != path.stem.split(".")[0] or path.suffix != ".yaml":
            problems.append(Problem(rel, doc.line_of(("id",)), "id",
                                    f"id '{method.id}' must equal the file name (expected {method.id}.yaml)"))
        if method.id in kb.methods:
            problems.append(Problem(rel, doc.line_of(("id",)), "id",
                                    f"duplicate id '{method.id}' (also in {kb.method_files[method.id]})"))
            continue
        kb.methods[method.id] = method
        kb.method_files[method.id] = rel
        method_docs[method.id] = doc
    kb.methods = dict(sorted(kb.methods.items()))

    result_docs: list[tuple[ResultsFile, LocatedYaml, str]] = []
    for path in sorted((root / "taxonomy" / "reported").rglob("*.y*ml")):
        rel = path.relative_to(root).as_posix()
        results, doc = load_model(path, ResultsFile)
        if results is None or doc is None:
            continue
        result_docs.append((results, doc, rel))
        for index, row in enumerate(results.rows):
            kb.results.append(LoadedRow(row, results.benchmark, rel, doc.line_of(("rows", index)), index))

    kb.measured, found = load_measured_runs(root)
    problems.extend(found)

    problems.extend(_check_methods(kb, method_docs, check_math))
    problems.extend(_check_results(kb, result_docs))
    for key in (kb.categories.sources if kb.categories else []):
        if key not in kb.bib:
            problems.append(Problem("taxonomy/categories.yaml", 0, "sources",
                                    f"unknown bib key '{key}' (expected a file bib/{key}.bib)"))
    for benchmark in kb.benchmarks.values():
        for key in benchmark.bib:
            if key not in kb.bib:
                problems.append(Problem("taxonomy/benchmarks.yaml", 0, f"{benchmark.id}.bib",
                                        f"unknown bib key '{key}' (expected a file bib/{key}.bib)"))
    problems.extend(_check_uncited_bib(kb))
    problems.extend(_check_copies(kb))
    problems.extend(_check_coverage(kb, root, load_model))
    problems.extend(_check_crosswalk(kb, root, load_model))
    problems.extend(Problem(file, line, "", f"to fill: {what}") for file, line, what in marker_lines(root))
    return kb, sorted(set(problems))


def _check_crosswalk(kb: KnowledgeBase, root: Path, load_model) -> list[Problem]:
    """Crosswalk rows name known methods and libraries."""
    path = root / "taxonomy" / "crosswalk.yaml"
    if not path.is_file():
        return []
    crosswalk, doc = load_model(path, CrosswalkFile)
    if crosswalk is None:
        return []
    kb.crosswalk = crosswalk
    problems = []
    libraries = {library.id for library in crosswalk.libraries}
    for method_id, entries in crosswalk.methods.items():
        if method_id not in kb.methods:
            problems.append(Problem("taxonomy/crosswalk.yaml", doc.line_of(("methods", method_id)),
                                    f"methods.{method_id}", f"unknown method id '{method_id}' "
                                    "(expected the id of a file in taxonomy/methods/)"))
        for index, entry in enumerate(entries):
            if entry.library not in libraries:
                problems.append(Problem("taxonomy/crosswalk.yaml", doc.line_of(("methods", method_id, index)),
                                        f"methods.{method_id}.{index}.library",
                                        f"unknown library '{entry.library}' (expected one of: "
                                        f"{', '.join(sorted(libraries))})"))
    return problems


def methods_by_title(kb: KnowledgeBase) -> dict[str, list[Method]]:
    """The method entries each paper introduces or describes, by the paper's `title_key`."""
    found: dict[str, list[Method]] = {}
    for method in kb.methods.values():
        for key in method.bib:
            if key in kb.bib:
                entries = found.setdefault(title_key(kb.bib[key].title), [])
                if method not in entries:
                    entries.append(method)
    return found


def title_key(title: str) -> str:
    """A title reduced to lowercase letters and digits, so that case, punctuation and BibTeX
    braces do not decide whether two titles are the same paper."""
    return re.sub(r"[^a-z0-9]", "", title.lower())


def _check_coverage(kb: KnowledgeBase, root: Path, load_model) -> list[Problem]:
    """Every paper of a covered list is a method entry or an exclusion with its reason."""
    problems: list[Problem] = []
    excluded_titles: set[str] = set()
    excluded_path = root / "taxonomy" / "excluded.yaml"
    if excluded_path.is_file():
        excluded, doc = load_model(excluded_path, ExcludedFile)
        kb.excluded = list(excluded.papers) if excluded else []
        for index, paper in enumerate(kb.excluded):
            excluded_titles.add(title_key(paper.title))
            where = ("taxonomy/excluded.yaml", doc.line_of(("papers", index)))
            if paper.reason == "duplicate" and paper.duplicate_of not in kb.methods:
                problems.append(Problem(*where, f"papers.{index}.duplicate_of",
                                        "a duplicate names the method entry that covers it: expected "
                                        f"the id of a file in taxonomy/methods/, got {paper.duplicate_of!r}"))
            elif paper.reason != "duplicate" and paper.duplicate_of is not None:
                problems.append(Problem(*where, f"papers.{index}.duplicate_of",
                                        f"duplicate_of only goes with reason duplicate (reason is {paper.reason})"))
    entry_titles = methods_by_title(kb)
    for path in sorted((root / "taxonomy" / "coverage").glob("*.yaml")):
        listed, doc = load_model(path, PaperList)
        rel = path.relative_to(root).as_posix()
        if listed is not None:
            kb.paper_lists[path.stem] = listed
        for index, paper in enumerate(listed.papers if listed else []):
            line = doc.line_of(("papers", index))
            if paper.entry is not None:
                if paper.entry not in kb.methods:
                    problems.append(Problem(rel, line, f"papers.{index}.entry",
                                            f"unknown method id '{paper.entry}' (expected a file in taxonomy/methods/)"))
            elif title_key(paper.title) not in entry_titles and title_key(paper.title) not in excluded_titles:
                problems.append(Problem(rel, line, f"papers.{index}.title",
                                        f"'{paper.title}' is neither a method entry (no entry's BibTeX has this "
                                        "title) nor a row of taxonomy/excluded.yaml: add the method with "
                                        "`peft-atlas new`, or exclude it with its reason; if the paper's "
                                        "published title differs from the list's, set `entry:` to its id"))
    return problems


def source_order(kb: KnowledgeBase, bib: str) -> tuple:
    """Publication order of a source: year, then arXiv id, then key."""
    entry = kb.bib.get(bib)
    return (entry.year if entry else "", entry.fields.get("eprint", "~") if entry else "~", bib)


def _check_copies(kb: KnowledgeBase) -> list[Problem]:
    """Rows of different sources with the same per-task numbers are one result: every later one
    names the earliest source as `copy_of`, so comparisons count it once."""
    groups: dict[tuple, list[LoadedRow]] = {}
    for loaded in kb.results:
        if len(loaded.row.per_task) > 1:
            key = (loaded.benchmark, tuple(sorted(loaded.row.per_task.items())))
            groups.setdefault(key, []).append(loaded)
    problems = []
    for loaded in kb.results:
        copy = loaded.row.copy_of
        # a copy points back in time: a later source's row cannot be the original of an earlier one
        if (copy is not None and copy.bib != loaded.row.source.bib
                and source_order(kb, copy.bib) >= source_order(kb, loaded.row.source.bib)):
            problems.append(Problem(
                loaded.file, loaded.line, f"rows.{loaded.index}.copy_of",
                f"copy_of names {copy.bib}, which is not earlier than this row's source {loaded.row.source.bib} "
                f"(order: year, then arXiv id, then key): a row copies only an earlier source"))
    for rows in groups.values():
        if len({r.row.source.bib for r in rows}) < 2:
            continue
        first = min(rows, key=lambda r: source_order(kb, r.row.source.bib))
        for loaded in rows:
            copy = loaded.row.copy_of
            if loaded.row.source.bib != first.row.source.bib and (copy is None or copy.bib != first.row.source.bib):
                problems.append(Problem(
                    loaded.file, loaded.line, f"rows.{loaded.index}.copy_of",
                    f"the {len(loaded.row.per_task)} per-task numbers equal those of {first.file} (row "
                    f"{first.index}, {first.row.source.bib} {first.row.source.table}), the earliest source printing "
                    f"them: add copy_of: {{bib: {first.row.source.bib}, table: \"{first.row.source.table}\"}}"))
    return problems


def cited_bib_keys(kb: KnowledgeBase, include_results: bool = True) -> set[str]:
    """Bib keys cited by methods, categories, benchmarks, presets and (optionally) results rows."""
    cited = {key for method in kb.methods.values() for key in method.bib}
    cited |= set(kb.categories.sources if kb.categories else [])
    cited |= {key for benchmark in kb.benchmarks.values() for key in benchmark.bib}
    cited |= kb.preset_bib_keys
    if include_results:
        cited |= {loaded.row.source.bib for loaded in kb.results}
    return cited


def _check_uncited_bib(kb: KnowledgeBase) -> list[Problem]:
    """A BibTeX file that nothing cites is either a forgotten citation or a leftover."""
    cited = cited_bib_keys(kb)
    return [Problem(entry.file, entry.line, key,
                    f"no method, results row, benchmark, preset or category source cites '{key}': "
                    "add the key to the entry that relies on it, or delete the file")
            for key, entry in kb.bib.items() if key not in cited]


def _check_methods(kb: KnowledgeBase, docs: dict[str, LocatedYaml], check_math: bool) -> list[Problem]:
    problems: list[Problem] = []
    insertion_ids = {p.id for p in kb.categories.insertion_points} if kb.categories else set()
    application_ids = {a.id for a in kb.categories.applications} if kb.categories else set()
    for method_id, method in kb.methods.items():
        file, doc = kb.method_files[method_id], docs[method_id]

        def problem(path: tuple, message: str) -> None:
            problems.append(Problem(file, doc.line_of(path), ".".join(str(p) for p in path), message))

        if kb.categories is not None:
            category = kb.category(method.category)
            if category is None:
                valid = ", ".join(c.id for c in kb.categories.categories)
                problem(("category",), f"unknown category '{method.category}' (expected one of: {valid})")
            elif method.subtype not in {s.id for s in category.subtypes}:
                valid = ", ".join(s.id for s in category.subtypes)
                problem(("subtype",), f"unknown subtype '{method.subtype}' for category "
                                      f"'{method.category}' (expected one of: {valid})")
            for index, point in enumerate(method.insertion):
                if point not in insertion_ids:
                    problem(("insertion", index), f"unknown insertion point '{point}' "
                                                  f"(expected one of: {', '.join(sorted(insertion_ids))})")
            for index, application in enumerate(method.applications):
                if application not in application_ids:
                    problem(("applications", index), f"unknown application '{application}' "
                                                     f"(expected one of: {', '.join(sorted(application_ids))})")
        for index, key in enumerate(method.bib):
            if key not in kb.bib:
                problem(("bib", index), f"unknown bib key '{key}' (expected a file bib/{key}.bib)")
        introducing = kb.bib.get(method.bib[0])
        if introducing is not None:
            for path, message in venue_disagreements(method, introducing):
                problem(path, message)
        for index, related in enumerate(method.related):
            if related.id not in kb.methods and related.id not in kb.invalid_method_ids:
                problem(("related", index, "id"), f"unknown method id '{related.id}' "
                                                  "(expected the id of a file in taxonomy/methods/)")
            elif related.id == method_id:
                problem(("related", index, "id"), "a method cannot be related to itself")
        for name in ("method", "trainable_params", "mergeable_note", "summary") if check_math else ():
            for message in math_problems(getattr(method, name) or ""):
                problem((name,), message)
        if method.impl is not None and method.impl not in kb.impls:
            valid = ", ".join(sorted(kb.impls)) or "none registered yet"
            problem(("impl",), f"unknown implementation '{method.impl}' "
                               f"(expected a name registered in reference_impls: {valid})")
    return problems


# A venue's short name and words its BibTeX booktitle or journal must contain (any one of them).
VENUE_WORDS: dict[str, tuple[str, ...]] = {
    "CVPR": ("Computer Vision and Pattern Recognition", "CVPR"),
    "CVPRW": ("Computer Vision and Pattern Recognition", "CVPR"),
    "ICCV": ("International Conference on Computer Vision", "ICCV"),
    "ICCVW": ("International Conference on Computer Vision", "ICCV"),
    "ECCV": ("European Conference on Computer Vision", "ECCV"),
    "NeurIPS": ("Neural Information Processing Systems", "NeurIPS"),
    "ICLR": ("Learning Representations", "ICLR"),
    "ICML": ("International Conference on Machine Learning", "Machine Learning Research", "ICML"),
    "AAAI": ("AAAI",),
    "ACL": ("Association for Computational Linguistics", "ACL"),
    "EMNLP": ("Empirical Methods in Natural Language Processing", "EMNLP"),
    "NAACL": ("North American Chapter of the Association for Computational Linguistics", "NAACL"),
    "EACL": ("European Chapter of the Association for Computational Linguistics", "EACL"),
    "IJCV": ("International Journal of Computer Vision",),
    "TPAMI": ("Pattern Analysis and Machine Intelligence",),
    "TMLR": ("Transactions on Machine Learning Research",),
    "WACV": ("Winter Conference on Applications of Computer Vision", "WACV"),
    "ACM MM": ("ACM International Conference on Multimedia", "ACM Multimedia", "MM"),
}


def venue_disagreements(method: Method, entry: BibEntry) -> list[tuple[tuple, str]]:
    """Where a method's `year` or `venue` disagrees with the BibTeX of its introducing paper.

    Returns:
        (field path, reviewer-style message) pairs; empty when they agree.
    """
    where = f"{entry.file}:{entry.line}"
    found: list[tuple[tuple, str]] = []
    if entry.year and entry.year != str(method.year):
        found.append((("year",), f"year {method.year} disagrees with its BibTeX ({where} has year = "
                                 f"{entry.year}); make them equal (CONTRIBUTING.md: which year to use)"))
    venue_year = re.search(r"\b(19|20)\d\d\b", method.venue)
    if venue_year and venue_year.group(0) != str(method.year):
        found.append((("venue",), f"venue '{method.venue}' names the year {venue_year.group(0)} but year is "
                                  f"{method.year}; make them equal"))
    short = re.sub(r"\s*\b(19|20)\d\d\b.*$", "", method.venue).strip()
    bib_venue = " ".join(entry.fields.get(name, "") for name in ("booktitle", "journal", "series"))
    if short.lower() == "arxiv":
        if entry.fields.get("booktitle") or ("journal" in entry.fields and "arxiv" not in bib_venue.lower()):
            found.append((("venue",), f"venue says arXiv but {where} gives a published venue "
                                      f"('{entry.venue}'); name that venue instead"))
    elif short in VENUE_WORDS and not any(w.lower() in bib_venue.lower() for w in VENUE_WORDS[short]):
        found.append((("venue",), f"venue '{method.venue}' disagrees with its BibTeX ({where}: "
                                  f"'{entry.venue or 'no booktitle or journal'}'); expected the BibTeX "
                                  f"venue to mention '{VENUE_WORDS[short][0]}'"))
    return found


def _check_results(kb: KnowledgeBase, files: list[tuple[ResultsFile, LocatedYaml, str]]) -> list[Problem]:
    problems: list[Problem] = []
    for results, doc, file in files:
        benchmark = kb.benchmarks.get(results.benchmark)
        if benchmark is None:
            problems.append(Problem(file, doc.line_of(("benchmark",)), "benchmark",
                                    f"unknown benchmark '{results.benchmark}' "
                                    f"(expected one of: {', '.join(kb.benchmarks)})"))
        for index, row in enumerate(results.rows):
            def problem(path: tuple, message: str) -> None:
                full = ("rows", index, *path)
                problems.append(Problem(file, doc.line_of(full), ".".join(str(p) for p in full), message))

            if row.method not in kb.methods and row.method not in kb.invalid_method_ids:
                problem(("method",), f"unknown method id '{row.method}' "
                                     "(expected the id of a file in taxonomy/methods/)")
            if row.source.bib not in kb.bib:
                problem(("source", "bib"), f"unknown bib key '{row.source.bib}' "
                                           f"(expected a file bib/{row.source.bib}.bib)")
            if benchmark is not None and benchmark.kind == "base-to-novel":
                _check_base_novel_row(row, benchmark, problem)
            elif not (row.per_task or row.group_means or row.mean is not None):
                problem(("per_task",), "a row needs at least one of per_task, group_means or mean")
            if benchmark is not None and benchmark.kind != "base-to-novel":
                for name in ("base_novel", "base_novel_mean"):
                    if getattr(row, name):
                        problem((name,), f"{name} is only for base-to-novel benchmarks "
                                         f"({benchmark.id} rows give per_task accuracies)")
                _check_row_numbers(row, benchmark, problem)
            _check_row_preset(kb, row, benchmark, problem)
    return problems


def _check_row_preset(kb: KnowledgeBase, row: ResultRow, benchmark: Benchmark | None, problem) -> None:
    """A row's parameter count names the implementation preset that reproduces it, or says why
    none does."""
    method = kb.methods.get(row.method)
    impl = method.impl if method is not None else None
    if row.params_m is None:
        for name in ("preset", "no_preset", "params_include_head"):
            if getattr(row, name):
                problem((name,), f"{name} describes params_m, which this row does not have")
        return
    if row.preset is not None and row.no_preset is not None:
        problem(("no_preset",), "give either preset or no_preset, not both")
    if row.preset is None:
        # without the presets file (a knowledge base with no implementations) there is nothing to name
        if impl is not None and kb.presets is not None and row.no_preset is None:
            problem(("params_m",), f"name the preset of implementation '{impl}' that reproduces this count "
                                   f"(field preset), or say why no preset does (field no_preset)")
        return
    if method is None:
        return  # the unknown method is reported already
    if impl is None:
        problem(("preset",), f"method '{row.method}' has no reference implementation, so it has no presets")
        return
    if kb.presets is None:
        problem(("preset",), f"cannot check the preset: {PARAM_COUNTS} is missing "
                             "(run python -m reference_impls.param_counts)")
        return
    known = kb.presets.get(impl, [])
    if row.preset.endswith("/*"):
        prefix = row.preset[:-1]
        tasks = benchmark.task_ids() if benchmark is not None else []
        missing = [t for t in tasks if prefix + t not in known]
        if not any(name.startswith(prefix) for name in known):
            problem(("preset",), f"implementation '{impl}' has no per-task presets '{prefix}<task>' "
                                 f"(its presets: {', '.join(known) or 'none'})")
        elif missing:
            problem(("preset",), f"implementation '{impl}' has no preset '{prefix}<task>' for: {', '.join(missing)}")
    elif row.preset not in known:
        problem(("preset",), f"unknown preset '{row.preset}' of implementation '{impl}' "
                             f"(expected one of: {', '.join(known) or 'none registered'})")


def in_reference_setting(row: ResultRow, benchmark: Benchmark) -> bool:
    """Whether a reported row ran in its benchmark's reference backbone and pre-training (any row,
    when the benchmark names none): only such rows are ranked, charted and compared."""
    reference = benchmark.reference_setting
    return reference is None or (row.backbone == reference.backbone and row.checkpoint == reference.checkpoint)


def task_group_means(per_task: Mapping[str, float], benchmark: Benchmark) -> dict[str, float]:
    """Group means recomputed from per-task accuracies.

    Args:
        per_task: Task id to top-1 accuracy, as a row prints it.
        benchmark: The benchmark whose groups define the means.

    Returns:
        Group id to the mean of its tasks, in the benchmark's group order; a group missing any
        of its tasks is left out rather than averaged over fewer tasks.
    """
    means: dict[str, float] = {}
    for group in benchmark.groups:
        values = [per_task[task.id] for task in group.tasks if task.id in per_task]
        if len(values) == len(group.tasks):
            means[group.id] = fmean(values)
    return means


def task_mean_of_group_means(per_task: Mapping[str, float], benchmark: Benchmark) -> float | None:
    """The mean of the group means recomputed from per-task accuracies (every group weighs the
    same), or None unless every task of the benchmark has a number."""
    means = task_group_means(per_task, benchmark)
    return fmean(means.values()) if len(means) == len(benchmark.groups) else None


def _check_row_numbers(row: ResultRow, benchmark: Benchmark, problem) -> None:
    """Unknown task/group ids, and printed means that disagree with the per-task numbers."""
    task_ids = benchmark.task_ids()
    group_ids = [g.id for g in benchmark.groups]
    for task in row.per_task:
        if task not in task_ids:
            problem(("per_task", task), f"unknown task '{task}' of {benchmark.id} "
                                        f"(expected one of: {', '.join(task_ids)})")
    for group in row.group_means:
        if group not in group_ids:
            problem(("group_means", group), f"unknown group '{group}' of {benchmark.id} "
                                            f"(expected one of: {', '.join(group_ids)})")
    for value_path, value in [(("per_task", k), v) for k, v in row.per_task.items()] + \
                             [(("group_means", k), v) for k, v in row.group_means.items()] + \
                             [(("mean",), row.mean)]:
        if value is not None and not 0 <= value <= 100:
            problem(value_path, f"expected an accuracy between 0 and 100, got {value}")

    if row.known_inconsistency:
        # The source itself is inconsistent: its numbers are kept and the explanation shown.
        return
    computed_groups = task_group_means(row.per_task, benchmark)
    for group_id, computed in computed_groups.items():
        printed = row.group_means.get(group_id)
        if printed is not None and abs(printed - computed) > MEAN_TOLERANCE:
            problem(("group_means", group_id),
                    f"printed group mean {printed} disagrees with the mean of its tasks "
                    f"({computed:.2f})")
    if row.mean is None:
        return
    convention = row.protocol.mean_convention
    expected = None
    if convention == "mean-of-tasks" and len(row.per_task) == len(task_ids):
        expected = fmean(row.per_task.values())
    elif convention == "mean-of-group-means":
        groups = {**row.group_means, **computed_groups} if not row.group_means else row.group_means
        if set(groups) == set(group_ids):
            expected = fmean(groups[g] for g in group_ids)
    if expected is not None and abs(expected - row.mean) > MEAN_TOLERANCE:
        other = ("mean-of-group-means" if convention == "mean-of-tasks" else "mean-of-tasks")
        problem(("mean",), f"printed mean {row.mean} disagrees with the {convention} "
                           f"({expected:.2f}); is the convention {other}?")


# ---------------------------------------------------------------- base-to-novel rows

def harmonic_mean(base: float, novel: float) -> float:
    """2 * base * novel / (base + novel): the score base-to-novel tables print as HM (H)."""
    total = base + novel
    return 2 * base * novel / total if total else 0.0


def harmonic_mean_tolerance(base: float, novel: float, decimals: int) -> float:
    """How far a harmonic mean recomputed from printed accuracies may be from the printed one.

    With printed values rounded to ``decimals`` digits, each is within ``u = 0.5 * 10**-decimals``
    of the value the source computed with. The printed harmonic mean is the rounded harmonic mean
    of the unrounded base b and novel n, so it is within u of it. Recomputing it from the rounded
    b and n moves it by at most u * (dH/db + dH/dn) = u * 2 (b^2 + n^2) / (b + n)^2, a factor
    between 1 (b = n) and 2 (H is concave and increasing in both, so this first-order bound holds
    up to second-order terms of order u^2 / (b + n), far below the printed precision; 1e-6 covers
    them and float error). The two add up: at two decimals the allowed difference is 0.010 for
    b = n and approaches 0.015 when one accuracy is far above the other.
    """
    unit = 0.5 * 10.0 ** -decimals
    total = base + novel
    slope = 2 * (base * base + novel * novel) / (total * total) if total else 2.0
    return unit + unit * slope + 1e-6


def average_tolerance(decimals: int) -> float:
    """How far a printed average may be from the mean of the printed per-task values: each
    printed value is within half a unit of the last digit, so is their mean, and the printed
    average adds its own half unit (1e-6 covers float error)."""
    return 10.0 ** -decimals + 1e-6


@dataclass(frozen=True)
class BaseNovelMismatch:
    """A printed number of a base-to-novel row that its own printed numbers contradict.

    Attributes:
        task: Task id, or None for the printed average over the tasks.
        field: ``hm``, ``base`` or ``novel`` (the last two only for the average).
        printed: The number as printed.
        recomputed: What the row's other printed numbers give.
        tolerance: The difference rounding alone can explain.
        hint: Extra words for the message (another convention that would explain the number).
    """

    task: str | None
    field: str
    printed: float
    recomputed: float
    tolerance: float
    hint: str = ""

    def message(self, decimals: int) -> str:
        where = f"of {self.task}" if self.task else "of the average"
        allowed = f"differences up to {self.tolerance:.{decimals + 1}f} are rounding"
        if self.field == "hm":
            basis = ("the harmonic mean of its printed base and novel" if self.task else
                     "the harmonic mean of the printed average base and novel")
        else:
            basis = f"the mean of the printed {self.field} accuracies of the tasks"
        name = "HM" if self.field == "hm" else self.field
        return (f"printed {name} {self.printed:.{decimals}f} {where} disagrees with {basis} "
                f"({self.recomputed:.{decimals + 1}f}; {allowed}){self.hint}")


def base_novel_mismatches(row: ResultRow, benchmark: Benchmark) -> list[BaseNovelMismatch]:
    """The printed harmonic means and averages of a base-to-novel row that its printed base and
    novel accuracies contradict beyond rounding (at the row's printed ``decimals``).

    Each task's HM is recomputed from its base and novel; the printed average base and novel are
    compared with the means over the tasks (when every task is printed), and the printed average
    HM with the harmonic mean of the printed average base and novel, the convention of the
    benchmark's tables.
    """
    found: list[BaseNovelMismatch] = []
    decimals = row.decimals

    def check_hm(task: str | None, values: BaseNovel, hint: str = "") -> None:
        if values.hm is None:
            return
        recomputed = harmonic_mean(values.base, values.novel)
        tolerance = harmonic_mean_tolerance(values.base, values.novel, decimals)
        if abs(recomputed - values.hm) > tolerance:
            found.append(BaseNovelMismatch(task, "hm", values.hm, recomputed, tolerance, hint))

    task_ids = benchmark.task_ids()
    for task in task_ids:
        if task in row.base_novel:
            check_hm(task, row.base_novel[task])
    average = row.base_novel_mean
    if average is None:
        return found
    complete = [row.base_novel[t] for t in task_ids if t in row.base_novel]
    if len(complete) == len(task_ids):
        for field in ("base", "novel"):
            mean = fmean(getattr(v, field) for v in complete)
            printed = getattr(average, field)
            if abs(mean - printed) > average_tolerance(decimals):
                found.append(BaseNovelMismatch(None, field, printed, mean, average_tolerance(decimals)))
    hint = ""
    if average.hm is not None and len(complete) == len(task_ids) and all(v.hm is not None for v in complete):
        mean_of_hms = fmean(v.hm for v in complete)  # type: ignore[misc]
        if abs(mean_of_hms - average.hm) <= average_tolerance(decimals):
            hint = (f"; it equals the mean of the printed per-task HMs ({mean_of_hms:.{decimals}f}), "
                    "a different averaging convention")
    check_hm(None, average, hint)
    return found


def _check_base_novel_row(row: ResultRow, benchmark: Benchmark, problem) -> None:
    """A base-to-novel row: every task with base and novel accuracies (or none, when the source
    prints only the average), the printed average, and printed harmonic means and averages that
    agree with the printed accuracies."""
    task_ids = benchmark.task_ids()
    for name in ("per_task", "group_means", "mean"):
        if getattr(row, name):
            problem((name,), f"{benchmark.id} is a base-to-novel benchmark: give base_novel "
                             f"({{task: {{base, novel, hm}}}}) and base_novel_mean, not {name}")
    if row.protocol.mean_convention != "mean-of-tasks":
        problem(("protocol", "mean_convention"),
                f"the average of a base-to-novel row is the mean over its tasks "
                f"(expected mean-of-tasks, got {row.protocol.mean_convention})")
    for task in row.base_novel:
        if task not in task_ids:
            problem(("base_novel", task), f"unknown task '{task}' of {benchmark.id} "
                                          f"(expected one of: {', '.join(task_ids)})")
    missing = [t for t in task_ids if t not in row.base_novel]
    if not row.base_novel and row.base_novel_mean is None:
        problem(("base_novel",), f"a row of {benchmark.id} needs base_novel: base, novel and hm "
                                 f"for each of its {len(task_ids)} tasks ({', '.join(task_ids)}), or, "
                                 "when the source prints only the average, base_novel_mean alone")
    elif row.base_novel and missing:
        problem(("base_novel",), f"missing task(s) {', '.join(missing)}: a row of {benchmark.id} "
                                 f"gives base, novel and hm for each of its {len(task_ids)} tasks")
    if row.base_novel_mean is None:
        problem(("base_novel_mean",), "missing the printed average over the tasks "
                                      "(expected base_novel_mean: {base: ..., novel: ..., hm: ...})")
    values = [(("base_novel", t), v) for t, v in row.base_novel.items()]
    if row.base_novel_mean is not None:
        values.append((("base_novel_mean",), row.base_novel_mean))
    for path, value in values:
        for name in ("base", "novel", "hm"):
            number = getattr(value, name)
            if number is not None and not 0 <= number <= 100:
                problem((*path, name), f"expected an accuracy between 0 and 100, got {number}")
    if row.known_inconsistency:
        # The source contradicts itself: its numbers are kept and the explanation shown.
        return
    for mismatch in base_novel_mismatches(row, benchmark):
        path = (("base_novel", mismatch.task, mismatch.field) if mismatch.task
                else ("base_novel_mean", mismatch.field))
        problem(path, mismatch.message(row.decimals) + "; if the source contradicts itself, "
                                                        "say so in known_inconsistency")


@dataclass(frozen=True)
class ConfigOption:
    """One field of an implementation's config, read from its source (no import needed)."""

    name: str
    type: str
    default: str
    meaning: str


def config_options(root: Path, module: str, impl: str) -> list[ConfigOption]:
    """The fields of the config class an implementation registers (``register("lora", LoRAConfig,
    ...)`` in ``reference_impls.methods.lora``): name, annotation, default and the docstring under
    the field, read with ``ast`` so the docs toolchain needs no torch. Fields of a parent config
    class are not listed."""
    import ast

    path = root / Path(*module.split(".")).with_suffix(".py")
    try:
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
    except (OSError, SyntaxError):
        return []
    registered = re.search(rf'register\(\s*"{re.escape(impl)}"\s*,\s*(\w+)', source)
    if registered is None:
        return []
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == registered.group(1):
            options = []
            body = node.body
            for index, item in enumerate(body):
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    following = body[index + 1] if index + 1 < len(body) else None
                    doc = (following.value.value if isinstance(following, ast.Expr)
                           and isinstance(following.value, ast.Constant) and isinstance(following.value.value, str)
                           else "")
                    options.append(ConfigOption(item.target.id, ast.unparse(item.annotation),
                                                ast.unparse(item.value) if item.value is not None else "required",
                                                " ".join(doc.split())))
            return options
    return []

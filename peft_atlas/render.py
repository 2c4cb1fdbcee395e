"""Generate the site's pages (Markdown) from the knowledge base with jinja2 templates.

Text from the data files is escaped: it can never inject HTML or script into a page. Math in the
Markdown fields is left for the build, which renders it to MathML.
"""

from __future__ import annotations

import html
import json
import re
import posixpath
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean, median

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup, escape

from .chart import BaseNovelPoint, Point, base_novel_svg, scatter_svg
from .fidelity import PROXY_FOR, proxy_fidelity
from .kb import (KnowledgeBase, LoadedRow, base_novel_mismatches, config_options, harmonic_mean, in_reference_setting,
                 methods_by_title, task_group_means, title_key)
from .latex import SUBSCRIPTS, SUPERSCRIPTS
from .mathml import MATH_IN_MARKDOWN, latex_to_mathml
from .base_novel import finish_row as finish_base_novel_row
from .base_novel import measures as base_novel_measures
from .spread import aggregate_seeds, mark_ties

TEMPLATES = Path(__file__).parent / "templates"
CONVENTION_LABELS = {
    "mean-of-tasks": "mean of tasks",
    "mean-of-group-means": "mean of group means",
    "none": "no overall mean",
}
# Format and version of benchmarks/measured/efficiency.json that the Efficiency page shows.
EFFICIENCY_FORMAT = ("peft-atlas-efficiency", 2)
SELECTION_LABELS = {
    "val200": "selected on val200",
    "last-epoch": "last epoch",
    "best-test": "best test epoch",
    "not-stated": "selection not stated",
}


# A Markdown code span as Python-Markdown reads it: a run of backticks not escaped by a backslash,
# then anything up to the same run, within one paragraph.
_CODE_SPAN = re.compile(r"(?<!\\)(`+)((?:(?!\n[ \t]*\n).)+?)(?<!`)\1(?!`)", re.S)
# Characters that Markdown (with arithmatex and tables) would act on inside inline HTML text.
_MARKDOWN_SPECIALS = {"\\": "&#92;", "`": "&#96;", "*": "&#42;", "[": "&#91;", "]": "&#93;",
                      "$": "&#36;", "|": "&#124;", "~": "&#126;", "^": "&#94;"}
# An underscore that could open or close emphasis: one not between two letters or digits
# (vit_base_patch16 stays readable; _x_ and __init__ do not become emphasis).
_LOOSE_UNDERSCORE = re.compile(r"(?<![^\W_])_|_(?![^\W_])")


def literal(value: object) -> str:
    """Text that Markdown shows as it is: HTML escaped once, Markdown's own signs as entities."""
    text = str(escape("" if value is None else value))
    text = "".join(_MARKDOWN_SPECIALS.get(char, char) for char in text)
    return _LOOSE_UNDERSCORE.sub("&#95;", text).replace("\n", " ")


def code(value: object) -> Markup:
    """A value as inline code, escaped exactly once.

    A Markdown code span (`` `{{ value }}` `` in a template) escapes its text itself, so a value
    the template had already escaped would show its entities (``&#39;`` for a quote). This writes
    the ``<code>`` element instead, whose text Markdown leaves alone (safe in table cells too).
    """
    return Markup(f"<code>{literal(value)}</code>")


def markdown_text(text: str) -> Markup:
    """Markdown from a data file, with HTML escaped outside math and math kept for the build.

    Code spans become ``<code>`` elements escaped once (Markdown would escape the entities of an
    already escaped code span a second time, showing ``&lt;`` for ``<``). Display math is found
    first, then code spans, then inline math, as Markdown and arithmatex read them.
    """
    out = []
    for index, part in enumerate(re.split(r"(\$\$.+?\$\$)", text, flags=re.S)):
        if index % 2:
            out.append(part)
            continue
        last = 0
        for match in _CODE_SPAN.finditer(part):
            out.append(_escape_math(part[last:match.start()]))
            out.append(code(match.group(2).strip()))
            last = match.end()
        out.append(_escape_math(part[last:]))
    return Markup("".join(out))


def _escape_math(text: str) -> str:
    """HTML escaped outside inline math; the math kept as written for arithmatex."""
    out, last = [], 0
    for match in MATH_IN_MARKDOWN.finditer(text):
        out.append(html.escape(text[last:match.start()], quote=False))
        out.append(match.group(0))
        last = match.end()
    out.append(html.escape(text[last:], quote=False))
    return "".join(out)


def cell(value: object) -> Markup:
    """Escape a value for a Markdown table cell (HTML and the column separator)."""
    return Markup(str(escape("" if value is None else value)).replace("|", "&#124;").replace("\n", " "))


# A sub- or superscript in a row label, written as in LaTeX: FacT-TK_{8}, E^{2}.
_SCRIPT = re.compile(r"([_^])\{([^{}]*)\}")


def scripts_html(text: str) -> Markup:
    """A label with its ``_{...}`` and ``^{...}`` as ``<sub>``/``<sup>``, the rest escaped."""
    out, last = [], 0
    for match in _SCRIPT.finditer(text):
        tag = "sub" if match.group(1) == "_" else "sup"
        out.append(str(escape(text[last:match.start()])))
        out.append(f"<{tag}>{escape(match.group(2))}</{tag}>")
        last = match.end()
    out.append(str(escape(text[last:])))
    return Markup("".join(out))


def scripts_text(text: str) -> str:
    """A label with its ``_{...}`` and ``^{...}`` in Unicode (for charts and tooltips): sub- or
    superscript characters where every character has one, else the text inline."""
    def script(match: re.Match) -> str:
        table = SUBSCRIPTS if match.group(1) == "_" else SUPERSCRIPTS
        inner = match.group(2)
        return "".join(table[c] for c in inner) if inner and all(c in table for c in inner) else inner
    return _SCRIPT.sub(script, text)


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    """A count with its noun: ``1 paper``, ``2 papers`` (``plural_form`` when not ``-s``)."""
    return f"{count} {noun(count, singular, plural_form)}"


def noun(count: int, singular: str, plural_form: str | None = None) -> str:
    """The noun that goes with a count (``paper`` for 1, ``papers`` otherwise)."""
    return singular if count == 1 else (plural_form or singular + "s")


def json_text(value: object) -> str:
    """A value as JSON to read (the ``tojson`` filter escapes quotes for scripts instead)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


@dataclass(frozen=True)
class Figure:
    """A mean in a results table: printed by the source, or computed by the atlas from what the
    source printed (``basis`` names what)."""

    value: float
    computed: bool = False
    basis: str = "the printed tasks"


def figure(value: Figure | None, digits: int = 2) -> Markup:
    """A mean as shown in a table: printed as printed; computed in italics, with a title that
    says so; missing as an em dash."""
    if value is None:
        return Markup("—")
    text = f"{value.value:.{digits}f}"
    if not value.computed:
        return Markup(text)
    return Markup('<em class="atlas-computed" title="computed by the atlas from {}">{}</em>').format(
        value.basis, text)


def reported_means(row, benchmark) -> dict:
    """The group means and both mean conventions of a reported row.

    A number the source prints is kept as printed; one it does not print is computed from the
    printed tasks, when all the tasks it averages are printed (a mean of group means from
    printed group means when the tasks are not all printed).

    Returns:
        ``groups`` (group id to a `Figure`), ``mean_of_tasks`` and ``mean_of_group_means``
        (a `Figure` or None); with one group both conventions are the same number.
    """
    printed_convention = row.protocol.mean_convention if row.mean is not None else None
    computed_groups = task_group_means(row.per_task, benchmark)
    groups: dict[str, Figure] = {}
    for group in benchmark.groups:
        if group.id in row.group_means:
            groups[group.id] = Figure(row.group_means[group.id])
        elif group.id in computed_groups:
            groups[group.id] = Figure(computed_groups[group.id], computed=True)
    every_task = bool(row.per_task) and all(t in row.per_task for t in benchmark.task_ids())
    single = len(benchmark.groups) == 1
    if printed_convention == "mean-of-tasks" or (single and printed_convention):
        mean_of_tasks = Figure(row.mean)
    elif every_task:
        mean_of_tasks = Figure(fmean(row.per_task[t] for t in benchmark.task_ids()), computed=True)
    else:
        mean_of_tasks = None
    if printed_convention == "mean-of-group-means" or (single and printed_convention):
        mean_of_group_means = Figure(row.mean)
    elif every_task:
        mean_of_group_means = Figure(fmean(computed_groups[g.id] for g in benchmark.groups), computed=True)
    elif len(groups) == len(benchmark.groups):
        mean_of_group_means = Figure(fmean(f.value for f in groups.values()), computed=True,
                                     basis="the printed group means")
    else:
        mean_of_group_means = None
    return {"groups": groups, "mean_of_tasks": mean_of_tasks, "mean_of_group_means": mean_of_group_means}


def fenced(text: str, language: str) -> Markup:
    """A fenced code block holding ``text`` verbatim (Markdown escapes code itself), its fence
    longer than any run of backticks in the text, so the text cannot close it."""
    text = str(text).strip("\n")
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return Markup(f"{fence}{language}\n{text}\n{fence}")


def number(value: float | None, digits: int = 1) -> str:
    """A number as printed in a table, or an em dash when missing."""
    return "—" if value is None else f"{value:.{digits}f}"


def printed(value: float | None) -> str:
    """A reported number with the digits it was recorded with (at least one decimal): 57.15
    stays 57.15 and 62.9 stays 62.9, so a table never rounds a source's number."""
    if value is None:
        return "—"
    text = repr(float(value))
    decimals = len(text.split(".")[1]) if "." in text and "e" not in text else 1
    return f"{value:.{max(1, min(decimals, 4))}f}"


def spread(value: float | None, digits: int = 2) -> str:
    """A standard deviation printed after its mean (`` ± 0.42``), or nothing when there is none."""
    return "" if value is None else f" ± {value:.{digits}f}"


def params(value: float | None) -> str:
    """Trainable parameters in millions, with the precision the sources print."""
    if value is None:
        return "—"
    return f"{value:.3f}".rstrip("0").rstrip(".") if value < 10 else f"{value:.1f}"


def rank(value: float) -> str:
    """A rank as printed: whole ranks without decimals, a shared (tied) rank as ``2.5``."""
    return f"{value:g}"


def search_token(name: str) -> str:
    """A method's name as one search token, letters and digits only: the search splits words at
    spaces and hyphens, so ``VB-LoRA`` as a tag would also match a search for ``lora``;
    ``vblora`` does not. The search page adds the same token of the query, boosted, so the card
    whose name is typed comes first (docs/assets/fuzzy.js)."""
    return re.sub(r"[\W_]+", "", name.replace("+", "plus")).lower()


def relative(from_page: str, to_page: str) -> str:
    """Relative Markdown link between two generated pages (mkdocs resolves it)."""
    return posixpath.relpath(to_page, posixpath.dirname(from_page) or ".")


def make_environment() -> Environment:
    """The jinja2 environment: StrictUndefined, autoescaping every value."""
    env = Environment(loader=FileSystemLoader(TEMPLATES), undefined=StrictUndefined,
                      autoescape=True, keep_trailing_newline=True, trim_blocks=True,
                      lstrip_blocks=True)
    env.filters.update(md=markdown_text, cell=cell, code=code, number=number, printed=printed, params=params, fenced=fenced,
                       rank=rank, spread=spread, plural=plural, json_text=json_text, figure=figure,
                       scripts=scripts_html, search_token=search_token,
                       lookup=lambda ids, table: [table.get(i, i) for i in ids])
    env.globals.update(relative=relative, api_page=api_page, conventions=CONVENTION_LABELS, selections=SELECTION_LABELS,
                       noun=noun)
    return env


def setting_text(setting) -> str:
    """A backbone and its pre-training in words (a reported row or a benchmark's reference setting)."""
    return f"{setting.backbone}, {setting.checkpoint}"


def _row_context(kb: KnowledgeBase, loaded: LoadedRow) -> dict:
    row = loaded.row
    method = kb.methods.get(row.method)
    benchmark = kb.benchmarks[loaded.benchmark]
    label = row.label or (method.name if method else row.method)
    return {
        "row": row,
        "benchmark": benchmark,
        "means": reported_means(row, benchmark),
        "method_name": method.name if method else row.method,
        # A label as the paper prints it: ``FacT-TK_{8}`` is shown as FacT-TK with a subscript 8.
        "label": scripts_html(label),
        "label_text": scripts_text(label),
        "file": loaded.file,
        "fingerprint": fingerprint_text(row),
        "anchor": f"{posixpath.splitext(posixpath.basename(loaded.file))[0]}-{loaded.index}",
        "setting": setting_text(row),
        "in_reference": in_reference_setting(row, benchmark),
    }


IMAGE_SOURCE_LABELS = {"tfds": "TFDS", "image-files": "image files", "not-stated": "images not stated"}
NORMALIZATION_LABELS = {"imagenet-mean-std": "ImageNet mean/std", "none": "no normalization",
                        "not-stated": "normalization not stated"}
PARAMS_PER_TASK_LABELS = {"average": "params averaged over tasks", "fixed": "one configuration",
                          "not-stated": "params basis not stated"}


def fingerprint_text(row) -> str:
    """A reported row's protocol fingerprint in words, for a table cell's tooltip."""
    protocol = row.protocol
    seeds = protocol.seeds
    count = "seeds not stated" if seeds.count == "not-stated" else plural(seeds.count, "seed")
    shown = {"single-run": "one run shown", "mean": "mean shown", "not-stated": "what is shown not stated"}[seeds.shown]
    head = "head included" if row.params_include_head else "head excluded"
    return "; ".join([f"selection: {SELECTION_LABELS[protocol.selection]} ({protocol.selection_evidence})",
                      IMAGE_SOURCE_LABELS[protocol.image_source], NORMALIZATION_LABELS[protocol.normalization],
                      f"{count}, {shown}", PARAMS_PER_TASK_LABELS[protocol.params_per_task], head,
                      f"data: {protocol.data_source}"])


def test_selection_optimism(rows: list[dict]) -> list[dict]:
    """Pairs of rows from the same runs of one source, one chosen without the test set (val200 or
    last epoch) and one at the best test epoch: the gap is what choosing on test adds.

    Rows pair when they share source, method and the label before its last comma
    (``LoRA, last epoch`` with ``LoRA, best test epoch``).
    """
    def key(item: dict) -> tuple:
        return (item["row"].source.bib, item["row"].method, item["label_text"].rsplit(", ", 1)[0])
    clean = {key(i): i for i in rows if i["row"].protocol.selection in ("val200", "last-epoch")}
    pairs = []
    for item in rows:
        if item["row"].protocol.selection != "best-test" or key(item) not in clean:
            continue
        other = clean[key(item)]
        chosen, best = other["means"]["mean_of_tasks"], item["means"]["mean_of_tasks"]
        if chosen is not None and best is not None:
            pairs.append({"name": key(item)[2], "source": key(item)[0], "clean": chosen.value, "best": best.value,
                          "gap": best.value - chosen.value})
    return sorted(pairs, key=lambda p: p["gap"])


def _disagreements(rows: list[dict]) -> list[dict]:
    """Methods reported by more than one source with different averages or per-task numbers, among
    the rows in the benchmark's reference setting."""
    by_method: dict[str, list[dict]] = defaultdict(list)
    for item in rows:
        if item["in_reference"]:
            by_method[item["row"].method].append(item)
    found = []
    for method_id, items in sorted(by_method.items()):
        sources = {i["row"].source.bib for i in items}
        if len(sources) < 2:
            continue
        means = [i["row"].mean for i in items if i["row"].mean is not None]
        spread = max(means) - min(means) if len(means) > 1 else 0.0
        tasks = set.intersection(*(set(i["row"].per_task) for i in items))
        task_spread = max((max(i["row"].per_task[t] for i in items) - min(i["row"].per_task[t] for i in items)
                           for t in tasks), default=0.0)
        conventions = {i["row"].protocol.mean_convention for i in items if i["row"].mean is not None}
        if spread > 0 or task_spread > 0:
            found.append({"method": method_id, "items": items, "spread": spread,
                          "task_spread": task_spread, "mixed_conventions": len(conventions) > 1})
    return found


def render_pages(kb: KnowledgeBase, extra: dict | None = None) -> dict[str, str]:
    """Render every generated page.

    Args:
        kb: A validated knowledge base.
        extra: Optional generated data (parameter counts, efficiency) keyed by name.

    Returns:
        Page path (relative to the docs directory) to Markdown, in a stable order.
    """
    env = make_environment()
    extra = extra or {}
    # One row per configuration: the mean and spread over its seeds.
    measured = aggregate_seeds(measured_rows(kb))
    assert kb.categories is not None
    categories = kb.categories
    methods_by_subtype: dict[tuple[str, str], list] = defaultdict(list)
    for method in kb.methods.values():
        methods_by_subtype[(method.category, method.subtype)].append(method)
    for items in methods_by_subtype.values():
        items.sort(key=lambda m: (m.year, m.name.lower()))
    insertion_names = {p.id: p.name for p in categories.insertion_points}
    application_names = {a.id: a.name for a in categories.applications}
    libraries = {library.id: library for library in kb.crosswalk.libraries} if kb.crosswalk else {}
    facet_names = {v.id: v.name for values in (categories.facets.prompt_modality,
                                               categories.facets.adapter_role) for v in values}
    # Every reported row's context, made once: the results pages, the cards and the compare view share them.
    contexts = [_row_context(kb, loaded) for loaded in kb.results]
    results_by_benchmark: dict[str, list[dict]] = defaultdict(list)
    for context in contexts:
        results_by_benchmark[context["benchmark"].id].append(context)
    card_of = {m.impl: m for m in kb.methods.values() if m.impl}
    common = dict(kb=kb, categories=categories, methods_by_subtype=methods_by_subtype, card_of=card_of,
                  insertion_names=insertion_names, application_names=application_names, libraries=libraries,
                  facet_names=facet_names, results_by_benchmark=results_by_benchmark, extra=extra)

    pages: dict[str, str] = {}
    pages["index.md"] = env.get_template("index.md.j2").render(
        page="index.md", counts=_counts(kb), **common)
    finder = finder_rows(kb, extra)
    pages["methods/index.md"] = env.get_template("methods_index.md.j2").render(
        page="methods/index.md", finder=finder,
        bibtex_by_method={m.id: [kb.bib[k].source_text for k in m.bib if k in kb.bib] for m in kb.methods.values()},
        **common)
    for category in categories.categories:
        path = f"categories/{category.id}.md"
        pages[path] = env.get_template("category.md.j2").render(page=path, category=category, **common)
    # Reverse indexes built once, so generation stays linear in the number of methods.
    rows_by_method: dict[str, list[dict]] = defaultdict(list)
    for context in contexts:
        rows_by_method[context["row"].method].append(context)
    referenced_by: dict[str, set[str]] = defaultdict(set)
    for other in kb.methods.values():
        for relation in other.related:
            if relation.id != other.id:
                referenced_by[relation.id].add(other.id)
    method_template = env.get_template("method.md.j2")
    for method in kb.methods.values():
        path = f"methods/{method.id}.md"
        category = kb.category(method.category)
        subtype = next(s for s in category.subtypes if s.id == method.subtype)
        related = [(r, kb.methods[r.id]) for r in method.related if r.id in kb.methods]
        pages[path] = method_template.render(
            page=path, method=method, category=category, subtype=subtype,
            reproduced=[finish_base_novel_row(r) if r.get("base_novel") else dict(r, base_novel=None)
                        for r in measured if method.impl and r["impl"] == method.impl],
            rows=rows_by_method.get(method.id, []), literature=_literature(rows_by_method.get(method.id, [])),
            related=related,
            referenced_by=[kb.methods[i] for i in sorted(referenced_by.get(method.id, ()))],
            bib_entries=[kb.bib[k] for k in method.bib],
            options=config_options(kb.root, kb.impls[method.impl], method.impl) if method.impl in kb.impls else [],
            **common)
    implemented_as = {m.impl: m for m in kb.methods.values() if m.impl}
    for benchmark in kb.benchmarks.values():
        rows = results_by_benchmark.get(benchmark.id, [])
        if benchmark.kind == "base-to-novel":
            # Reported rows and the harness's runs of a base-to-novel protocol (no fidelity figure).
            reproduced = [dict(r, method=implemented_as.get(r["impl"])) for r in
                          mark_ties([finish_base_novel_row(r) for r in measured if r["benchmark"] == benchmark.id])]
            if rows or reproduced:
                path = f"results/{benchmark.id}.md"
                items = [_base_novel_item(item) for item in rows]
                see_also = [other for other in kb.benchmarks.values()
                            if other.kind == "base-to-novel" and other.id != benchmark.id
                            and (results_by_benchmark.get(other.id) or any(r["benchmark"] == other.id for r in measured))]
                pages[path] = env.get_template("results_base_novel.md.j2").render(
                    page=path, benchmark=benchmark, rows=items, reproduced=reproduced, see_also=see_also,
                    chart=Markup(_base_novel_chart(benchmark.name, items, reproduced)),
                    disagreements=_base_novel_disagreements(items, benchmark), **common)
            continue
        reproduced = [dict(r, method=implemented_as.get(r["impl"]))
                      for r in mark_ties([r for r in measured if r["benchmark"] == benchmark.id])]
        if not rows and not reproduced:
            continue
        path = f"results/{benchmark.id}.md"
        # A proxy benchmark's page says how well it predicts the benchmark it stands in for.
        fidelity = (proxy_fidelity(kb, measured, benchmark.id)
                    if PROXY_FOR.get(benchmark.id) in kb.benchmarks else None)
        optimism = test_selection_optimism(rows)
        pages[path] = env.get_template("results.md.j2").render(
            page=path, benchmark=benchmark, rows=rows, reproduced=reproduced,
            chart=Markup(_chart(benchmark.name, rows, reproduced)),
            chart_caption=_chart_caption(benchmark, rows, reproduced),
            disagreements=_disagreements(rows), fidelity=fidelity, optimism=optimism,
            optimism_median=median(p["gap"] for p in optimism) if optimism else None,
            sources=sorted({item["row"].source.bib for item in rows}),
            reference_text=setting_text(benchmark.reference_setting) if benchmark.reference_setting else "",
            other_settings=sorted({item["setting"] for item in rows if not item["in_reference"]}), **common)
    if kb.impls:
        implemented_by = {m.impl: m for m in kb.methods.values() if m.impl}
        pages["api/index.md"] = env.get_template("api_index.md.j2").render(
            page="api/index.md", implemented_by=implemented_by, **common)
        api_template = env.get_template("api_method.md.j2")
        for module, names in api_modules(kb).items():
            path = f"api/{module.rsplit('.', 1)[-1]}.md"
            pages[path] = api_template.render(
                page=path, module=module, names=names,
                methods=[implemented_by[n] for n in names if n in implemented_by], **common)
    if "efficiency" in extra:
        # Only a document of the current format is shown; an older one leaves the page "pending".
        document = extra["efficiency"]
        current = (document.get("format"), document.get("format_version")) == EFFICIENCY_FORMAT
        pages["efficiency.md"] = env.get_template("efficiency.md.j2").render(
            page="efficiency.md", eff=document if current else None, **common)
    vision_language = [m for m in kb.methods.values() if "vision-language" in m.modality]
    if vision_language:
        faceted = [m for m in vision_language if m.vlm and (m.vlm.prompt_modality or m.vlm.adapter_role)]
        pages["vision-language.md"] = env.get_template("vision_language.md.j2").render(
            page="vision-language.md", vl_faceted=faceted,
            vl_others=sorted((m for m in vision_language if m not in faceted), key=lambda m: m.name.lower()),
            vl_results=[b for b in kb.benchmarks.values()
                        if getattr(b, "kind", "accuracy") == "base-to-novel" or b.id == "vlm-micro"
                        if f"results/{b.id}.md" in pages],
            **common)
    by_application: dict[str, list] = defaultdict(list)
    for method in sorted(kb.methods.values(), key=lambda m: (m.name.lower(), m.id)):
        for application in method.applications:
            by_application[application].append(method)
    subtype_names = {(c.id, t.id): t.name for c in categories.categories for t in c.subtypes}
    by_year: dict[int, list] = defaultdict(list)
    for method in sorted(kb.methods.values(), key=lambda m: (m.name.lower(), m.id)):
        by_year[method.year].append(method)
    pages["compare.md"] = env.get_template("compare.md.j2").render(
        page="compare.md", compare=compare_data(kb, contexts, finder, measured, extra), **common)
    pages["timeline.md"] = env.get_template("timeline.md.j2").render(
        page="timeline.md", by_year=sorted(by_year.items(), reverse=True), **common)
    pages["applications.md"] = env.get_template("applications.md.j2").render(
        page="applications.md", by_application=by_application, subtype_names=subtype_names, **common)
    if kb.paper_lists:
        exclusion_counts = sorted(Counter(p.reason for p in kb.excluded).items())
        pages["coverage.md"] = env.get_template("coverage.md.j2").render(
            page="coverage.md", coverage=_coverage(kb), exclusion_counts=exclusion_counts, **common)
    pages["bibliography.md"] = env.get_template("bibliography.md.j2").render(
        page="bibliography.md", cited_by=_cited_by(kb), **common)
    return pages


def _vit_b16_params(kb: KnowledgeBase, method, extra: dict) -> tuple[float | None, str]:
    """Trainable parameters (millions, head excluded) of a method on ViT-B/16, and where from.

    The implementation's first paper preset, else its default configuration, else the count a
    VTAB-1k row of the method's own paper reports.
    """
    if method.impl:
        presets = extra.get("presets", {}).get(method.impl, {})
        if presets:
            name, preset = next(iter(presets.items()))
            return preset["method"] / 1e6, f"the implementation's preset {name}"
        counts = extra.get("param_counts", {}).get(method.impl)
        if counts:
            return counts[0]["method"] / 1e6, "the implementation's default configuration"
    for loaded in kb.results:
        row = loaded.row
        if (loaded.benchmark == "vtab-1k" and row.method == method.id and row.params_m is not None
                and row.source.bib == method.bib[0] and "ViT-B/16" in row.backbone):
            head = " (head included)" if row.params_include_head else ""
            return row.params_m, f"reported in {row.source.bib}, {row.source.table}{head}"
    return None, ""


def finder_rows(kb: KnowledgeBase, extra: dict) -> list[dict]:
    """One row per method for the method finder: the facets, the counts and the best means."""
    assert kb.categories is not None
    subtype_names = {(c.id, t.id): t.name for c in kb.categories.categories for t in c.subtypes}
    best: dict[str, dict[str, float]] = defaultdict(dict)
    vtab = kb.benchmarks.get("vtab-1k")
    for loaded in kb.results:
        if loaded.benchmark != "vtab-1k" or vtab is None or not in_reference_setting(loaded.row, vtab):
            continue
        means = reported_means(loaded.row, vtab)
        for convention in ("mean_of_tasks", "mean_of_group_means"):
            figure = means[convention]
            if figure is not None:
                current = best[loaded.row.method].get(convention)
                best[loaded.row.method][convention] = max(figure.value, current if current is not None else -1.0)
    rows = []
    for method in kb.methods.values():
        params_m, params_basis = _vit_b16_params(kb, method, extra)
        rows.append({"method": method, "category": kb.category(method.category).name,
                     "subtype": subtype_names[(method.category, method.subtype)],
                     "params_m": params_m, "params_basis": params_basis,
                     "best": best.get(method.id, {}),
                     "search": " ".join([method.name, method.full_name, method.id, *method.aliases]).lower()})
    return rows


def _literature(rows: list[dict]) -> list[dict]:
    """Per benchmark, what a method's reported rows say together: how many rows and sources, how
    many copy earlier numbers, the spread of the distinct rows' means and the selection rules."""
    by_benchmark: dict[str, list[dict]] = defaultdict(list)
    for item in rows:
        if not item["row"].base_novel:
            by_benchmark[item["benchmark"].id].append(item)
    summaries = []
    for all_items in by_benchmark.values():
        # only rows in the benchmark's reference setting compare; the others are counted apart
        items = [i for i in all_items if i["in_reference"]]
        if not items:
            continue
        distinct = [i for i in items if i["row"].copy_of is None]
        means = [i["means"]["mean_of_tasks"].value for i in distinct if i["means"]["mean_of_tasks"] is not None]
        summaries.append({
            "benchmark": items[0]["benchmark"], "rows": len(items),
            "sources": sorted({i["row"].source.bib for i in items}),
            "copies": len(items) - len(distinct), "means": means,
            "selections": sorted({SELECTION_LABELS[i["row"].protocol.selection] for i in distinct}),
            "configurations": len({i["label_text"].rsplit(", ", 1)[0] for i in distinct}),
            "setting": items[0]["setting"], "other_settings": len(all_items) - len(items),
        })
    return summaries


def _inference_text(item: dict | None) -> str | None:
    """Inference time against the plain model on the Efficiency page's measurement, in words."""
    if not item or "inference_vs_plain" not in item:
        return None
    ratio = item["inference_vs_plain"]
    text = f"{ratio['median']:.2f}× the plain model (interquartile {ratio['p25']:.2f}–{ratio['p75']:.2f})"
    merged = item.get("merged_vs_plain")
    if merged:
        text += f"; merged {merged['median']:.2f}×"
    return text


def compare_data(kb: KnowledgeBase, contexts: list[dict], finder: list[dict], measured: list[dict],
                 extra: dict) -> dict:
    """Per method, what the compare view puts side by side (plain values; the page's script lays
    out the chosen two to four methods). `contexts` are the reported rows as `_row_context` makes them."""
    assert kb.categories is not None
    insertion = {p.id: p.name for p in kb.categories.insertion_points}
    applications = {a.id: a.name for a in kb.categories.applications}
    reported: dict[str, list[dict]] = defaultdict(list)
    for context in contexts:
        row = context["row"]
        if row.copy_of is not None or row.base_novel:
            continue
        means = context["means"]
        reported[row.method].append({
            "benchmark": context["benchmark"].name,
            "label": context["label_text"] + ("" if context["in_reference"] else f" ({context['setting']})"),
            "mean_of_tasks": round(means["mean_of_tasks"].value, 2) if means["mean_of_tasks"] else None,
            "mean_of_group_means": (round(means["mean_of_group_means"].value, 2)
                                    if means["mean_of_group_means"] else None),
            "selection": SELECTION_LABELS[row.protocol.selection],
            "fingerprint": (f"{IMAGE_SOURCE_LABELS[row.protocol.image_source]}, "
                            f"{NORMALIZATION_LABELS[row.protocol.normalization]}, "
                            + ("seeds not stated" if row.protocol.seeds.count == "not-stated"
                               else plural(row.protocol.seeds.count, "seed"))),
            "source": f"{row.source.bib}, {row.source.table}"})
    reproduced: dict[str, list[dict]] = defaultdict(list)
    by_impl = {m.impl: m.id for m in kb.methods.values() if m.impl}
    for run in measured:
        if run["impl"] in by_impl and not run.get("base_novel"):
            reproduced[by_impl[run["impl"]]].append({
                "benchmark": kb.benchmarks[run["benchmark"]].name if run["benchmark"] in kb.benchmarks else run["benchmark"],
                "mean_of_group_means": round(run["mean_of_group_means"], 2),
                "std": round(run["mean_of_group_means_std"], 2) if run.get("mean_of_group_means_std") is not None else None,
                "seeds": len(run["seeds"])})
    efficiency = {}
    document = extra.get("efficiency") or {}
    for item in document.get("methods", []) if isinstance(document.get("methods"), list) else []:
        if isinstance(item, dict) and "method" in item:
            efficiency[item["method"]] = item
    data = {}
    for item in finder:
        m = item["method"]
        data[m.id] = {
            "name": m.name, "category": f"{item['category']} › {item['subtype']}",
            "insertion": [insertion.get(i, i) for i in m.insertion],
            "applications": [applications.get(a, a) for a in m.applications],
            "formula": m.trainable_params or "no formula in the paper",
            "params_m": round(item["params_m"], 3) if item["params_m"] is not None else None,
            "params_basis": item["params_basis"], "mergeable": m.mergeable,
            "implemented": bool(m.impl), "venue": m.venue,
            "reported": reported.get(m.id, []), "reproduced": reproduced.get(m.id, []),
            "inference": _inference_text(efficiency.get(m.impl)) if m.impl else None,
            # the method's display equations as MathML, made here so the page needs no script for math
            "equations": [latex_to_mathml(latex, True) for latex in re.findall(r"\$\$(.+?)\$\$", m.method, re.S)[:3]],
        }
    return data


def _coverage(kb: KnowledgeBase) -> dict[str, dict]:
    """For each covered list: its papers with the entries or the exclusion that cover each."""
    by_title = methods_by_title(kb)
    exclusions = {title_key(p.title): p for p in kb.excluded}
    coverage = {}
    for list_id, listed in kb.paper_lists.items():
        rows = []
        for paper in listed.papers:
            key = title_key(paper.title)
            methods = ([kb.methods[paper.entry]] if paper.entry in kb.methods else by_title.get(key, []))
            rows.append({"title": paper.title, "methods": methods,
                         "exclusion": None if methods else exclusions.get(key)})
        coverage[list_id] = {"rows": rows, "entries": sum(1 for r in rows if r["methods"]),
                             "excluded": sum(1 for r in rows if r["exclusion"]),
                             "entry_ids": sorted({m.id for r in rows for m in r["methods"]})}
    return coverage


def _chart(benchmark_name: str, rows: list[dict], reproduced: list[dict]) -> str:
    # A copy of an earlier source's numbers is drawn once, under the source that printed it first.
    points = [Point(label=item["label_text"], params_m=item["row"].params_m, accuracy=item["row"].mean,
                    detail=f"{item['row'].source.bib}, {item['row'].source.table}; "
                           f"{CONVENTION_LABELS[item['row'].protocol.mean_convention]}",
                    convention=item["row"].protocol.mean_convention)
              for item in rows
              if item["row"].mean is not None and item["row"].params_m and item["row"].copy_of is None
              and item["in_reference"]]
    # Reproduced rows are plotted with the mean of group means, the convention most tables use,
    # averaged over the seeds, with a bar of ± their standard deviation.
    points += [Point(label=r["impl"], params_m=r["trainable"] / 1e6, accuracy=r["mean_of_group_means"],
                     kind="reproduced", spread=r["mean_of_group_means_std"],
                     detail=f"mean of group means over {noun(len(r['seeds']), 'seed')} {', '.join(map(str, r['seeds']))}")
               for r in reproduced if r["trainable"]]
    return scatter_svg(points, f"{benchmark_name}: mean accuracy against trainable parameters")


def _chart_caption(benchmark, rows: list[dict], reproduced: list[dict]) -> str:
    """The caption of a results page's chart: what its points are, for the rows it plots."""
    plotted = [item for item in rows
               if item["row"].mean is not None and item["row"].params_m and item["row"].copy_of is None
               and item["in_reference"]]
    runs = [r for r in reproduced if r["trainable"]]
    parts = []
    if plotted:
        setting = benchmark.reference_setting
        parts.append(f"Each circle or square is one row reported by a paper for {benchmark.name}"
                     + (f" on {setting.backbone} pre-trained {setting.checkpoint}" if setting else "")
                     + " (a copy of an earlier source's numbers is drawn once): its mean as printed against "
                     "its trainable parameters as printed; hover it for its source.")
        conventions = {item["row"].protocol.mean_convention for item in plotted}
        if len(benchmark.groups) > 1 and len(conventions) > 1:
            parts.append("Circles are means of the tasks and squares means of the group means: the two "
                         "conventions are not strictly comparable.")
    if runs:
        seeds = sorted({len(r["seeds"]) for r in runs})
        count = (plural(seeds[0], "seed") if len(seeds) == 1
                 else f"{seeds[0]}–{seeds[-1]} seeds")
        parts.append(f"Each diamond is one configuration run on {benchmark.name} by this repository: its mean "
                     f"of group means over {count}" + (", with a bar of ± their standard deviation"
                                                          if any(len(r["seeds"]) > 1 for r in runs) else "")
                     + ", against its trainable parameters; hover it for its seeds.")
    return " ".join(parts)


def _base_novel_item(item: dict) -> dict:
    """A base-to-novel row for the results page: its harmonic means recomputed from its printed
    base and novel accuracies, and the printed numbers that disagree with them."""
    row, benchmark = item["row"], item["benchmark"]
    mismatches = {(m.task, m.field): m for m in base_novel_mismatches(row, benchmark)}
    recomputed = {task: harmonic_mean(v.base, v.novel) for task, v in row.base_novel.items()}
    average = row.base_novel_mean
    return dict(item, mismatches=mismatches, recomputed=recomputed,
                recomputed_mean=harmonic_mean(average.base, average.novel) if average else None)


def _base_novel_chart(benchmark_name: str, items: list[dict], reproduced: list[dict] = ()) -> str:
    points = [BaseNovelPoint(label=item["label_text"], base=item["row"].base_novel_mean.base,
                             novel=item["row"].base_novel_mean.novel,
                             source=f"{item['row'].source.bib}, {item['row'].source.table}",
                             detail=item["method_name"], inconsistent=bool(item["row"].known_inconsistency))
              for item in items if item["row"].base_novel_mean is not None]
    # Runs of the harness: the mean over their seeds of the average base and novel accuracies.
    points += [BaseNovelPoint(label=r["method"].name if r["method"] else r["impl"],
                              base=r["base_novel"]["average"]["base"], novel=r["base_novel"]["average"]["novel"],
                              source="reproduced by this repository (mean over seeds)",
                              detail=f"seeds {', '.join(map(str, r['seeds']))}", kind="reproduced")
               for r in reproduced]
    return base_novel_svg(points, f"{benchmark_name}: base-class against novel-class accuracy, "
                                  "average over the data sets")


def _base_novel_disagreements(items: list[dict], benchmark) -> list[dict]:
    """Methods printed by more than one source with different base-to-novel numbers: the spread
    of their average HMs and the tasks where their printed numbers differ."""
    by_method: dict[str, list[dict]] = defaultdict(list)
    for item in items:
        by_method[item["row"].method].append(item)
    found = []
    for method_id, group in sorted(by_method.items()):
        if len({i["row"].source.bib for i in group}) < 2:
            continue
        averages = [i["row"].base_novel_mean.hm for i in group
                    if i["row"].base_novel_mean is not None and i["row"].base_novel_mean.hm is not None]
        spread = max(averages) - min(averages) if len(averages) > 1 else 0.0
        names = {t.id: t.name for g in benchmark.groups for t in g.tasks}
        differing = [names[t] for t in benchmark.task_ids()
                     if len({(v.base, v.novel, v.hm) for v in
                             (i["row"].base_novel.get(t) for i in group) if v is not None}) > 1]
        if spread > 0 or differing:
            found.append({"method": method_id, "items": group, "spread": spread, "tasks": differing})
    return found


def _counts(kb: KnowledgeBase) -> dict:
    return {
        "methods": len(kb.methods),
        "papers": len(kb.bib),
        "rows": len(kb.results),
        "benchmarks": len({r.benchmark for r in kb.results}),
        "impls": sum(1 for m in kb.methods.values() if m.impl),
    }


def _cited_by(kb: KnowledgeBase) -> dict[str, list]:
    cited: dict[str, list] = defaultdict(list)
    for method in kb.methods.values():
        for key in method.bib:
            cited[key].append(method)
    return cited


def build_nav(kb: KnowledgeBase, pages: dict[str, str], hand_written: list) -> list:
    """The site navigation: generated sections first, then the hand-written pages of mkdocs.yml.

    Args:
        kb: The knowledge base.
        pages: The generated pages (paths decide which results pages exist).
        hand_written: The ``nav`` entries of mkdocs.yml, appended as they are.
    """
    assert kb.categories is not None
    taxonomy: list = [{"All methods": "methods/index.md"}, {"By application": "applications.md"},
                      {"Timeline": "timeline.md"}, {"Compare methods": "compare.md"}]
    for category in kb.categories.categories:
        members = sorted((m for m in kb.methods.values() if m.category == category.id),
                         key=lambda m: m.name.lower())
        # Navigation titles reach the theme's HTML unescaped: escape text from the data here.
        taxonomy.append({html.escape(category.name): [{"Overview": f"categories/{category.id}.md"}]
                         + [{html.escape(m.name): f"methods/{m.id}.md"} for m in members]})
    results = [{html.escape(b.name): f"results/{b.id}.md"} for b in kb.benchmarks.values()
               if f"results/{b.id}.md" in pages]
    if "vision-language.md" in pages:
        taxonomy.insert(1, {"Vision-language methods": "vision-language.md"})
    nav: list = [{"Home": "index.md"}, {"Taxonomy": taxonomy}]
    if "efficiency.md" in pages:
        results.append({"Efficiency": "efficiency.md"})
    if results:
        nav.append({"Results": results})
    if "api/index.md" in pages:
        # each method's API page hangs under its card's "Use it" and the overview, not in the
        # sidebar, so the sidebar lists every method once
        nav.append({"Reference implementations": "api/index.md"})
    nav.append({"Bibliography": "bibliography.md"})
    if "coverage.md" in pages:
        nav.append({"Coverage": "coverage.md"})
    return nav + list(hand_written)


def api_modules(kb: KnowledgeBase) -> dict[str, list[str]]:
    """Registered implementation names grouped by the module that defines them, sorted."""
    modules: dict[str, list[str]] = defaultdict(list)
    for name, module in sorted(kb.impls.items()):
        modules[module].append(name)
    return dict(sorted(modules.items(), key=lambda item: item[1][0]))


def api_page(kb: KnowledgeBase, impl: str) -> str:
    """Path of the API page documenting a registered implementation."""
    return f"api/{kb.impls[impl].rsplit('.', 1)[-1]}.md"


# Benchmark id on the site for each data kind of the harness.
BENCHMARK_OF_KIND = {"vtab-1k": "vtab-1k", "micro": "vtab-micro", "clip-base-to-novel": "base-to-novel",
                     "vlm-micro": "vlm-micro"}


def config_key(config: dict) -> str:
    """A recorded config without its seed, as text: runs with equal keys are seeds of one result.

    Fields set to None are left out, so a field added to the config schema later (recorded as
    None by newer runs, absent from older ones) does not split the seeds of one configuration.
    """
    def without_none(value: object) -> object:
        if isinstance(value, dict):
            return {k: without_none(v) for k, v in value.items() if v is not None}
        return value

    return json.dumps(without_none({k: v for k, v in config.items() if k != "seed"}), sort_keys=True)


def measured_rows(kb: KnowledgeBase) -> list[dict]:
    """Table rows of the runs measured by this repository's harness (``kb.measured``), sorted.

    Each row: benchmark id, implementation name, variant, per-task top-1, group means, both
    mean conventions, trainable parameters (of the first task), selection rule, command,
    measured file, a short provenance summary and ``config_key`` (the configuration without its
    seed, which ``spread.aggregate_seeds`` groups by).
    """
    rows = []
    for loaded in kb.measured:
        run = loaded.run
        kind = run.config.data.kind
        rows.append({
            "benchmark": BENCHMARK_OF_KIND.get(kind, kind),
            "impl": run.config.method.name,
            "variant": posixpath.splitext(posixpath.basename(loaded.file))[0],
            "file": loaded.file,
            "per_task": run.metrics.top1,
            "group_means": run.metrics.group_means,
            "mean_of_tasks": run.metrics.mean_of_tasks,
            "mean_of_group_means": run.metrics.mean_of_group_means,
            "trainable": run.tasks[0].trainable_parameters,
            "selection": run.config.train.selection,
            "command": run.command,
            "seed": run.seed,
            "lr": getattr(run.config.train, "lr", None),
            "backbone_sha256": run.backbone_weights.sha256 if run.backbone_weights else None,
            # The configuration without its seed: rows with equal keys are seeds of one result.
            "config_key": config_key(run.config.model_dump(mode="json")),
            "wall_time_s": run.wall_time_s,
            "git_commit": run.git.commit,
            "versions": run.versions,
        })
        if run.metrics.base_novel is not None:  # base-to-novel: base, novel and HM; the average HM scores it
            found = base_novel_measures(run.metrics)
            rows[-1].update(per_task=found, group_means={}, mean_of_tasks=found["average.hm"],
                            mean_of_group_means=found["average.hm"], base_novel=True)
    return sorted(rows, key=lambda row: (row["benchmark"], row["impl"], row["variant"]))


def load_generated_data(root: Path) -> dict:
    """Data files written by commands that need torch (read here without it).

    Returns:
        ``param_counts``: implementation name to a list of {config, method, head, trainable},
        and ``presets``: implementation name to {preset name: {options, source, note, method,
        head, trainable}} in the method file's order, both from reference_impls/param_counts.json;
        ``efficiency``: the document written by
        benchmarks/efficiency.py. Each only if its file exists.
    """
    data: dict = {}
    counts = Path(root) / "reference_impls" / "param_counts.json"
    if counts.is_file():
        document = json.loads(counts.read_text(encoding="utf-8"))
        data["param_counts"] = document["methods"]
        data["presets"] = document.get("presets", {})
    efficiency = Path(root) / "benchmarks" / "measured" / "efficiency.json"
    if efficiency.is_file():
        data["efficiency"] = json.loads(efficiency.read_text(encoding="utf-8"))
    return data

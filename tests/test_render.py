"""Rendering: escaping, strict templates, charts, exports."""

from __future__ import annotations

import json
import re

import bibtexparser
import jinja2
import pytest

from conftest import REPO, base_novel_yaml, edit, write, write_base_novel
from peft_atlas.chart import BaseNovelPoint, Point, base_novel_svg, scatter_svg
from peft_atlas.export import export_bibtex, export_json
from peft_atlas.kb import load
from peft_atlas.mathml import render_math_in_html
from peft_atlas.render import fenced, make_environment, markdown_text, render_pages


def test_templates_are_strict():
    env = make_environment()
    with pytest.raises(jinja2.UndefinedError):
        env.from_string("{{ missing.field }}").render()


def test_markdown_fields_escape_html_but_keep_math():
    text = markdown_text("a <script>alert(1)</script> and $x < y$ and $$\n<b>\n$$")
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert "$x < y$" in text and "$$\n<b>\n$$" in text


def test_fenced_block_survives_backticks_in_the_text():
    block = fenced("title = {```}", "bibtex")
    assert block.startswith("````bibtex\n") and block.endswith("\n````")


def test_math_placeholders_become_mathml():
    html = render_math_in_html('<p><span class="arithmatex">\\(a_b &lt; c\\)</span></p>')
    assert "<math" in html and "<msub>" in html and "arithmatex" not in html
    display = render_math_in_html('<div class="arithmatex">\\[\\frac{1}{2}\\]</div>')
    assert 'display="block"' in display and "<mfrac>" in display


def test_chart_draws_every_point_on_a_log_axis():
    svg = scatter_svg([Point("A", 0.01, 70.0, convention="mean-of-tasks"),
                       Point("B", 1.0, 75.0, convention="mean-of-group-means"),
                       Point("C", 85.8, 68.9, "reproduced")], "t")
    # a circle per mean of tasks, a square per mean of group means, a diamond per reproduced run,
    # and one marker of each in the legend
    assert svg.count('<circle class="point reported"') == 2 and svg.count('<rect class="point reported"') == 2
    assert svg.count('<path class="point reproduced"') == 2
    assert svg.count('<g class="legend">') == 3 and "reported, mean of group means" in svg
    for tick in (">0.01<", ">0.1<", ">1<", ">10<", ">100<"):
        assert tick in svg
    assert scatter_svg([Point("no params", 0, 70.0)], "t") == ""


def test_pages_escape_text_from_the_data(mini_kb):
    lora = mini_kb / "taxonomy/methods/lora.yaml"
    lora.write_text(lora.read_text().replace(
        "summary: Learns a low-rank update of frozen weights.",
        "summary: 'Learns <script>alert(\"x\")</script> <img src=x onerror=alert(1)> updates.'"))
    kb, problems = load(mini_kb)
    assert problems == []
    page = render_pages(kb)["methods/lora.md"]
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert" in page


def test_results_page_shows_sources_conventions_and_disagreements(mini_kb):
    second = (mini_kb / "taxonomy/reported/vtab-1k/hu2022lora.yaml").read_text()
    second = second.replace("70.0", "71.0").replace("bib: hu2022lora", "bib: liu2024dora")
    write(mini_kb, "taxonomy/reported/vtab-1k/liu2024dora.yaml", second)
    kb, problems = load(mini_kb)
    assert problems == []
    page = render_pages(kb)["results/vtab-1k.md"]
    assert "## Where sources disagree" in page and "Means differ by up to 1.00 points" in page
    assert "mean of tasks" in page and "selected on val200" in page
    assert "[hu2022lora](../bibliography.md#hu2022lora), Table 1" in page
    assert "<svg" in page


def test_export_json_holds_everything():
    kb, _ = load(REPO)
    document = json.loads(export_json(kb))
    assert {m["id"] for m in document["methods"]} == set(kb.methods)
    assert len(document["results"]) == len(kb.results)
    assert all(r["source"]["bib"] in {b["key"] for b in document["bibliography"]} for r in document["results"])


def test_export_bibtex_parses_back_to_every_entry():
    kb, _ = load(REPO)
    library = bibtexparser.parse_string(export_bibtex(kb))
    assert not library.failed_blocks
    assert sorted(e.key for e in library.entries) == sorted(kb.bib)


def test_reproduced_rows_are_shown_beside_reported_ones(mini_kb):
    from bench_support import measured_run_document
    from conftest import TASKS
    from peft_atlas.render import load_generated_data

    results = mini_kb / "benchmarks/measured/lora"
    results.mkdir(parents=True)
    for seed, top1 in ((0, 50.0), (1, 54.0)):
        document = measured_run_document("lora", tasks={t: "natural" for t in TASKS}, top1=top1)
        document["seed"] = document["config"]["seed"] = seed
        document["command"] += f" --seed {seed}"
        (results / f"default-seed{seed}.json").write_text(json.dumps(document), encoding="utf-8")
    lora = mini_kb / "taxonomy/methods/lora.yaml"
    lora.write_text(lora.read_text() + "impl: lora\n")
    (mini_kb / "reference_impls").mkdir()
    (mini_kb / "reference_impls/lora.py").write_text('register("lora", LoRAConfig, apply_lora, mergeable=True)\n')
    kb, problems = load(mini_kb)
    assert problems == []
    pages = render_pages(kb, load_generated_data(mini_kb))
    page = pages["results/vtab-1k.md"]
    assert "## Reported results" in page and "## Reproduced by this repository" in page
    # Two seeds make one row: their mean, with the sample standard deviation (of 50 and 54: 2.83).
    for seed in (0, 1):
        assert f"<code>peft-atlas bench benchmarks/experiments/lora/default.yaml --data-root /data --seed {seed}</code>" in page
        assert f"<code>benchmarks/measured/lora/default-seed{seed}.json</code>" in page
    assert "| 1 | [LoRA](../methods/lora.md) | default | 2 |" in page and "52.00 ± 2.83" in page
    assert "selected on val200" in page
    assert 'class="point reproduced"' in page and 'class="point reported"' in page and 'class="spread"' in page
    card = pages["methods/lora.md"]
    assert "| default | 2 | 52.00 ± 2.83 | 52.00 ± 2.83 |" in card and "--data-root /data --seed 1</code>" in card


def test_generation_scaling_benchmark_runs_on_a_valid_synthetic_knowledge_base():
    import importlib.util

    spec = importlib.util.spec_from_file_location("scaling", REPO / "benchmarks/generation_scaling.py")
    scaling = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scaling)
    methods = len(list((REPO / "taxonomy/methods").glob("*.yaml")))
    load_s, render_s, math_s, pages = scaling.measure(methods + 2)
    assert pages > methods + 2 and load_s > 0 and render_s > 0


def test_card_of_a_data_driven_implementation_shows_prepare(mini_kb):
    """A method registered with a prepare step is used with `ri.prepare` and batches, never with a
    bare `ri.apply` (which it refuses); other methods keep `ri.apply`."""
    methods = mini_kb / "reference_impls" / "methods"
    methods.mkdir(parents=True)
    write(mini_kb, "reference_impls/methods/lora.py", 'register("lora", LoRAConfig, apply_lora, mergeable=True)\n')
    write(mini_kb, "reference_impls/methods/dora.py",
          'register(\n    "dora",\n    DoRAConfig,\n    apply_dora,\n    mergeable=False,\n'
          '    prepare=choose_channels,\n    data_fields=("channels",),\n)\n')
    edit(mini_kb, "taxonomy/methods/lora.yaml", "mergeable: true", "mergeable: true\nimpl: lora")
    kb, problems = load(mini_kb)
    assert problems == [] and kb.data_driven_impls == {"dora"} and set(kb.impls) == {"lora", "dora"}
    lora_card = render_pages(kb)["methods/lora.md"]
    assert 'ri.apply(model, "lora")' in lora_card and "ri.prepare" not in lora_card
    kb.methods["lora"].impl = "dora"  # the same card, pointing at the data-driven implementation
    card = render_pages(kb)["methods/lora.md"]
    assert 'ri.prepare(model, "dora", batches)' in card and "itertools.islice(train_loader, 8)" in card
    assert 'ri.apply(model, "dora")' not in card.split("```python", 1)[1].split("```", 1)[0]
    api_page = render_pages(kb)["api/dora.md"]
    assert 'ri.prepare(model, "dora", batches)' in api_page


def test_card_of_a_vision_language_implementation_uses_clip(mini_kb):
    """A method registered with backbone="clip" is shown on an open_clip model with class names
    and `ri.clip_logits`, never on a timm ViT."""
    (mini_kb / "reference_impls" / "methods").mkdir(parents=True)
    write(mini_kb, "reference_impls/methods/coop.py",
          'register("coop", CoOpConfig, apply_coop, mergeable=False, backbone="clip")\n')
    edit(mini_kb, "taxonomy/methods/lora.yaml", "mergeable: true", "mergeable: true\nimpl: coop")
    kb, problems = load(mini_kb)
    assert problems == [] and kb.clip_impls == {"coop"}
    card = render_pages(kb)["methods/lora.md"]
    snippet = card.split("## Use it", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    assert 'open_clip.create_model("ViT-B-16", pretrained="openai")' in snippet and "timm" not in snippet
    assert 'ri.apply(model, "coop", classnames=classnames)' in snippet and "ri.clip_logits(model, images)" in snippet
    assert 'ri.apply(clip_model, "coop", classnames=classnames)' in render_pages(kb)["api/coop.md"]


def test_card_lists_the_presets_and_uses_one(mini_kb):
    """A method whose implementation has presets: a Presets table (name, options, count, source),
    the "Use it" snippet with `preset=`, and the reported rows naming theirs."""
    from peft_atlas.render import load_generated_data

    (mini_kb / "reference_impls").mkdir(exist_ok=True)
    write(mini_kb, "reference_impls/lora.py", 'register("lora", LoRAConfig, apply_lora, mergeable=True)\n')
    edit(mini_kb, "taxonomy/methods/lora.yaml", "mergeable: true", "mergeable: true\nimpl: lora")
    edit(mini_kb, "taxonomy/reported/vtab-1k/hu2022lora.yaml", "    params_m: 0.29\n",
         "    params_m: 0.29\n    preset: vtab-1k\n")
    presets = {
        "vtab-1k": {"options": "r=8, targets=('qkv',)", "source": "hu2022lora: experiments/LoRA/x.yaml",
                    "note": "Same count as q and v apart.", "method": 294912, "head": 76900, "trainable": 371812},
        "vtab-1k/dtd": {"options": "r=4", "source": "hu2022lora: a config file", "note": "", "method": 147456, "head": 76900,
                        "trainable": 224356},
    }
    write(mini_kb, "reference_impls/param_counts.json", json.dumps({"methods": {"lora": []}, "presets": {"lora": presets}}))
    kb, problems = load(mini_kb)
    assert problems == []
    card = render_pages(kb, load_generated_data(mini_kb))["methods/lora.md"]
    snippet = card.split("```python", 1)[1].split("```", 1)[0]
    assert 'ri.apply(model, "lora", preset="vtab-1k")' in snippet
    table = card.split("## Presets", 1)[1].split("\n## ", 1)[0]
    assert ("| <code>vtab-1k</code> | <code>r=8, targets=(&#39;qkv&#39;,)</code> | 294,912 | "
            "hu2022lora: experiments/LoRA/x.yaml — Same count as q and v apart. |") in table
    assert "| <code>vtab-1k/dtd</code> | <code>r=4</code> | 147,456 | hu2022lora: a config file |" in table
    assert "| 0.29 (<code>vtab-1k</code>) |" in card.split("## Reported results", 1)[1]
    # without presets: no table, and the snippet applies the defaults
    plain = render_pages(kb)["methods/lora.md"]
    assert "## Presets" not in plain and 'ri.apply(model, "lora")\n' in plain


def test_cards_of_the_repository_list_every_preset():
    from peft_atlas.render import code, load_generated_data

    kb, _ = load(REPO, check_math=False)
    extra = load_generated_data(REPO)
    pages = render_pages(kb, extra)
    for method in kb.methods.values():
        names = extra["presets"].get(method.impl or "", {})
        card = pages[f"methods/{method.id}.md"]
        assert ("## Presets" in card) == bool(names), method.id
        for name in names:
            assert f"| {code(name)} |" in card, (method.id, name)
    assert 'ri.apply(model, "noah", preset="vtab-1k/cifar100")' in pages["methods/noah.md"]


def test_base_novel_chart_plots_novel_against_base_with_iso_hm_curves():
    svg = base_novel_svg([BaseNovelPoint("CoOp", 82.69, 63.22, "a, Table 1"),
                          BaseNovelPoint("<b>X</b>", 69.34, 74.22, "a, Table 1", inconsistent=True),
                          BaseNovelPoint("CLIP", 69.34, 74.22, "b, Table 9")], "t")
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    # one marker per source (circle, square) plus one per source in the legend
    assert svg.count("<circle") == 3 and svg.count("<rect") == 2
    assert 'class="point reported inconsistent"' in svg
    assert 'class="iso-hm"' in svg and ">HM 72<" in svg
    # rows printing the same averages share one label; text from the data is escaped
    assert "&lt;b&gt;X&lt;/b&gt; / CLIP" in svg and "<b>" not in svg
    assert "novel-class accuracy" in svg and "base-class accuracy" in svg
    assert base_novel_svg([], "t") == ""


def test_base_to_novel_page_shows_table_chart_and_flags_what_the_source_contradicts(mini_kb):
    consistent = base_novel_yaml(bib="liu2024dora")
    inconsistent = base_novel_yaml(extra="    known_inconsistency: Its DTD harmonic mean does not add up.\n").replace(
        "dtd: {base: 80.0, novel: 70.0, hm: 74.67}", "dtd: {base: 80.0, novel: 70.0, hm: 76.0}")
    write_base_novel(mini_kb, inconsistent)
    # another source: two data sets moved in opposite directions, so its averages do not change
    consistent = consistent.replace("imagenet: {base: 80.0, novel: 70.0, hm: 74.67}",
                                    "imagenet: {base: 80.5, novel: 70.0, hm: 74.88}")
    consistent = consistent.replace("caltech101: {base: 80.0, novel: 70.0, hm: 74.67}",
                                    "caltech101: {base: 79.5, novel: 70.0, hm: 74.45}")
    write_base_novel(mini_kb, consistent, "taxonomy/reported/base-to-novel/liu2024dora.yaml")
    kb, problems = load(mini_kb)
    assert problems == []
    pages = render_pages(kb)
    page = pages["results/base-to-novel.md"]
    # the table: every data set's base, novel and HM, the printed average, the source
    assert ("| Method | As printed | Average Base | Average Novel | Average HM | ImageNet Base | ImageNet Novel | "
            "ImageNet HM | Caltech101 Base |") in page
    assert "| UCF101 Base | UCF101 Novel | UCF101 HM | Selection | Source |" in page
    assert "[hu2022lora](../bibliography.md#hu2022lora), Table 1 |" in page
    assert "| 80.00 | 70.00 | 74.67 | 80.00 | 70.00 | 74.67 |" in page
    # the chart: base against novel accuracy, the inconsistent row hollow
    assert "<svg" in page and 'class="iso-hm"' in page and 'class="point reported inconsistent"' in page
    # the printed HM the source contradicts is marked in its cell, with the recomputed value
    assert ('<span class="atlas-mismatch" title="recomputed from the printed base and novel: 74.667">76.00</span>'
            in page)
    assert "inconsistent in source" in page
    section = page.split("## Rows whose source contradicts itself", 1)[1].split("\n## ", 1)[0]
    assert "- **LoRA** (hu2022lora, Table 1): Its DTD harmonic mean does not add up." in section
    # two sources print the same method differently
    assert "## Where sources disagree" in page and "the printed numbers differ on ImageNet, Caltech101, DTD" in page
    # the method card lists both rows
    card = pages["methods/lora.md"].split("## Reported results", 1)[1]
    assert card.count("[Base-to-novel (CLIP)](../results/base-to-novel.md)") == 2
    assert "HM 74.67 (base 80.00, novel 70.00)" in card
    # the VTAB-1k page is unchanged by the new kind
    assert "## Mean accuracy against trainable parameters" in pages["results/vtab-1k.md"]


def test_repository_base_to_novel_page_renders_every_row():
    kb, _ = load(REPO, check_math=False)
    page = render_pages(kb)["results/base-to-novel.md"]
    rows = [r for r in kb.results if r.benchmark == "base-to-novel"]
    table = page.split("## Reported results", 1)[1].split("\n## ", 1)[0]
    assert len(rows) >= 10
    lines = [line for line in table.splitlines() if line.startswith("| [")]
    assert len(lines) == len(rows)
    for line, loaded in zip(lines, rows):
        assert line.endswith(f"#{loaded.row.source.bib}), {loaded.row.source.table} |")
    assert "<svg" in page and "## Rows whose source contradicts itself" in page


# ---------------------------------------------------------------- text for people

ENTITY = re.compile(r"&(#\d+|#x[0-9a-fA-F]+|[a-zA-Z]+);")


def visible_text(markdown_page: str) -> str:
    """What a reader sees of a generated page: its Markdown converted with the site's extensions,
    tags stripped, entities decoded once."""
    import html

    import markdown

    body = markdown.markdown(markdown_page, extensions=[
        "admonition", "attr_list", "md_in_html", "tables", "pymdownx.superfences", "pymdownx.highlight",
        "pymdownx.arithmatex"], extension_configs={"pymdownx.arithmatex": {"generic": True}})
    return html.unescape(re.sub(r"<[^>]+>", "", body))


def test_values_in_code_are_escaped_once(mini_kb):
    """Quotes, ampersands and angle brackets in code (a Markdown field's code span, a preset's
    options, a command) show as themselves, never as `&#39;` or `&lt;`."""
    from peft_atlas.render import load_generated_data

    edit(mini_kb, "taxonomy/methods/lora.yaml", "with rank $r$.",
         "with rank $r$; presets `vtab-1k/<task>` and `a & 'b' \"c\"`.")
    (mini_kb / "reference_impls").mkdir()
    write(mini_kb, "reference_impls/lora.py", 'register("lora", LoRAConfig, apply_lora, mergeable=True)\n')
    edit(mini_kb, "taxonomy/methods/lora.yaml", "mergeable: true", "mergeable: true\nimpl: lora")
    edit(mini_kb, "taxonomy/reported/vtab-1k/hu2022lora.yaml", "    params_m: 0.29\n",
         "    params_m: 0.29\n    preset: vtab-1k\n")
    presets = {"vtab-1k": {"options": "targets=('qkv',), act='x|y', scale=2*d", "source": "hu2022lora: a <b> & 'c'",
                           "note": "", "method": 1, "head": 2, "trainable": 3}}
    counts = [{"config": "r=8, targets=('qkv', 'proj')", "method": 1, "head": 2, "trainable": 3}]
    write(mini_kb, "reference_impls/param_counts.json",
          json.dumps({"methods": {"lora": counts}, "presets": {"lora": presets}}))
    kb, problems = load(mini_kb)
    assert problems == []
    card = visible_text(render_pages(kb, load_generated_data(mini_kb))["methods/lora.md"])
    assert "vtab-1k/<task>" in card and "a & 'b' \"c\"" in card
    assert "targets=('qkv',), act='x|y', scale=2*d" in card and "r=8, targets=('qkv', 'proj')" in card
    assert "a <b> & 'c'" in card
    assert not ENTITY.search(card), ENTITY.search(card)


def test_efficiency_page_shows_measured_text_escaped_once(mini_kb):
    document = json.loads((REPO / "benchmarks/measured/efficiency.json").read_text(encoding="utf-8"))
    conditions = document["conditions"]
    conditions.update(model="vit_'tiny'", model_kwargs={"img_size": 32, "act": "it's"},
                      cpu="Xeon 'Gold' & <fast>", git_commit="0123456789abcdef")
    document["command"] = "python benchmarks/efficiency.py --methods 'lora' && echo <done>"
    document["methods"][0]["remeasured"] = {"why": "It's \"re-run\" & <checked>.", "date": "today",
                                            "command": "python 'x'"}
    kb, problems = load(mini_kb)
    assert problems == []
    page = visible_text(render_pages(kb, {"efficiency": document})["efficiency.md"])
    assert "vit_'tiny'" in page and '{"act": "it\'s", "img_size": 32}' in page
    assert "Xeon 'Gold' & <fast>" in page and "--methods 'lora' && echo <done>" in page
    assert not ENTITY.search(page), ENTITY.search(page)


def test_bibtex_text_is_shown_in_unicode():
    from peft_atlas.latex import latex_to_unicode

    cases = {
        r"Scaling \& Shifting Your Features": "Scaling & Shifting Your Features",
        r"{E$^2$VPT}: An Effective Approach": "E²VPT: An Effective Approach",
        r"E\(^2\)VPT and E$^{2}$VPT": "E²VPT and E²VPT",
        r"Computer Vision -- ECCV 2022": "Computer Vision – ECCV 2022",
        r"Glasgow, UK, August 23--28, 2020": "Glasgow, UK, August 23–28, 2020",
        r"one---two": "one—two",
        r"Andr{\'e} Susano Pinto": "André Susano Pinto",
        r"Andr\'e, G\"{o}del, \c{C}a\u{g}r{\i}, Dvo\v{r}\'ak, Erd\H{o}s, Bj\o rn, Gro\ss e": "André, Gödel, Çağrı, Dvořák, Erdős, Bjørn, Große",
        r"{\'\i}, \`a, \^o, \~n, {\AA}ngstr{\"o}m": "í, à, ô, ñ, Ångström",
        r"{BitFit}: Simple {Parameter-efficient} {NLP}": "BitFit: Simple Parameter-efficient NLP",
        r"\emph{Deep} \textbf{Nets} \textit{x}": "Deep Nets x",
        r"``Quoted'' 100\% \$5 A~B": "“Quoted” 100% $5 A\u00a0B",
        r"$\alpha$-LoRA, $x_{1}$, $\mathcal{O}(n^2)$": "α-LoRA, x₁, O(n²)",
        "  spread\n  over lines ": "spread over lines",
    }
    for latex, text in cases.items():
        assert latex_to_unicode(latex) == text, latex


def test_bibliography_entries_display_unicode_and_keep_their_bibtex():
    kb, _ = load(REPO, check_math=False)
    ssf, e2vpt, vtab = kb.bib["lian2022scaling"], kb.bib["han2023e2vpt"], kb.bib["zhai2019large"]
    assert ssf.title.startswith("Scaling & Shifting Your Features") and r"Scaling \& Shifting" in ssf.source_text
    assert e2vpt.title.startswith("E²VPT:") and "{E$^2$VPT}" in e2vpt.source_text
    assert kb.bib["jia2022visual"].venue == "Computer Vision – ECCV 2022"
    assert kb.bib["xing2024survey"].venue == "Computers & Graphics"
    assert "André Susano Pinto" in vtab.authors
    for entry in kb.bib.values():
        for text in (entry.title, entry.venue, *entry.authors):
            assert not re.search(r"[\\{}$]|--|~", text), (entry.key, text)
    page = render_pages(kb)["bibliography.md"]
    assert "### Scaling &amp; Shifting Your Features" in page and "### E²VPT: An Effective" in page
    assert r"title         = {Scaling \& Shifting Your Features" in page  # the copy box, as written


def test_counts_are_pluralized(mini_kb):
    from peft_atlas.render import plural

    assert (plural(1, "paper"), plural(2, "paper"), plural(0, "class", "classes")) == ("1 paper", "2 papers", "0 classes")
    kb, problems = load(mini_kb)
    assert problems == []
    home = visible_text(render_pages(kb)["index.md"])
    assert "VTAB-1k: 1 reported row from 1 paper." in home
    assert "2 methods · 2 papers · 1 reported result on 1 benchmark · 0 reference implementations" in " ".join(home.split())


def test_results_intro_has_no_gap_for_a_single_group_benchmark():
    kb, _ = load(REPO, check_math=False)
    pages = render_pages(kb)
    for path in ("results/fgvc.md", "results/vtab-1k.md"):
        intro = " ".join(visible_text(pages[path].split("## Mean accuracy", 1)[0]).split())
        assert not re.search(r"\s[,.;:]", intro), (path, re.search(r".{30}\s[,.;:].{30}", intro))
        assert "Convention says how the paper averaged" in intro


def test_each_chart_caption_describes_its_own_benchmark_and_points():
    from peft_atlas.render import load_generated_data

    kb, _ = load(REPO, check_math=False)
    pages = render_pages(kb, load_generated_data(REPO))
    captions = {}
    for benchmark in kb.benchmarks.values():
        page = pages.get(f"results/{benchmark.id}.md")
        if page is None or "<figcaption>" not in page or benchmark.kind == "base-to-novel":
            continue
        figure = page.split('<figure class="atlas-figure"', 1)[1].split("</figure>", 1)[0]
        caption = figure.split("<figcaption>", 1)[1].split("</figcaption>", 1)[0]
        captions[benchmark.id] = caption
        assert benchmark.name in caption, benchmark.id
        assert ('class="point reported"' in figure) == ("reported by a paper" in caption), benchmark.id
        assert ('class="point reproduced"' in figure) == ("run on" in caption), benchmark.id
    assert {"vtab-1k", "vtab-micro", "fgvc"} <= set(captions)
    assert len(set(captions.values())) == len(captions)
    assert "not strictly comparable" not in captions["fgvc"]  # one group: one convention


def test_facets_list_their_methods_apart_and_say_when_there_are_none():
    kb, _ = load(REPO, check_math=False)
    home = render_pages(kb)["index.md"]
    rows = [line for line in home.split("| Facet | Value | Methods |", 1)[1].split("\n\n", 1)[0].splitlines()
            if line.startswith("| ") and not line.startswith("|---")]
    assert len(rows) >= 5
    for row in rows:
        methods = row.split(" | ")[2].rstrip(" |")
        assert methods, row
        links = re.findall(r"\[[^\]]+\]\([^)]+\)", methods)
        assert methods == "none in the atlas yet" or methods == ", ".join(links), row
    cross_modal = next(row for row in rows if "| Cross-modal fusion adapter |" in row)
    assert "[VL-Adapter](methods/vl-adapter.md)" in cross_modal


def test_reported_rows_show_group_means_and_both_conventions_marked_when_computed(mini_kb):
    kb, problems = load(mini_kb)
    assert problems == []
    page = render_pages(kb)["results/vtab-1k.md"]
    computed = '<em class="atlas-computed" title="computed by the atlas from the printed tasks">70.00</em>'
    assert "| Natural | Specialized | Structured | Mean of tasks | Mean of group means | Convention |" in page
    # the row prints its 19 tasks and its mean of tasks: the groups and the other mean are computed
    assert f"| {computed} | {computed} | {computed} | 70.00 | {computed} |" in page
    assert "computed by the atlas" in visible_text(page)


def test_every_repository_row_with_all_its_tasks_shows_every_mean():
    kb, _ = load(REPO, check_math=False)
    pages = render_pages(kb)
    for benchmark_id in ("vtab-1k", "fgvc"):
        benchmark = kb.benchmarks[benchmark_id]
        rows = [r.row for r in kb.results if r.benchmark == benchmark_id]
        table = pages[f"results/{benchmark_id}.md"].split("## Reported results", 1)[1].split("\n## ", 1)[0]
        lines = [line for line in table.splitlines() if line.startswith("| [")]
        assert len(lines) == len(rows)
        tasks = len(benchmark.task_ids())
        means = len(benchmark.groups) + 2 if len(benchmark.groups) > 1 else 1
        for line, row in zip(lines, rows):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            shown = cells[2 + tasks:2 + tasks + means]
            if len(row.per_task) == tasks:
                assert "—" not in shown, (row.source, row.label, shown)
            if row.mean is not None:  # the printed mean, upright and as printed
                assert f"{row.mean:.2f}" in shown, (row.label, shown)
            for group, value in row.group_means.items():
                assert f"{value:.2f}" in shown


def test_seeds_of_one_configuration_share_a_key_across_schema_versions():
    """A field added to the config schema later (None in newer runs, absent in older ones) must
    not split one configuration's seeds into two rows; the seed itself never counts."""
    from peft_atlas.render import config_key

    old = {"seed": 0, "data": {"kind": "micro", "tasks": ["digits"]}, "train": {"lr": 0.01}}
    new = {"seed": 1, "data": {"kind": "micro", "tasks": ["digits"], "shots": None}, "train": {"lr": 0.01}}
    assert config_key(old) == config_key(new)
    assert config_key(old) != config_key({**new, "train": {"lr": 0.03}})


def test_vision_language_page_arranges_the_methods_by_the_surveys_facets():
    from peft_atlas.render import build_nav, load_generated_data

    kb, _ = load(REPO)
    pages = render_pages(kb, load_generated_data(REPO))
    page = pages["vision-language.md"]
    assert "| Textual prompt | [CoOp](methods/coop.md) | 2022 | <code>coop</code> |" in page
    assert "| Cross-modal fusion adapter | none in the atlas yet | | |" in page or "Cross-modal fusion adapter | [" in page
    baselines = page.split("## Baselines and other vision-language methods", 1)[1]
    assert "[Zero-shot CLIP](methods/zero-shot-clip.md)" in baselines and "on ViTs only (<code>lst</code>)" in baselines
    assert "[VLM-micro](results/vlm-micro.md)" in page
    taxonomy = next(entry["Taxonomy"] for entry in build_nav(kb, pages, []) if "Taxonomy" in entry)
    assert {"Vision-language methods": "vision-language.md"} in taxonomy


def test_use_it_lists_the_options_of_the_registered_config():
    """Each implemented card's "Use it" gives the options table read from the config class the
    method registers (name, type, default, meaning), without importing torch."""
    kb, _ = load(REPO, check_math=False)
    pages = render_pages(kb)
    lora = pages["methods/lora.md"]
    assert "| <code>r</code> | <code>Rank</code> | <code>8</code> | Rank of the update B A. |" in lora
    # two methods registered in one file each get their own config's options
    tip, tip_f = pages["methods/tip-adapter.md"], pages["methods/tip-adapter-f.md"]
    assert "Options of <code>tip-adapter</code>" in tip and "Options of <code>tip-adapter-f</code>" in tip_f
    assert "reference_impls/methods/lora.py" in lora
    for method in kb.methods.values():
        if method.impl:
            card = pages[f"methods/{method.id}.md"]
            assert "| Option | Type | Default | Meaning |" in card or f"<code>{method.impl}</code> has no options." in card
    assert "<code>full-finetuning</code> has no options." in pages["methods/full-finetuning.md"]


def test_the_sidebar_lists_every_method_once_and_api_pages_hang_under_the_cards():
    from peft_atlas.render import build_nav, load_generated_data

    kb, _ = load(REPO, check_math=False)
    pages = render_pages(kb, load_generated_data(REPO))

    def leaves(entries):
        for entry in entries:
            for value in entry.values():
                yield from (leaves(value) if isinstance(value, list) else [value])

    paths = list(leaves(build_nav(kb, pages, [])))
    method_paths = [p for p in paths if p.startswith("methods/") and p != "methods/index.md"]
    assert sorted(method_paths) == sorted(f"methods/{m}.md" for m in kb.methods)
    assert [p for p in paths if p.startswith("api/")] == ["api/index.md"]
    assert "(../api/lora.md)" in pages["methods/lora.md"]  # reached from the card's "Use it"


def test_reported_numbers_keep_their_printed_digits():
    """A table never rounds a source's number: PETL_Vision's 68.99 stays 68.99, VTAB-1k's 62.9
    stays 62.9, and CaFo's few-shot table shows CoOp's 57.15 as printed."""
    kb, _ = load(REPO, check_math=False)
    pages = render_pages(kb)
    assert "| 57.15 | 57.81 | 59.99 | 61.56 | 62.95 |" in pages["results/clip-few-shot-imagenet.md"]
    assert "| 68.99 |" in pages["results/vtab-1k.md"]

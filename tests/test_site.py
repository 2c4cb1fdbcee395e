"""The built site: strict build, deterministic bytes, escaped user text, nothing from other hosts."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO

pytestmark = pytest.mark.slow


def build(root: Path, site: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "peft_atlas.cli", "build", "--site-dir", str(site)],
                            cwd=root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("site")
    build(REPO, directory)
    return directory


def test_site_has_a_card_per_method_and_the_results_tables(site):
    methods = list((REPO / "taxonomy/methods").glob("*.yaml"))
    cards = [p for p in (site / "methods").glob("*.html") if p.name != "index.html"]
    assert len(cards) == len(methods) >= 30
    vtab = (site / "results/vtab-1k.html").read_text(encoding="utf-8")
    assert "CIFAR-100" in vtab and "sNORB-Elev" in vtab and "<svg" in vtab
    assert (site / "bibliography.html").is_file() and (site / "data-model.html").is_file()


def test_lora_card_holds_its_equations_and_bibtex(site):
    card = (site / "methods/lora.html").read_text(encoding="utf-8")
    assert "<math" in card, "math is rendered to MathML at build time"
    assert "arithmatex" not in card
    assert "@inproceedings{hu2022lora," in re.sub(r"<[^>]+>", "", card)
    assert "md-clipboard" in card or "content.code.copy" in (REPO / "mkdocs.yml").read_text()


def test_search_index_covers_names_aliases_and_summaries(site):
    index = (site / "search/search_index.json").read_text(encoding="utf-8").lower()
    assert "low-rank" in index and "methods/lora.html" in index


def test_no_page_loads_anything_from_another_host(site):
    loaders = re.compile(r"<(script|link|img|iframe|source)\b[^>]*\b(src|href)=\"(https?:)?//", re.I)
    offenders = [str(p.relative_to(site)) for p in site.rglob("*.html")
                 if loaders.search(p.read_text(encoding="utf-8"))]
    assert offenders == []
    css = "".join(p.read_text(encoding="utf-8", errors="replace") for p in site.rglob("*.css"))
    assert "fonts.googleapis" not in css and "@import url(http" not in css


def test_two_builds_give_the_same_bytes(site, tmp_path):
    again = tmp_path / "again"
    build(REPO, again)
    first = {p.relative_to(site): p.read_bytes() for p in site.rglob("*") if p.is_file()}
    second = {p.relative_to(again): p.read_bytes() for p in again.rglob("*") if p.is_file()}
    assert first.keys() == second.keys()
    assert [str(k) for k in first if first[k] != second[k]] == []


def test_generated_pages_are_not_committed():
    tracked = subprocess.run(["git", "ls-files", "docs"], cwd=REPO, capture_output=True, text=True).stdout
    generated = {"index.md", "bibliography.md"} | {f"{d}/" for d in ("methods", "categories", "results")}
    assert not [line for line in tracked.splitlines()
                if any(line.removeprefix("docs/").startswith(g) for g in generated)]


def test_injected_html_is_shown_as_text(mini_kb, tmp_path):
    (mini_kb / "peft_atlas").symlink_to(REPO / "peft_atlas")
    lora = mini_kb / "taxonomy/methods/lora.yaml"
    lora.write_text(lora.read_text()
                    .replace("The update is", "The <script>alert(1)</script> update is")
                    .replace("summary: Learns a low-rank update of frozen weights.",
                             "summary: 'Learns <img src=x onerror=alert(2)> updates.'"))
    build(mini_kb, tmp_path / "site")
    for page in (tmp_path / "site").rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        assert "<script>alert(1)" not in text and "<img src=x" not in text, page
    card = (tmp_path / "site/methods/lora.html").read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in card and "&lt;img src=x" in card


def test_efficiency_page_renders_the_measured_file(site):
    import html

    from peft_atlas.render import EFFICIENCY_FORMAT

    measured = json.loads((REPO / "benchmarks/measured/efficiency.json").read_text(encoding="utf-8"))
    page = html.unescape(re.sub(r"<[^>]+>", "", (site / "efficiency.html").read_text(encoding="utf-8")))
    if (measured.get("format"), measured.get("format_version")) != EFFICIENCY_FORMAT:
        # A document of an older format: its figures are withdrawn until a new run replaces it.
        assert "Measurement pending" in page and "benchmarks/efficiency.py" in page
        assert f"{measured['full_finetuning']['train_step_s']:.2f}" not in page
        return
    assert "Measurement pending" not in page and measured["command"] in page
    for row in measured["methods"]:
        train = row["train_vs_full"]
        assert row["method"] in page and f"{train['median']:.2f} ({train['p25']:.2f}–{train['p75']:.2f})" in page


def test_api_pages_render_every_method_and_its_config_docstrings(site):
    """Every registered implementation has an API page; config fields show their docstrings."""
    import ast
    import html

    def text(page: Path) -> str:
        return html.unescape(re.sub(r"<[^>]+>", "", page.read_text(encoding="utf-8")))

    registered = {}
    for path in sorted((REPO / "reference_impls" / "methods").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "register":
                registered[node.args[0].value] = path.stem
    assert len(registered) >= 24
    for name, module in registered.items():
        page = text(site / "api" / f"{module}.html")
        usages = (f'ri.apply(model, "{name}")', f'ri.prepare(model, "{name}", batches)',
                  f'ri.apply(clip_model, "{name}", classnames=classnames)',
                  f'ri.prepare(clip_model, "{name}", batches, classnames=classnames)')
        assert any(usage in page for usage in usages), name
    lora = text(site / "api" / "lora.html")
    assert "Rank of the update B A." in lora and "Dropout probability on the input of the low-rank branch." in lora
    shared = text(site / "api" / "index.html")
    for documented in ("list_methods", "prepare", "save_adapter", "MethodConfig", "wrap_linear_targets",
                       "clip_logits", "ClipClassifier"):
        assert documented in shared, documented


def _visible_text(page: Path, drop: str = "script|style") -> str:
    """A page's text as a reader sees it: elements in ``drop`` removed, tags stripped, entities
    decoded once."""
    import html

    text = re.sub(rf"<({drop})\b.*?</\1\s*>", " ", page.read_text(encoding="utf-8"), flags=re.S | re.I)
    return html.unescape(re.sub(r"<[^>]+>", "", text))


def test_no_page_shows_an_escaped_character_as_text(site):
    """Text escaped twice (a template's escaping, then a Markdown code span's) shows its entities:
    `&#39;` for a quote. No built page may show one."""
    entity = re.compile(r"&(#\d+|#x[0-9a-fA-F]+|amp|quot|lt|gt|apos|nbsp);")
    shown = {}
    for page in sorted(site.rglob("*.html")):
        found = [match.group(0) for match in entity.finditer(_visible_text(page))]
        if found:
            shown[str(page.relative_to(site))] = sorted(set(found))
    assert shown == {}


def test_no_latex_from_bibtex_in_prose(site):
    """Titles, venues and authors from BibTeX are shown in Unicode in prose, navigation and tables
    of contents: no backslash, no `--` for a dash, no braces or `$`; the copy boxes keep the BibTeX
    as written."""
    from peft_atlas.kb import load

    backslash, dashes = {}, {}
    for page in sorted(site.rglob("*.html")):
        prose = _visible_text(page, drop="script|style|pre|code|math|svg")
        if "\\" in prose:
            backslash[str(page.relative_to(site))] = re.findall(r".{0,30}\\.{0,30}", prose)
        # `--` only as a command-line option (--seed), never as a dash
        if re.search(r"--(?![a-z])", prose):
            dashes[str(page.relative_to(site))] = re.findall(r".{0,30}--(?![a-z]).{0,30}", prose)
    assert backslash == {} and dashes == {}
    kb, _ = load(REPO, check_math=False)
    bibliography = _visible_text(site / "bibliography.html", drop="script|style|pre|code")
    for entry in kb.bib.values():
        assert entry.title in bibliography and entry.venue in bibliography, entry.key
        assert not re.search(r"[\\{}$~]|--", entry.title + entry.venue + "".join(entry.authors)), entry.key
    assert "Scaling & Shifting Your Features" in bibliography and "E²VPT: An Effective" in bibliography
    assert "Computer Vision – ECCV 2022" in bibliography and "André Susano Pinto" in bibliography
    raw = re.sub(r"<[^>]+>", "", (site / "bibliography.html").read_text(encoding="utf-8"))
    assert r"{Scaling \&amp; Shifting Your Features" in raw and "{{E$^2$VPT}:" in raw


def test_counts_agree_with_their_nouns(site):
    """`1 papers`: a count of one is followed by a singular noun on every page."""
    nouns = ("papers|methods|rows|results|benchmarks|implementations|seeds|rounds|cores|threads|"
             "times|tasks|groups|sources|runs|entries|points|configurations|presets|classes|means")
    counted = re.compile(rf"(?<![\d.,±\w-])1 (?:(?:reported|reference|torch|warm-up) )?({nouns})\b")
    wrong = {}
    for page in sorted(site.rglob("*.html")):
        prose = " ".join(_visible_text(page, drop="script|style|pre|code|math|svg").split())
        found = [m.group(0) for m in counted.finditer(prose)]
        if found:
            wrong[str(page.relative_to(site))] = found
    assert wrong == {}
    home = " ".join(_visible_text(site / "index.html").split())
    fgvc = [yaml.safe_load(path.read_text(encoding="utf-8")) for path in (REPO / "taxonomy/reported/fgvc").glob("*.yaml")]
    rows = [row for results in fgvc for row in results["rows"]]
    papers = {row["source"]["bib"] for row in rows}
    assert f"FGVC: {len(rows)} reported rows from {len(papers)} papers." in home


def test_results_pages_mark_the_means_the_atlas_computed(site):
    vtab = (site / "results/vtab-1k.html").read_text(encoding="utf-8")
    table = vtab.split('id="reported-results"', 1)[1].split("</table>", 1)[0]
    assert table.count('class="atlas-computed"') >= 33 * 4
    assert 'title="computed by the atlas from the printed tasks"' in table
    headers = [re.sub(r"<[^>]+>", "", h).strip() for h in re.findall(r"<th[^>]*>(.*?)</th>", table, flags=re.S)]
    means = [headers.index(name) for name in ("Natural", "Specialized", "Structured", "Mean of tasks",
                                              "Mean of group means")]
    tasks = [headers.index(name) for name in ("CIFAR-100", "Caltech101", "sNORB-Elev")]
    rows = re.findall(r"<tr>(.*?)</tr>", table.split("<tbody>", 1)[1], flags=re.S)
    assert len(rows) >= 40
    with_tasks = 0
    for row in rows:  # a row that prints its tasks shows every group mean and both means
        cells = [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, flags=re.S)]
        if all(cells[i] != "—" for i in tasks):
            with_tasks += 1
            assert all(cells[i] != "—" for i in means), row[:200]
    assert with_tasks >= 40

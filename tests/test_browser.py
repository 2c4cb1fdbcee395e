"""A real browser on the built site: search finds LoRA, its card shows its BibTeX, nothing leaves
127.0.0.1."""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import unquote_plus, urlparse

import pytest

from conftest import REPO

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _require_browser():
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        if os.environ.get("CI"):
            pytest.fail("Debian's chromium is not installed: .ci/run must install it")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    return pytest.importorskip("playwright.sync_api")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output readable
        pass


@pytest.fixture(scope="module")
def served_site(tmp_path_factory):
    site = tmp_path_factory.mktemp("browser-site")
    result = subprocess.run([sys.executable, "-m", "peft_atlas.cli", "build", "--site-dir", str(site)],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def page(served_site):
    sync_api = _require_browser()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context()
        requested: list[str] = []
        context.on("request", lambda request: requested.append(request.url))
        tab = context.new_page()
        tab.requested = requested
        yield tab
        browser.close()


def test_search_low_rank_finds_lora_and_its_bibtex_offline(page, served_site):
    page.goto(f"{served_site}/index.html")
    page.wait_for_load_state("networkidle")
    page.click("input[data-md-component=search-query]")
    page.keyboard.type("low-rank", delay=30)
    results = page.locator(".md-search-result__item a")
    lora = results.filter(has=page.locator("h1", has_text=re.compile(r"^LoRA$")))
    lora.first.wait_for(timeout=15000)
    lora.first.click()
    page.wait_for_load_state("networkidle")
    assert urlparse(page.url).path.endswith("/methods/lora.html")
    assert page.locator("h1").first.inner_text().rstrip("¶") == "LoRA"
    bibtex = page.locator("pre code", has_text="@inproceedings{hu2022lora")
    assert bibtex.count() == 1
    assert "Low-Rank Adaptation" in bibtex.inner_text()
    assert page.locator("math").count() > 0, "equations are rendered as MathML"
    hosts = {urlparse(url).hostname for url in page.requested}
    assert hosts == {"127.0.0.1"}, f"requests left the machine: {sorted(hosts)}"


def test_results_table_sorts_by_a_column(page, served_site):
    page.goto(f"{served_site}/results/vtab-1k.html")
    page.wait_for_load_state("networkidle")
    table = page.locator("article table").filter(has_text="CIFAR-100").first
    header = table.locator("thead th", has_text=re.compile(r"^Mean of group means$"))
    header.click()
    index = [th.inner_text().strip(" ▲▼") for th in table.locator("thead th").all()].index("Mean of group means")
    values = [row.locator("td").nth(index).inner_text() for row in table.locator("tbody tr").all()]
    numbers = [float(v) for v in values if v != "—"]
    assert numbers == sorted(numbers) and len(numbers) >= 40  # printed or computed, every row has one
    assert header.get_attribute("aria-sort") == "ascending"
    hosts = {urlparse(url).hostname for url in page.requested}
    assert hosts == {"127.0.0.1"}


def open_at(page, url: str, width: int = 1400, height: int = 900) -> None:
    """Open a page of the served site in a window of the given size and wait until it is idle."""
    page.set_viewport_size({"width": width, "height": height})
    page.goto(url)
    page.wait_for_load_state("networkidle")


def _box(locator) -> dict:
    box = locator.bounding_box()
    assert box is not None
    return box


@pytest.mark.parametrize("width, height", [(1400, 1000), (390, 844)])
def test_wide_results_table_keeps_its_method_column_and_header_in_view(page, served_site, width, height):
    """A results table wider and taller than the window scrolls inside its frame: the method
    column stays put while the numbers scroll sideways, and the header row stays at the top while
    the rows scroll up. The page gives the table the whole width of the window."""
    open_at(page, f"{served_site}/results/vtab-1k.html", width, height)
    table = page.locator("article table").filter(has_text="CIFAR-100").first
    frame = table.locator("xpath=ancestor::div[contains(@class, 'md-typeset__scrollwrap')]")
    assert frame.count() == 1, "the theme wraps each table in a scrolling frame"
    # bring the frame's top just under the site header
    page.evaluate("""(frame) => {
        const header = document.querySelector('.md-header').getBoundingClientRect().bottom;
        window.scrollBy(0, frame.getBoundingClientRect().top - header - 8);
    }""", frame.element_handle())
    # copies of earlier sources are hidden by default: take the first row shown
    method = table.locator("tbody tr:visible").first.locator("td").first
    number = table.locator("tbody tr:visible").first.locator("td").nth(12)
    head = table.locator("thead th").first
    before_method, before_number, before_head = _box(method), _box(number), _box(head)

    frame_box = _box(frame)
    page.mouse.move(frame_box["x"] + frame_box["width"] / 2, frame_box["y"] + min(frame_box["height"], height) / 3)
    page.mouse.wheel(600, 0)
    page.wait_for_function("(frame) => frame.scrollLeft > 0", arg=frame.element_handle())
    page.wait_for_timeout(200)
    assert abs(_box(method)["x"] - before_method["x"]) < 1, "the method column stays where it was"
    assert abs(_box(head)["x"] - before_head["x"]) < 1
    assert _box(number)["x"] < before_number["x"] - 100, "the numbers scrolled sideways"

    page.mouse.wheel(0, 400)
    page.wait_for_function("(frame) => frame.scrollTop > 0", arg=frame.element_handle())
    page.wait_for_timeout(200)
    header_bottom = page.evaluate("document.querySelector('.md-header').getBoundingClientRect().bottom")
    head_now = _box(head)
    assert abs(head_now["y"] - before_head["y"]) < 1, "the header row stays at the top of the frame"
    assert head_now["y"] >= header_bottom - 1 and head_now["y"] + head_now["height"] <= height
    assert _box(method)["y"] < before_method["y"] - 100, "the rows scrolled up under the header"
    assert abs(_box(method)["x"] - before_method["x"]) < 1

    widths = page.evaluate("""() => {
        const inner = document.querySelector('.md-main__inner');
        const rem = parseFloat(getComputedStyle(document.documentElement).fontSize);
        return {inner: inner.getBoundingClientRect().width, window: document.documentElement.clientWidth,
                grid: 61 * rem, content: document.querySelector('.md-content').getBoundingClientRect().width};
    }""")
    assert widths["inner"] >= widths["window"] - 1, f"the results page uses the whole width: {widths}"
    assert frame_box["width"] >= widths["content"] - 1 if width < 1000 else frame_box["width"] >= 0.9 * widths["content"]
    hosts = {urlparse(url).hostname for url in page.requested}
    assert hosts == {"127.0.0.1"}


@pytest.mark.parametrize("width", [1400, 390])
def test_method_finder_filters_and_keeps_the_filter_in_the_address(page, served_site, width):
    """"Which methods are mergeable and under 0.5M parameters on ViT-B/16?" in one page."""
    open_at(page, f"{served_site}/methods/index.html?mergeable=yes&params_max=0.5", width)
    rows = page.locator("table.atlas-finder-table tbody tr")
    shown = rows.locator("visible=true")
    total, visible = rows.count(), shown.count()
    assert 0 < visible < total
    for index in range(visible):
        cells = shown.nth(index).locator("td")
        assert cells.nth(7).inner_text() == "yes"
        assert float(cells.nth(6).inner_text()) <= 0.5
    assert page.locator("#atlas-finder-count").inner_text() == f"{visible} of {total}"
    # ticking a box narrows further and lands in the address, so the view can be shared
    page.check("input[name=implemented][value=yes]")
    assert "implemented=yes" in page.url and "mergeable=yes" in page.url
    narrowed = rows.locator("visible=true").count()
    assert narrowed <= visible
    for index in range(narrowed):
        assert rows.locator("visible=true").nth(index).locator("td").nth(8).inner_text().startswith("yes")
    page.click("#atlas-finder-reset")
    page.wait_for_function(f"document.querySelectorAll('table.atlas-finder-table tbody tr:not([hidden])').length === {total}")
    assert "?" not in page.url


def test_results_view_ranks_like_with_like_and_hides_copies(page, served_site):
    page.goto(f"{served_site}/results/vtab-1k.html")
    page.wait_for_load_state("networkidle")
    table = page.locator("#atlas-view ~ * table, #atlas-view ~ table").first
    rows = table.locator("tbody tr")
    total = rows.count()
    copies = table.locator("tbody tr:has(.atlas-badge.copy)")
    assert copies.count() > 0
    # copies are hidden until asked for, and so are rows on another backbone or pre-training
    assert all(not copies.nth(i).is_visible() for i in range(copies.count()))
    elsewhere = table.locator("tbody tr:has(.atlas-badge.setting)")
    assert elsewhere.count() > 0
    assert all(not elsewhere.nth(i).is_visible() for i in range(elsewhere.count()))
    page.select_option("#atlas-view select[name=setting]", "ViT-B/16, ImageNet-1k MAE")
    shown = table.locator("tbody tr:visible")
    assert shown.count() > 0
    assert all(shown.nth(i).locator(".atlas-badge.setting").inner_text() == "ViT-B/16, ImageNet-1k MAE"
               for i in range(shown.count()))
    page.select_option("#atlas-view select[name=setting]", "reference")
    page.select_option("#atlas-view select[name=selection]", "best-test")
    page.select_option("#atlas-view select[name=source]", "mai2024lessons")
    visible = table.locator("tbody tr:visible")
    assert visible.count() == 16
    for i in range(visible.count()):
        assert visible.nth(i).locator(".atlas-badge.best-test").count() == 1
    assert page.locator("#atlas-view-count").inner_text() == f"16 of {total} rows"
    page.check("#atlas-view input[name=copies]")
    page.select_option("#atlas-view select[name=selection]", "")
    page.select_option("#atlas-view select[name=source]", "")
    page.select_option("#atlas-view select[name=setting]", "")
    assert table.locator("tbody tr:visible").count() == total


@pytest.mark.parametrize("query, card, within", [("lora", "LoRA", 1), ("CoOp", "CoOp", 1), ("adaptformer", "AdaptFormer", 1),
                                                  ("bias only", "BitFit", 3), ("adaptformr", "AdaptFormer", 3)])
@pytest.mark.parametrize("width", [1400, 390])
def test_search_ranks_the_method_card_first_for_its_name(page, served_site, query, card, within, width):
    """A method's name finds its card first (not GLoRA for `lora`, not CoCoOp for `CoOp`); one of its
    aliases finds it among the first results, and a method card comes before any other page."""
    open_at(page, f"{served_site}/index.html", width)
    if width < 1000:  # on a phone the search box opens from the header's search button
        page.click("label.md-header__button[for=__search]")
    page.click("input[data-md-component=search-query]")
    page.keyboard.type(query, delay=30)
    items = page.locator(".md-search-result__item")
    items.first.wait_for(timeout=15000)
    titles = [items.nth(i).locator("h1").first.inner_text().strip() for i in range(min(within, items.count()))]
    assert card in titles, titles
    assert "/methods/" in items.first.locator("a").first.get_attribute("href")


def test_bibtex_basket_collects_methods_from_cards_and_the_table(page, served_site):
    page.goto(f"{served_site}/methods/lora.html")
    page.wait_for_load_state("networkidle")
    page.click("button.atlas-basket-add")
    assert page.locator("button.atlas-basket-add").inner_text() == "In the BibTeX basket (remove)"
    page.goto(f"{served_site}/methods/index.html")
    page.wait_for_load_state("networkidle")
    assert page.locator("input.atlas-basket[value=lora]").is_checked()
    page.check("input.atlas-basket[value=dora]")
    assert page.locator("#atlas-basket-count").inner_text() == "2"
    with page.expect_download() as download:
        page.click("#atlas-basket-download")
    text = Path(download.value.path()).read_text(encoding="utf-8")
    assert text.count("@") == 2 and "@inproceedings{hu2022lora," in text and "liu2024dora" in text


@pytest.mark.parametrize("width", [1400, 390])
def test_compare_view_puts_methods_side_by_side_from_the_address(page, served_site, width):
    open_at(page, f"{served_site}/compare.html?m=lora,adapter,ssf", width)
    table = page.locator("#atlas-compare-table table")
    assert [th.inner_text() for th in table.locator("thead th").all()][1:] == ["LoRA", "Adapter", "SSF"]
    rows = {row.locator("th").inner_text(): [td.inner_text() for td in row.locator("td").all()]
            for row in table.locator("tbody tr").all()}
    assert rows["Mergeable"] == ["yes", "no", "yes"]
    assert table.locator("tbody tr", has_text="Equations").locator("td").first.locator("math").count() >= 1
    assert "selected on val200" in rows["Reported (copies left out)"][0]  # PETL_Vision's clean runs
    assert "VTAB-micro" in rows["Reproduced here"][0]
    page.select_option("#atlas-compare select[name=m3]", "dora")
    assert page.url.endswith("?m=lora,adapter,ssf,dora")


@pytest.mark.parametrize("width", [1400, 390])
@pytest.mark.parametrize("path", ["results/vtab-1k.html", "results/fgvc.html", "results/vtab-micro.html",
                                  "results/base-to-novel.html"])
def test_chart_labels_never_overlap(page, served_site, path, width):
    """Every point label the browser draws is measured: no two overlap, none leaves the chart."""
    open_at(page, f"{served_site}/{path}", width)
    charts = page.locator("svg.atlas-chart")
    assert charts.count() >= 1
    for index in range(charts.count()):
        found = page.evaluate("""(svg) => {
            const chart = svg.getBoundingClientRect();
            const boxes = Array.from(svg.querySelectorAll('text.label, text.iso-hm-label')).map(t => t.getBoundingClientRect());
            const clash = [];
            boxes.forEach((a, i) => boxes.slice(i + 1).forEach((b, j) => {
                const dx = Math.min(a.right, b.right) - Math.max(a.left, b.left);
                const dy = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
                if (dx > 0.5 && dy > 0.5) clash.push([i, i + 1 + j]);
            }));
            const outside = boxes.filter(b => b.left < chart.left - 0.5 || b.right > chart.right + 0.5).length;
            return {labels: boxes.length, clash: clash.length, outside: outside};
        }""", charts.nth(index).element_handle())
        assert found["labels"] > 0 and found["clash"] == 0 and found["outside"] == 0, (path, index, found)


def test_search_finds_every_method_card_first_by_its_name(page, served_site):
    """Every method's name, and every alias of the implemented methods, typed into the search box,
    gives its own card as the first result (a name or alias two entries share: either card)."""
    from peft_atlas.kb import load

    kb, _ = load(REPO, check_math=False)
    queries: dict[str, set[str]] = {}
    for m in kb.methods.values():
        for text in [m.name] + (m.aliases if m.impl else []):
            queries.setdefault(text, set())
    for m in kb.methods.values():
        for text in [m.name] + m.aliases:
            for query in queries:
                if query.lower() == text.lower():
                    queries[query].add(f"methods/{m.id}.html")
    page.goto(f"{served_site}/index.html")
    page.wait_for_load_state("networkidle")
    page.click("input[data-md-component=search-query]")
    box = page.locator("input[data-md-component=search-query]")
    wrong = {}
    for query, cards in queries.items():
        box.fill(query)
        box.press("End")  # the theme searches on a key press: one search for the whole query
        # wait until the results answer this query (their links carry the query's words in ?h=)
        last = re.findall(r"[a-z0-9]+", query.lower())[-1]
        href = "no result"
        for _ in range(60):
            page.wait_for_timeout(50)
            items = page.locator(".md-search-result__item a")
            href = (items.first.get_attribute("href") or "") if items.count() else "no result"
            if last in unquote_plus(href.partition("h=")[2]).split():
                break
        if not any(re.split(r"[?#]", href)[0].endswith(card) for card in cards):
            wrong[query] = href
    assert wrong == {}


def test_method_finder_answers_which_methods_work_for_clip(page, served_site):
    """"Which methods work for CLIP?": one tick gives the vision-language methods implemented on
    open_clip models."""
    from peft_atlas.kb import load

    kb, _ = load(REPO, check_math=False)
    page.goto(f"{served_site}/methods/index.html?clip=yes")
    page.wait_for_load_state("networkidle")
    shown = page.locator("table.atlas-finder-table tbody tr:visible")
    names = sorted(shown.nth(i).locator("td").nth(1).inner_text() for i in range(shown.count()))
    assert names == sorted(m.name for m in kb.methods.values() if m.impl in kb.clip_impls)
    assert len(names) >= 9

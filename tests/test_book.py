"""The built book (make book / make test build it first) shows prose, equations and code, never nbdev tooling.

In a real browser it reads as a book: every table rendered, every reproduction page led by a table or a figure wide
enough to read, its code behind a toggle, pages named for what they hold, no path of the machine that built it.
"""
import json, os, re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import ON_CI

REPO = Path(__file__).resolve().parents[1]
HTML = REPO / 'book' / '_build' / 'html'
CHAPTERS = sorted((HTML / 'book' / 'chapters').glob('*.html')) if HTML.exists() else []


class Text(HTMLParser):
    "Collects the visible text of a page, and its <script> sources."
    def __init__(self):
        super().__init__(); self.chunks, self.scripts, self._skip = [], [], 0
    def handle_starttag(self, tag, attrs):
        if tag in ('script', 'style'): self._skip += 1
        if tag == 'script' and dict(attrs).get('src'): self.scripts.append(dict(attrs)['src'])
    def handle_endtag(self, tag):
        if tag in ('script', 'style'): self._skip -= 1
    def handle_data(self, data):
        if not self._skip: self.chunks.append(data)


def page(path):
    p = Text(); p.feed(path.read_text(encoding='utf-8')); return '\n'.join(p.chunks), p.scripts


@pytest.fixture(scope='module')
def chapters():
    if not CHAPTERS:
        msg = f"no built book under {HTML}: run `make book` (make test builds it before running pytest)"
        if ON_CI: pytest.fail(msg)
        pytest.skip(msg)
    return {p.stem: page(p) for p in CHAPTERS}


EXPERIMENTS = ('attacks', 'table1', 'tradeoff', 'figure2', 'figure3', 'unseen', 'theory', 'cost')


def test_reproduction_pages_are_in_the_book(chapters):
    for name in EXPERIMENTS:
        text, _ = page(HTML / 'book' / 'experiments' / f'{name}.html')
        assert 'Profile' in text and 'training images' in text, f"{name} does not state its profile and data size"
    runs = list((HTML / 'book' / 'experiments' / 'runs').glob('*.html'))
    assert len(runs) >= 6, "one train_eval page per row of the profile"


def test_glued_numbers_are_filled_in(chapters):
    text, _ = page(HTML / 'book' / 'experiments' / 'table1.html')
    assert 'glue:' not in text and re.search(r'\d+\s+of\s+\d+\s+claims hold', text)


def test_method_chapters_are_in_the_book(chapters):
    assert {"01_warp", "02_flow_gradients", "03_penalties", "04_theory", "05_attacks", "07_models", "00_data", "09_step", "16_records", "17_config", "08_train", "10_packed", "11_packed_train",
            "12_evaluate", "14_experiments", "99_api"} <= set(chapters)


def test_every_internal_link_resolves(chapters):
    "Every link of every built page to another file of the book (pages, figures, notebooks, styles) leads to one that exists."
    broken = []
    for page_path in (p for p in HTML.rglob('*.html') if p.relative_to(HTML).parts[0] not in ('_static', '_sources')):   # pages, not the theme's templates
        for href in re.findall(r'(?:href|src)="([^"#?]+)[^"]*"', page_path.read_text(encoding='utf-8')):
            if re.match(r'[a-z]+:', href) or href.startswith('//'): continue          # http(s), mailto, data: off the book
            target = (HTML / href.lstrip('/')) if href.startswith('/') else (page_path.parent / href)
            if not target.exists(): broken.append(f"{page_path.relative_to(HTML)} → {href}")
    assert not broken, f"{len(broken)} links lead nowhere, e.g. {broken[:5]}"


def test_chapters_are_numbered_in_reading_order():
    "The table of contents lists the library chapters by whole numbers that rise in reading order, with no letter suffixes."
    import yaml
    toc = yaml.safe_load((REPO / '_toc.yml').read_text())
    names = [c['file'].rsplit('/', 1)[1] for part in toc['parts'] for c in part['chapters'] if c['file'].startswith('book/chapters/')]
    numbers = [n.split('_', 1)[0] for n in names]
    assert all(n.isdigit() for n in numbers), f"chapters with a letter in their number: {[n for n in names if not n.split('_', 1)[0].isdigit()]}"
    assert [int(n) for n in numbers] == sorted(int(n) for n in numbers), f"chapters out of reading order: {names}"
    assert {p.stem for p in (REPO / 'nbs').glob('*.ipynb')} == set(names), "every notebook of nbs/ is a chapter of the book"


def test_no_nbdev_directives_are_shown(chapters):
    for name, (text, _) in chapters.items():
        assert not re.search(r'^\s*#\|', text, re.M), f"{name} shows a raw `#|` directive"
        assert 'default_exp' not in text, f"{name} shows a default_exp cell"


def test_hidden_cells_are_hidden(chapters):
    for name, (text, _) in chapters.items():
        assert 'from fastcore.test import' not in text, f"{name} shows a `#| hide` cell"


def test_math_is_marked_up_for_rendering(chapters):
    text, scripts = chapters['01_warp']
    html = (HTML / 'book' / 'chapters' / '01_warp.html').read_text(encoding='utf-8')
    assert 'class="math notranslate nohighlight"' in html
    assert any('mathjax' in s.lower() for s in scripts), "no MathJax script on the page"
    assert '$$' not in text, "unparsed $$ math in the page text"


def test_executed_outputs_are_present(chapters):
    text, _ = chapters['02_flow_gradients']
    assert re.search(r'max \|autograd - closed form\| = \d\.\de-\d\d', text)


# --- in a real browser: Debian's chromium, headless, driven by playwright -------------------------------------

CHROMIUM = Path('/usr/bin/chromium')
SHOTS = HTML.parent / 'screenshots'
MIN_FIGURE_PX = 600          # a figure meant to be read is at least this wide on the page

# What the browser reads from a page once MathJax is done: the text outside code and math, tables, figures, code left
# in view, the title, and the notebook the download button offers.
READ_PAGE = """() => {
  const main = document.querySelector('article.bd-article') || document.body;
  const prose = main.cloneNode(true);
  prose.querySelectorAll('pre, code, .math, mjx-container, script, style').forEach(e => e.remove());
  const shown = e => e.checkVisibility() && e.getBoundingClientRect().height > 0;
  return {
    title: (main.querySelector('h1') || {}).textContent.replace(/#$/, ''),
    prose: prose.textContent, text: main.innerText,
    tables: main.querySelectorAll('table').length,
    clipped_tables: [...main.querySelectorAll('table')].filter(t => t.getBoundingClientRect().width > t.parentElement.getBoundingClientRect().width + 1)
                      .map(t => t.rows.length ? t.rows[0].innerText.replace(/\\s+/g, ' ').slice(0, 80) : ''),
    figures: [...main.querySelectorAll('.cell_output img')].map(i => ({src: i.src, width: i.getBoundingClientRect().width, natural: i.naturalWidth})),
    code_in_view: [...main.querySelectorAll('.cell_input')].filter(shown).length,
    math: main.querySelectorAll('.math').length, rendered: main.querySelectorAll('mjx-container').length,
    mathjax_errors: main.querySelectorAll('mjx-merror').length,
    broken_images: [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src),
    images: document.images.length,
    downloads: [...document.querySelectorAll('.dropdown-download-buttons a')].map(a => a.href).filter(h => h.endsWith('.ipynb')),
  };
}"""


def machine_paths() -> list[str]:
    "The absolute paths no page may show: the repository's and the data root's."
    from fgr.data import offline_roots
    roots = [r for r in offline_roots() if r.exists()] + ([Path(os.environ['FGR_DATA'])] if os.environ.get('FGR_DATA') else [])
    return [str(REPO)] + [str(r.resolve()) for r in roots]


def is_reproduction(path: str) -> bool: return path.startswith('book/experiments/')


BROWSER_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
                '--disable-component-update', '--disable-sync']
PAGES_AT_ONCE = max(1, min(4, len(os.sched_getaffinity(0))))   # one page per core: 61 s for the book's 46 pages here, against 106 s one at a time


async def read_pages(base: str) -> dict:
    "Every page of the front page's sidebar, and the front page, as the browser shows them, PAGES_AT_ONCE at a time."
    import asyncio
    from playwright.async_api import async_playwright
    results, sidebar = {}, None

    async def visit(context, name):
        nonlocal sidebar
        page = await context.new_page()
        errors, failed = [], []
        page.on('pageerror', lambda e: errors.append(str(e)))
        page.on('console', lambda m: errors.append(m.text) if m.type == 'error' else None)
        page.on('requestfailed', lambda r: failed.append(r.url))
        page.on('response', lambda r: failed.append(r.url) if r.status >= 400 else None)
        await page.goto(base + name + '.html', wait_until='load')
        if await page.locator('.math').count():
            await page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=20000)
            await page.evaluate("() => MathJax.startup.promise")
        await page.evaluate("() => document.fonts.ready.then(() => true)")     # the fonts MathJax asked for, loaded or failed
        if sidebar is None:               # the front page's sidebar lists every page, in order
            sidebar = await page.evaluate("() => [...document.querySelectorAll('nav.bd-docs-nav a.reference.internal')].map(a => [a.textContent.trim(), a.href])")
        seen = await page.evaluate(READ_PAGE)
        seen['notebooks'] = [(got.status, await got.text() if got.ok else '') for got in [await page.request.get(u) for u in seen['downloads']]]
        results[name] = dict(seen, errors=errors, failed=failed, sidebar=sidebar, html=(HTML / f'{name}.html').read_text(encoding='utf-8'))
        if name == 'book/intro' or is_reproduction(name):
            await page.screenshot(path=str(SHOTS / f"{name.replace('/', '_')}.png"), full_page=True)
        await page.close()

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        context = await browser.new_context(viewport={'width': 1280, 'height': 900})
        await visit(context, 'book/intro')
        todo = list(dict.fromkeys(href.removeprefix(base).split('#')[0].removesuffix('.html') for _, href in sidebar))
        slots = asyncio.Semaphore(PAGES_AT_ONCE)
        async def in_slot(name):
            async with slots: await visit(context, name)
        await asyncio.gather(*(in_slot(n) for n in todo if n not in results))
        await browser.close()
    return results


@pytest.fixture(scope='module')
def browser_pages(chapters):
    "Every page of the sidebar, and the front page, as the browser shows them: {path without .html: what READ_PAGE read}."
    import asyncio, functools, http.server, shutil, threading
    if not CHROMIUM.exists():
        msg = "no /usr/bin/chromium (make test installs Debian's chromium)"
        if ON_CI: pytest.fail(msg)
        pytest.skip(msg)
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args): pass
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(Quiet, directory=str(HTML)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    shutil.rmtree(SHOTS, ignore_errors=True); SHOTS.mkdir()          # this build's pages only: no screenshot of a page gone since
    try: return asyncio.run(read_pages(f'http://127.0.0.1:{server.server_port}/'))
    finally: server.shutdown()


def test_pages_load_without_javascript_errors_or_missing_files(browser_pages):
    for name, r in browser_pages.items():
        assert not r['errors'], f"{name}: JavaScript errors {r['errors']}"
        # the browser asks for /favicon.ico on its own; the book never links one
        assert not [u for u in r['failed'] if '127.0.0.1' in u and not u.endswith('/favicon.ico')], f"{name}: missing files {r['failed']}"
        assert not [u for u in r['failed'] if '127.0.0.1' not in u], f"{name}: the page reached off the machine {r['failed']}"
        assert not r['broken_images'], f"{name}: images that did not load {r['broken_images']}"


def test_math_renders_offline(browser_pages):
    for name in ('book/chapters/01_warp', 'book/chapters/04_theory'):
        r = browser_pages[name]
        assert r['math'] > 0 and r['rendered'] >= r['math'], f"{name}: {r['rendered']} of {r['math']} formulas rendered"
    for name, r in browser_pages.items():
        assert r['mathjax_errors'] == 0, f"{name}: MathJax reported {r['mathjax_errors']} errors"


def test_figures_load(browser_pages):
    r = browser_pages['book/chapters/04_theory']
    assert r['images'] >= 2 and not r['broken_images'], r


def test_every_table_is_rendered(browser_pages):
    for name, r in browser_pages.items():
        raw = re.search(r'\|[^|\n]*\|[^|\n]*\||\|\s*:?(-{3,}|—|–):?\s*\|', r['prose'])
        assert not raw, f"{name}: a Markdown table that did not render: {raw[0]!r}"


def test_no_table_is_wider_than_the_page(browser_pages):
    clipped = {name: r['clipped_tables'] for name, r in browser_pages.items() if r['clipped_tables']}
    assert not clipped, f"tables wider than the text column, so that their last columns are cut off (page: first rows): {clipped}"


def test_reproduction_pages_lead_with_a_table_or_a_figure_and_hide_their_code(browser_pages):
    reproduction = [n for n in browser_pages if is_reproduction(n)]
    assert len(reproduction) >= 11, reproduction          # Table 1, its rows, Figures 2 and 3, theory, cost
    for name in reproduction:
        r = browser_pages[name]
        assert r['tables'] or r['figures'], f"{name}: neither an HTML table nor a figure"
        assert r['code_in_view'] == 0, f"{name}: {r['code_in_view']} code cells in view; a reproduction page's code is behind a toggle"
        assert 'Parameters: profile = ' in r['text'], f"{name}: papermill's parameters are not stated in one line"
        assert 'reusing the finished run' not in r['text'], f"{name}: shows the trainer's log; a reproduction page keeps it off"
    assert 'reusing the finished run' not in browser_pages['book/intro']['text'], "the front page shows the trainer's log"
    assert all(browser_pages[n]['code_in_view'] for n in browser_pages if n.startswith('book/chapters/')), "library chapters show their code"


def test_figures_are_wide_enough_to_read(browser_pages):
    from fgr.experiments import PAGE_PX        # the width at which check_legible measured every figure's labels
    for name in filter(is_reproduction, browser_pages):
        for f in browser_pages[name]['figures']:
            assert f['width'] >= MIN_FIGURE_PX, f"{name}: a figure rendered {f['width']:.0f} px wide, under {MIN_FIGURE_PX} px: {f['src']}"
            assert f['width'] >= min(f['natural'], PAGE_PX) - 1, \
                f"{name}: a figure shown {f['width']:.0f} px wide, narrower than the {PAGE_PX} px its labels were checked at"


def test_pages_are_named_for_what_they_hold(browser_pages):
    titles = [t for t, _ in browser_pages['book/intro']['sidebar']]
    assert len(titles) == len(set(titles)), f"pages in the sidebar share a title: {sorted(t for t in titles if titles.count(t) > 1)}"
    runs = [n for n in browser_pages if n.startswith('book/experiments/runs/')]
    assert runs and all(' · ' in browser_pages[n]['title'] for n in runs), "a row page is titled by its row"


def test_no_page_shows_the_machine_that_built_it(browser_pages):
    shown = [(name, path, where) for name, r in browser_pages.items() for path in machine_paths()
             for where, text in [('page', r['html'])] + [('notebook', t) for _, t in r['notebooks']] if path in text]
    assert not shown, f"absolute paths of the build machine (page, path, in the page or its notebook): {shown}"


def test_every_page_can_be_downloaded_and_rerun(browser_pages):
    for name, r in browser_pages.items():
        assert r['notebooks'] and all(status == 200 and json.loads(text)['cells'] for status, text in r['notebooks']), \
            f"{name}: the download button offers no notebook that loads {r['downloads']}"
        assert re.search(r'Rerun: cd nbs(/experiments)? && papermill \S+\.ipynb', r['text']), f"{name}: no papermill command to rerun it"

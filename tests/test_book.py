"""The built book (make book / make test build it first) shows prose, equations and code, never nbdev tooling."""
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import ON_CI

HTML = Path(__file__).resolve().parents[1] / 'book' / '_build' / 'html'
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


EXPERIMENTS = ('table1', 'figure2', 'figure3', 'theory', 'cost')


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
    assert {"01_warp", "02_flow_gradients", "03_penalties", "04_theory", "05_attacks", "06_models", "07_data", "08_train",
            "09_evaluate", "10_experiments", "99_api"} <= set(chapters)


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


@pytest.fixture(scope='module')
def browser_pages(chapters):
    import functools, http.server, threading
    if not CHROMIUM.exists():
        msg = "no /usr/bin/chromium (make test installs Debian's chromium)"
        if ON_CI: pytest.fail(msg)
        pytest.skip(msg)
    from playwright.sync_api import sync_playwright
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(HTML))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    SHOTS.mkdir(exist_ok=True)
    args = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
            '--disable-component-update', '--disable-sync']
    results = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=args)
        for name, path in [('front', 'index.html'), ('warp', 'book/chapters/01_warp.html'),
                           ('theory', 'book/chapters/04_theory.html'), ('table1', 'book/experiments/table1.html')]:
            page = browser.new_page(viewport={'width': 1280, 'height': 900})
            errors, failed = [], []
            page.on('pageerror', lambda e: errors.append(str(e)))
            page.on('console', lambda m: errors.append(m.text) if m.type == 'error' else None)
            page.on('requestfailed', lambda r: failed.append(r.url))
            page.on('response', lambda r: failed.append(r.url) if r.status >= 400 else None)
            page.goto(f'http://127.0.0.1:{server.server_port}/{path}', wait_until='networkidle')
            page.wait_for_timeout(500)
            if page.locator('.math').count():
                page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=20000)
                page.evaluate("() => MathJax.startup.promise")
            results[name] = dict(
                url=page.url, errors=errors, failed=failed,
                math=page.locator('.math').count(), rendered=page.locator('mjx-container').count(),
                mathjax_errors=page.locator('mjx-merror').count(),
                broken_images=page.evaluate("() => [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)"),
                images=page.evaluate("() => document.images.length"))
            page.screenshot(path=str(SHOTS / f'{name}.png'), full_page=False)
            page.close()
        browser.close()
    server.shutdown()
    return results


def test_pages_load_without_javascript_errors_or_missing_files(browser_pages):
    for name, r in browser_pages.items():
        assert not r['errors'], f"{name}: JavaScript errors {r['errors']}"
        # the browser asks for /favicon.ico on its own; the book never links one
        assert not [u for u in r['failed'] if '127.0.0.1' in u and not u.endswith('/favicon.ico')], f"{name}: missing files {r['failed']}"
        assert not [u for u in r['failed'] if '127.0.0.1' not in u], f"{name}: the page reached off the machine {r['failed']}"


def test_math_renders_offline(browser_pages):
    for name in ('warp', 'theory'):
        r = browser_pages[name]
        assert r['math'] > 0 and r['rendered'] >= r['math'], f"{name}: {r['rendered']} of {r['math']} formulas rendered"
        assert r['mathjax_errors'] == 0, f"{name}: MathJax reported {r['mathjax_errors']} errors"


def test_figures_load(browser_pages):
    r = browser_pages['theory']
    assert r['images'] >= 2 and not r['broken_images'], r

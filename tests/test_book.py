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


def test_method_chapters_are_in_the_book(chapters):
    assert {'01_warp', '02_flow_gradients', '03_penalties', '04_theory'} <= set(chapters)


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

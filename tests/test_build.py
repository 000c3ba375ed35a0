"""tools/build_book.py beside the book it builds: what a build at another profile leaves behind."""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'tools'))
from build_book import remove_stale_rows  # noqa: E402


def test_a_build_at_another_profile_leaves_no_page_of_the_first(tmp_path):
    "The row pages of the profile built before go, and the rendered book with them, since Sphinx keeps the pages of removed sources."
    runs, rendered = tmp_path / 'runs', tmp_path / '_build'
    runs.mkdir(); (rendered / 'html').mkdir(parents=True)
    tiny, mini = runs / '01-tiny-row.ipynb', runs / '01-mini-row.ipynb'
    for f in (tiny, mini): f.write_text('{}')
    assert remove_stale_rows(runs, [mini], rendered) == [tiny]
    assert not tiny.exists() and mini.exists() and not rendered.exists()
    (rendered / 'html').mkdir(parents=True)
    assert remove_stale_rows(runs, [mini], rendered) == [] and rendered.exists()   # the same profile again: the build stays

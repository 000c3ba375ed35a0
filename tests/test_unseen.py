"""The unseen-deformations record the book build writes for its profile (CI builds the tiny book before pytest)."""
import pytest

from conftest import tiny_record_or_skip
from fgr.evaluate import evaluate
from fgr.experiments import BEYOND, get_profile, row_config, row_id, unseen_evaluations
from fgr.train import train
from fgr.records import read_record
from fgr.unseen import FAMILIES, adef_accuracy, unseen_key, unseen_path


@pytest.fixture(scope='module')
def tiny():
    profile = get_profile('tiny')
    path = tiny_record_or_skip(unseen_path(profile))
    data = read_record(path, 'unseen')
    assert data['format'] == 'fgr-unseen-1' and data['profile'] == 'tiny'
    return profile, data['rows']


def test_one_row_per_model_with_every_family_at_every_magnitude(tiny):
    profile, rows = tiny
    assert [r['row'] for r in rows] == [row_id(r) for r in profile.rows]
    keys = [unseen_key(f, m) for f, m, _, _ in unseen_evaluations(profile) if f != 'adef']
    keys += [unseen_key('adef', b) for b in profile.adef_budgets_px]
    for r in rows:
        assert all(0 <= r[k] <= 1 for k in keys + ['clean', 'ms', *BEYOND]), r['row']
        assert len(r['adef_magnitudes_px']) == profile.unseen_images


def test_adef_counted_at_its_largest_budget_is_what_its_evaluation_reported(tiny):
    profile, rows = tiny
    family, magnitude, settings, images = unseen_evaluations(profile)[-1]
    assert family == 'adef'
    for spec, r in zip(profile.rows, rows):
        record = train(row_config(profile, spec))            # finished: read back, not retrained
        e = evaluate(record, 'adef', images=images, settings=settings)
        assert r[unseen_key('adef', magnitude)] == pytest.approx(e['accuracy'], abs=1e-12), r['row']
        assert adef_accuracy(e['magnitudes_px'], magnitude) == pytest.approx(e['accuracy'], abs=1e-12)


def test_every_family_is_on_the_page_record():
    assert set(FAMILIES) == {f for f, _, _, _ in unseen_evaluations(get_profile('mini'))}

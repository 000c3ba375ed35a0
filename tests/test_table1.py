"""Table 1 as data: the record `make book` writes for its profile (CI builds the tiny book before pytest), and reading it."""
import json
import pytest

from conftest import tiny_record_or_skip
from fgr.experiments import (BEYOND, COLUMNS, PENALISED, get_profile, read_table1, row_id, select_lambda, table1_path)

FIELDS = {'dataset', 'arch', 'defense', 'lam', 'selected', 'compared', 'eval_images', 'did_not_learn', *COLUMNS, *BEYOND}


@pytest.fixture(scope='module')
def tiny():
    profile = get_profile('tiny')
    path = tiny_record_or_skip(table1_path(profile))
    return profile, read_table1(path)


def test_one_row_per_trained_model_with_every_field(tiny):
    profile, rows = tiny
    assert [r['row'] for r in rows] == [row_id(r) for r in profile.rows]
    for r in rows:
        assert FIELDS <= set(r), f"{r['row']} lacks {FIELDS - set(r)}"
        assert r['eval_images'] == profile.eval_images
        assert all(0 <= r[c] <= 1 for c in COLUMNS + BEYOND)


def test_the_selection_is_the_rule_applied_to_the_record(tiny):
    _, rows = tiny
    for ds, arch in {(r['dataset'], r['arch']) for r in rows}:
        group = [r for r in rows if (r['dataset'], r['arch']) == (ds, arch)]
        at = [r for r in group if r['defense'] == 'at' and r['compared']]
        for d in PENALISED:
            sweep = [r for r in group if r['defense'] == d]
            learned = [r for r in sweep if r['compared']]      # tiny compares its near-chance models too (compare_near_chance)
            chosen = [r['lam'] for r in sweep if r['selected']]
            if at and learned: assert chosen == [select_lambda(learned, at[0]['clean'])['lam']], (ds, arch, d)
            else: assert chosen == [], (ds, arch, d)
    assert {r['selected'] for r in rows if r['defense'] not in PENALISED} <= {None}


def test_the_tiny_profile_exercises_a_sweep(tiny):
    _, rows = tiny
    assert sum(r['defense'] == 'fgr' for r in rows) >= 3 and sum(r['defense'] == 'igr' for r in rows) >= 3


def test_a_file_that_is_not_a_table1_record_is_refused(tmp_path):
    bad = tmp_path / 'table1-x.json'
    bad.write_text(json.dumps(dict(format='fgr-bench-2', rows=[])))
    with pytest.raises(ValueError, match="is a benchmark record \\(fgr-bench-2\\), not a Table 1 record"): read_table1(bad)
    bad.write_text('[1, 2')
    with pytest.raises(ValueError, match='cannot read the Table 1 record'): read_table1(bad)
    with pytest.raises(ValueError, match='cannot read'): read_table1(tmp_path / 'missing.json')

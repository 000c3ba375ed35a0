"""The GPU window (tools/gpu_window.sh) run as CI can run it, at tiny on the CPU, and the import of what it returns
(tools/window_records.py): every finished row's records and no checkpoint, nothing overwritten, bad archives refused."""
import io, json, os, subprocess, sys, tarfile
from pathlib import Path
import pytest

from conftest import cifar_or_skip
from fgr.experiments import get_profile, read_table1, runs_dir
from fgr.records import read_record

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'tools'))
from window_records import import_archive  # noqa: E402


@pytest.fixture(scope='module')
def archive(tmp_path_factory) -> Path:
    "The window's archive at tiny, reusing the runs of the tiny book where they exist (make test builds it first)."
    cifar_or_skip('cifar10', 'test', n=1)
    out, work = tmp_path_factory.mktemp('out'), tmp_path_factory.mktemp('window')
    env = dict(os.environ, OUT=str(out), WINDOW_DIR=str(work), FGR_RUNS=str(runs_dir()), OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    r = subprocess.run(['bash', 'tools/gpu_window.sh'], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert 'tiny: 11 of 11 rows done' in (out / 'window.log').read_text()
    return out / 'window.tar.gz'


def test_the_window_at_tiny_returns_every_row_without_checkpoints(archive, tmp_path):
    into, P = tmp_path / 'results', get_profile('tiny')
    written = import_archive(archive, into)
    assert written and not any(p.name == 'checkpoint.pt' for p in written)
    window = next((into / 'windows').iterdir())                        # what describes this window: manifest, grid, tables
    rows = read_table1(window / 'tiny' / 'table1-tiny.json')
    assert len(rows) == len(P.rows) and len(read_record(window / 'tiny' / 'unseen-tiny.json', 'unseen')['rows']) == len(P.rows)
    folders = sorted((into / 'tiny' / 'runs').iterdir())
    assert len(folders) == len(P.rows)
    for f in folders:
        read_record(f / 'record.json', 'run')
        kinds = {e.name.split('-')[0] for e in (f / 'eval').glob('*.json')}
        assert {'clean', 'ss', 'ms', 'ob', 'gf', 'strong', 'surface', 'theory'} <= kinds, (f.name, kinds)
        assert ('example' in kinds) == ('-standard-' in f.name)          # the front page's picture, of Standard models
    grid = read_record(next((window / 'tiny').glob('grid-tiny-*.json')), 'grid')
    assert {r['status'] for r in grid['results']} == {'done'}
    window = json.loads((window / 'window.json').read_text())
    assert window['checks']['step_flops']['fgr'] > window['checks']['step_flops']['standard'] > 0   # counted, not typed
    assert window['wall_time_s'] > 0 and window['provenance']['device'] == 'cpu'


def test_importing_again_writes_nothing_and_never_overwrites(archive, tmp_path):
    into = tmp_path / 'results'
    import_archive(archive, into)
    assert import_archive(archive, into) == []                          # the same files: nothing to do
    table = next((into / 'windows').iterdir()) / 'tiny' / 'table1-tiny.json'
    table.write_text(table.read_text() + ' ')                           # someone's edit
    before = sorted(p for p in into.rglob('*'))
    with pytest.raises(SystemExit, match='would be overwritten'): import_archive(archive, into)
    assert sorted(p for p in into.rglob('*')) == before and table.read_text().endswith(' ')


def test_an_archive_with_a_file_that_is_not_a_record_is_refused(tmp_path):
    bad = tmp_path / 'bad.tar.gz'
    with tarfile.open(bad, 'w:gz') as tar:
        for name, data in (('window.json', b'{"created": "2026-01-01T00:00:00Z"}'), ('tiny/runs/x/record.json', b'{"config": {}}')):
            info = tarfile.TarInfo(name); info.size = len(data); tar.addfile(info, io.BytesIO(data))
    with pytest.raises(SystemExit, match='not a record this code reads'): import_archive(bad, tmp_path / 'results')
    assert not (tmp_path / 'results').exists()


def test_the_imported_records_give_table1_without_a_checkpoint(archive, tmp_path, monkeypatch):
    "What a page shows of a profile run elsewhere: Table 1 rebuilt from the committed records alone equals the one made where the models were."
    from fgr.experiments import committed_runs, committed_table1
    into, P = tmp_path / 'results', get_profile('tiny')
    import_archive(archive, into)
    monkeypatch.setenv('FGR_RESULTS', str(into))
    monkeypatch.setenv('FGR_RUNS', str(tmp_path / 'empty-runs'))     # nothing to fall back on
    runs = committed_runs(P)
    assert set(runs) == set(P.rows) and not any(Path(r['checkpoint']).exists() for r in runs.values())
    made_there = read_table1(next((into / 'windows').iterdir()) / 'tiny' / 'table1-tiny.json')
    assert committed_table1(P) == made_there


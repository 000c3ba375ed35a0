"""fgr.naive and fgr.bench: the naive baseline and the autograd objective compute what the library computes, the benchmark record
has every field, `python -m fgr.bench --quick` writes one, and the GPU check exits cleanly without CUDA.
Nothing here asserts a timing: the machine is shared, and the ratios are the benchmark's output, not its tests."""
import copy, importlib.util, json, os, subprocess, sys, tarfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import ON_CI, cifar_or_skip
from fgr import bench, bench_record, naive
from fgr.data import find_data_root, load_cifar, to_float
from fgr.gradients import flow_gradient
from fgr.models import make_model
from fgr.train import DEFENSES, TrainConfig
from fgr.warp import warp

ROOT = Path(__file__).resolve().parents[1]


def rel(a, b): return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope='module')
def batch64():
    "Eight real CIFAR-10 test images (float64) and labels, and a width-1/16 VGG-11 in float64."
    torch.set_num_threads(1)
    x, y = cifar_or_skip('cifar10', 'test', n=8, seed=3)
    return to_float(x).double(), y, make_model('vgg11', 10, 1/16).double()


def test_naive_warp_equals_warp_in_float64():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 17, 23, generator=g, dtype=torch.float64)
    for scale in (0.0, 0.01, 0.3, 3.0):            # identity, sub-pixel, several pixels, far beyond the border
        flow = scale * torch.randn(3, 17, 23, 2, generator=g, dtype=torch.float64)
        torch.testing.assert_close(naive.naive_warp(x, flow), warp(x, flow), atol=1e-12, rtol=0)


def test_naive_flow_gradient_at_identity_is_the_closed_form(batch64):
    x, y, net = batch64
    v0 = torch.zeros(len(x), 32, 32, 2, dtype=torch.float64, requires_grad=True)
    g, = torch.autograd.grad(F.cross_entropy(net.eval()(naive.naive_warp(x, v0)), y), v0)
    torch.testing.assert_close(g, flow_gradient(net, x, y), atol=1e-14, rtol=1e-10)


@pytest.mark.parametrize('convention', ['authors', 'per_sample'])
def test_fgr_objectives_have_the_library_penalty_gradient(batch64, convention):
    x, y, net = batch64
    net.train()
    cfg = TrainConfig(defense='fgr', width=1/16, convention=convention).resolved()
    exact = naive.penalty_gradient(DEFENSES['fgr'], net, x, y, cfg)
    assert rel(naive.penalty_gradient(naive.naive_fgr, net, x, y, cfg), exact) < 1e-10
    # autograd through warp differentiates a hair right of v0: max-pooling ties in flat image regions may resolve differently
    assert rel(naive.penalty_gradient(bench.fgr_autograd, net, x, y, cfg), exact) < 1e-3
    torch.testing.assert_close(naive.naive_fgr(net, x, y, cfg).penalty, DEFENSES['fgr'](net, x, y, cfg).penalty, atol=0, rtol=1e-10)


def test_pil_loader_serves_augmented_images_of_the_set():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(10)
    ds = naive.PILCifar(x, y)
    assert len(ds) == 10
    img, label = ds[4]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32 and label == 4
    crops = {(dy, dx, f) for dy in range(9) for dx in range(9) for f in (False, True)}
    padded = F.pad(to_float(x[4]), (4, 4, 4, 4))
    def is_crop(dy, dx, f):
        c = padded[:, dy:dy + 32, dx:dx + 32]
        return torch.allclose(img, c.flip(-1) if f else c, atol=1e-6)
    assert any(is_crop(*c) for c in crops), "the item is not a padded crop (or its flip) of its image"
    xb, yb = next(iter(naive.naive_loader(x, y, batch_size=4, workers=0)))
    assert xb.shape == (4, 3, 32, 32) and yb.shape == (4,)


def test_peak_memory_counts_the_double_backward_graph():
    x, y = torch.rand(32, 3, 32, 32), torch.randint(0, 10, (32,))
    standard, igr = (bench.peak_memory(n, 'vgg11', 1/16, x, y) for n in ('standard', 'igr'))
    assert 0 < standard < igr


def _record_with(steps=(), memory=(), epochs=()):
    rec = bench.new_record(['cpu'], quick=True, command='test')
    rec['data'] = 'random'
    rec['steps'] = [dict(device='cpu', arch='vgg11', width=1.0, batch_size=128, variant=n, times_s=[t], median_s=t) for n, t in steps]
    rec['memory'] = [dict(device='cpu', arch='vgg11', width=1.0, variant=n, peak_bytes=b, method='x') for n, b in memory]
    rec['epochs'] = list(epochs)
    rec['targets'] = bench_record.targets(rec)
    return rec


def test_targets_are_computed_from_the_medians():
    steps = [('igr', 1.0), ('fgr', 1.04), ('fgr_naive', 1.25)]
    epochs = [dict(device='cuda:0', arch='vgg11', width=1.0, images=10, times_s={}, median_s=dict(naive=6.0, ours=3.0, ours_fast=1.5))]
    rec = _record_with(steps, [('igr', 100), ('fgr', 105)], epochs)
    t = {x['target']: x for x in rec['targets']}
    assert t['FGR step / IGR step']['value'] == pytest.approx(1.04) and t['FGR step / IGR step']['met']
    assert t['FGR step / naive FGR step']['value'] == pytest.approx(1.04 / 1.25) and t['FGR step / naive FGR step']['met']
    assert t['FGR peak memory / IGR peak memory']['value'] == pytest.approx(1.05) and t['FGR peak memory / IGR peak memory']['met']
    slow = {x['target']: x for x in _record_with([('igr', 1.0), ('fgr', 1.2), ('fgr_naive', 1.0)], [('igr', 100), ('fgr', 120)])['targets']}
    assert not slow['FGR step / IGR step']['met'] and not slow['FGR step / naive FGR step']['met'] and not slow['FGR peak memory / IGR peak memory']['met']
    assert t['naive epoch / ours epoch']['value'] == 2.0 and not t['naive epoch / ours epoch']['met']       # CUDA needs 3x
    assert t['naive epoch / ours_fast epoch']['met']
    assert bench_record.check_record(rec) is rec


def test_graph_targets_compare_graphed_steps_and_appear_only_where_measured():
    steps = [('igr', 1.0), ('fgr', 1.0), ('fgr_naive', 1.1), ('igr_graph', 0.2), ('fgr_graph', 0.22)]
    epochs = [dict(device='cuda:0', arch='vgg11', width=1.0, images=10, times_s={}, median_s=dict(naive=6.0, ours=5.0, ours_graph=1.5))]
    t = {x['target']: x for x in _record_with(steps, [], epochs)['targets']}
    assert t['FGR step / IGR step (CUDA graphs)']['value'] == pytest.approx(1.1) and not t['FGR step / IGR step (CUDA graphs)']['met']
    assert t['FGR step (CUDA graphs) / naive FGR step']['value'] == pytest.approx(0.2) and t['FGR step (CUDA graphs) / naive FGR step']['met']
    assert t['naive epoch / ours_graph epoch']['value'] == 4.0 and t['naive epoch / ours_graph epoch']['met']
    eager = {x['target'] for x in _record_with(steps[:3], [])['targets']}
    assert 'FGR step / IGR step' in eager and not any('CUDA graphs' in n for n in eager)
    assert '| ours_graph |' in bench_record.format_tables(_record_with(steps, [], epochs))


def test_check_record_names_what_is_missing():
    rec = _record_with([('igr', 1.0)])
    for broken, name in ((lambda r: r.pop('steps'), "'steps'"), (lambda r: r['steps'][0].pop('median_s'), 'median_s'),
                         (lambda r: r.update(format='other'), 'format'), (lambda r: r.update(quick='yes'), "'quick'")):
        r = copy.deepcopy(rec); broken(r)
        with pytest.raises(ValueError, match=name): bench_record.check_record(r)


def test_quick_run_writes_a_complete_record(tmp_path):
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'PYTHONUNBUFFERED': '1'}
    out = subprocess.run([sys.executable, '-m', 'fgr.bench', '--quick', '--arch', 'vgg11', '--out', str(tmp_path)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    files = list(tmp_path.glob('*-cpu-quick.json'))
    assert len(files) == 1 and f"record: {files[0]}" in out.stdout and 'Targets:' in out.stdout
    rec = bench_record.check_record(json.loads(files[0].read_text()))
    assert rec['quick'] and rec['devices'][0]['device'] == 'cpu' and rec['devices'][0]['device_name']
    assert rec['provenance']['packages']['torch'] == torch.__version__ and rec['threads'] == 1
    assert {s['variant'] for s in rec['steps']} == set(bench.STEP_NAMES)
    assert all(s['arch'] == 'vgg11' and s['batch_size'] == 128 and len(s['times_s']) == 2 and s['median_s'] > 0 for s in rec['steps'])
    assert {m['variant'] for m in rec['memory']} == set(bench.MEMORY_NAMES) and all(m['peak_bytes'] > 0 for m in rec['memory'])
    assert sorted((a['setting'], a['attack']) for a in rec['attacks']) == sorted((p, a) for p in ('mini', 'paper') for a in ('ss', 'ms', 'ob', 'gf'))
    assert all(a['images_per_s'] > 0 for a in rec['attacks'])
    assert set(rec['epochs'][0]['median_s']) == {'naive', 'ours'}          # ours_fast is CUDA's
    assert rec['targets'] and all(t['value'] is not None for t in rec['targets'])


def test_gpu_check_without_cuda_says_so_and_exits_0(monkeypatch, capsys):
    env = {**os.environ, 'CUDA_VISIBLE_DEVICES': '', 'PYTHONPATH': str(ROOT)}
    script = subprocess.run(['bash', 'tools/gpu_check.sh'], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert script.returncode == 0 and 'no CUDA device' in script.stdout, script.stdout + script.stderr
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    assert bench.main(['--gpu-check']) == 0 and 'no CUDA device' in capsys.readouterr().out


@pytest.fixture(scope='module')
def packed_subset(tmp_path_factory):
    "A tiny tar.gz packed by benchmarks/pack_gpu_data.py from the offline folders, and the folder it unpacks to."
    kind, path = find_data_root('cifar10', 'train')
    if kind != 'folder':
        msg = f"packing needs the offline CIFAR-10 image folders, found {kind} {path}"
        if ON_CI: pytest.fail(msg)
        pytest.skip(msg)
    spec = importlib.util.spec_from_file_location('pack_gpu_data', ROOT / 'benchmarks' / 'pack_gpu_data.py')
    pack = importlib.util.module_from_spec(spec); spec.loader.exec_module(pack)
    tmp = tmp_path_factory.mktemp('subset')
    tar = pack.pack(tmp / 'subset.tar.gz', train=40, test=20, seed=1)
    with tarfile.open(tar) as t: t.extractall(tmp / 'root', filter='data')
    return tar, tmp / 'root'


def test_packed_subset_is_a_cifar_folder(packed_subset, monkeypatch, tmp_path):
    tar, root = packed_subset
    monkeypatch.setenv('FGR_CACHE', str(tmp_path))
    with tarfile.open(tar) as t: names = t.getnames()
    assert len(names) == 60 and all(n.startswith(('cifar10/train/', 'cifar10/test/')) and n.endswith('.png') for n in names)
    x, y = load_cifar('cifar10', 'train', root=root)
    assert x.shape == (40, 3, 32, 32) and x.dtype == torch.uint8 and len(y) == 40


def test_training_check_trains_each_recipe_and_reports_it(packed_subset, monkeypatch, tmp_path):
    _, root = packed_subset
    monkeypatch.setenv('FGR_CACHE', str(tmp_path))
    out = bench.training_check(root, 'cpu', epochs=1, width=1/16, runs_dir=tmp_path / 'runs', defenses=('standard', 'fgr'))
    assert [r['defense'] for r in out] == ['standard', 'fgr'] and out[1]['lam'] == TrainConfig(defense='fgr').resolved().lam
    assert all(r['train_images'] == 40 and r['test_images'] == 20 and r['images_per_s'] > 0 and 0 <= r['test_accuracy'] <= 1
               and r['flow_gradient_norm'] > 0 and len(r['history']) == 1 for r in out)
    assert '| cpu | fgr λ 700, vgg11 width 0.0625 | 1 epoch, 40 images (test 20) |' in bench_record.training_table([dict(device='cpu', **r) for r in out])


def test_a_variant_that_fails_is_recorded_and_skipped(monkeypatch):
    "On a torch without grid_sample's double backward the autograd FGR variant raises: the run goes on without it."
    def broken(*args): raise RuntimeError("derivative for grid_sampler_2d_backward is not implemented")
    monkeypatch.setitem(bench.VARIANTS, 'fgr_autograd', bench.Variant('fgr', broken))
    monkeypatch.setattr(bench, 'peak_memory', lambda *a, **k: 1)
    monkeypatch.setattr(bench, 'time_variants', lambda names, *a, **k: {n: [1.0] for n in names})
    record = bench.new_record(['cpu'], True, '')
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    bench.phase_steps(record, 'cpu', dict(reps=1, warmup=0), x, y, 'vgg11', 1/16)
    assert 'fgr_autograd' not in {s['variant'] for s in record['steps']} and 'fgr' in {s['variant'] for s in record['steps']}
    assert len(record['skipped']) == 1 and 'fgr_autograd' in record['skipped'][0] and 'not implemented' in record['skipped'][0]


def test_bench_records_lists_full_records_of_a_device_type(tmp_path):
    full, quick = _record_with([('igr', 1.0)]), _record_with([('igr', 1.0)])
    full['quick'] = False
    (tmp_path / '20260101T000000Z-cpu.json').write_text(json.dumps(full))
    (tmp_path / '20260102T000000Z-cpu-quick.json').write_text(json.dumps(quick))
    assert [r['quick'] for r in bench_record.bench_records('cpu', folder=tmp_path)] == [False]
    assert [r['quick'] for r in bench_record.bench_records('cpu', quick=True, folder=tmp_path)] == [True]
    assert bench_record.bench_records('cuda', folder=tmp_path) == []
    (tmp_path / 'notes.json').write_text(json.dumps({'format': 'fgr-table1-1', 'profile': 'mini', 'rows': []}))
    with pytest.raises(ValueError, match='notes.json is a Table 1 record'): bench_record.bench_records('cpu', folder=tmp_path)   # not skipped in silence

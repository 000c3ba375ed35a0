"""`python -m fgr.evaluate --model MODULE:FACTORY` (`fgr.evaluate.report`) on a classifier fgr did not build: a tiny CNN in
a module written here, trained for a few seconds on real CIFAR-10. Every attack asked for is reported; --mean/--std gives
the same report as normalising inside the model; every bad input is refused before any attack runs, with one line on
stderr, exit status 2 and nothing written; a report asked for again is read back without attacking."""
import hashlib, os, subprocess, sys
from pathlib import Path
import pytest
import torch
import torch.nn.functional as F

import fgr.evaluate
from conftest import cifar_or_skip
from fgr.data import to_float
from fgr.evaluate import REPORT_ATTACKS, TABLE1, InputError, load_classifier, main, report
from fgr.records import read_record

REPO = Path(__file__).resolve().parents[1]
MEAN, STD = '0.4914,0.4822,0.4465', '0.2470,0.2435,0.2616'
MODULE = f'''
import torch, torch.nn as nn

class Tiny(nn.Module):
    "Two convolutions and a linear head; with normalise=True it normalises its input itself (buffers outside the state dict)."
    def __init__(self, classes=10, width=16, normalise=False):
        super().__init__()
        self.normalise = normalise
        self.register_buffer('mean', torch.tensor(({MEAN})).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(({STD})).view(1, 3, 1, 1), persistent=False)
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(width, 2 * width, 3, padding=1),
                                  nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(32 * width, classes))
    def forward(self, x): return self.body((x - self.mean) / self.std if self.normalise else x)

def plain(): return Tiny()
def normalising(): return Tiny(normalise=True)
def wider(): return Tiny(width=24)
def flat(): return nn.Flatten()                 # (batch, 3072): no logits
def not_a_module(): return 'Tiny'
def broken(): raise RuntimeError('no weights here')
'''


class Extra:
    "An object of a class defined here: a checkpoint holding one needs more than weights_only=True allows."


@pytest.fixture(scope='module')
def zoo(tmp_path_factory):
    "A folder with tinynet.py and weights.pt: `normalising()` trained with Adam for three epochs on 2,000 CIFAR-10 images (about 2 s)."
    x, y = cifar_or_skip('cifar10', 'train', n=2000)
    folder = tmp_path_factory.mktemp('zoo')
    (folder / 'tinynet.py').write_text(MODULE)
    torch.manual_seed(0)
    model, _ = load_classifier(f"{folder}/tinynet.py:normalising")
    opt, x = torch.optim.Adam(model.parameters(), 3e-3), to_float(x)
    for _ in range(3):
        for i in range(0, len(x), 100):
            loss = F.cross_entropy(model(x[i:i + 100]), y[i:i + 100])
            opt.zero_grad(); loss.backward(); opt.step()
    torch.save(model.state_dict(), folder / 'weights.pt')
    (folder / 'notes.txt').write_text('not weights\n')
    torch.save(dict(state_dict=model.state_dict(), extra=Extra()), folder / 'unsafe.pt')
    torch.save([1.0, 2.0], folder / 'list.pt')
    return folder


def argv(zoo, out, **options):
    "The command's arguments: the plain model with its weights on CIFAR-10 under SS, 16 images, to `out`, changed by `options` (None: left out)."
    base = {'--model': f"{zoo}/tinynet.py:plain", '--weights': str(zoo / 'weights.pt'), '--dataset': 'cifar10', '--attacks': 'ss',
            '--images': '16', '--out': out}
    return [a for k, v in {**base, **{f"--{k}": v for k, v in options.items()}}.items() if v is not None for a in (k, str(v))]


def run(args, capsys) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_every_attack_is_reported(zoo, tmp_path, capsys):
    "All attacks at their report settings, on the model that normalises itself: each in [0, 1], Table 1's no higher than clean."
    out = tmp_path / 'report.json'
    code, text, err = run(argv(zoo, out, model=f"{zoo}/tinynet.py:normalising", attacks=None), capsys)
    assert code == 0, err
    r = read_record(out, 'evaluation')
    assert r['format'] == 'fgr-evaluation-1' and r['attack'] == 'report' and r['provenance']['packages']['torch']
    assert r['config']['source'] == f"{zoo}/tinynet.py:normalising"
    assert r['config']['weights_sha256'] == hashlib.sha256((zoo / 'weights.pt').read_bytes()).hexdigest()
    assert list(r['results']) == ['clean', *REPORT_ATTACKS]
    assert r['accuracy'] >= 0.2, "the check below needs a model that learnt something"
    for a, e in r['results'].items():
        assert 0 <= e['accuracy'] <= 1 and 0 <= e['standard_error'] <= 0.5 and e['images'] == 16, a
        if a in TABLE1: assert e['accuracy'] <= r['accuracy'], a
        assert any(line.split()[:1] == [a] for line in text.splitlines()), a       # a row of the printed table
    assert r['results']['ms']['queries_per_image'] == 21 and [c['epsilon'] for c in r['ms_curve']] == [0.005, 0.01, 0.02]
    assert [c['check'].split(':')[0] for c in r['sanity']] == ['stronger attacks find more', 'no gradient masking', 'MS falls as ε grows', 'a large budget (MS at ε 0.1) leaves about none']
    assert text.splitlines()[-2].startswith('sanity: ') and text.splitlines()[-1] == f"report: {out}"


def test_mean_and_std_give_the_report_of_a_model_that_normalises_itself(zoo, tmp_path, capsys):
    inside, outside, raw = tmp_path / 'inside.json', tmp_path / 'outside.json', tmp_path / 'raw.json'
    assert run(argv(zoo, inside, model=f"{zoo}/tinynet.py:normalising", attacks='ss,ms', images=32), capsys)[0] == 0
    assert run(argv(zoo, outside, attacks='ss,ms', images=32, mean=MEAN, std=STD), capsys)[0] == 0
    assert run(argv(zoo, raw, attacks='clean', images=32), capsys)[0] == 0                  # the same weights, not normalised
    a, b = read_record(inside, 'evaluation'), read_record(outside, 'evaluation')
    assert b['config']['mean'] == [float(m) for m in MEAN.split(',')] and a['config']['mean'] is None
    for name in ('clean', 'ss', 'ms'):
        assert {k: v for k, v in a['results'][name].items() if k != 'seconds'} == {k: v for k, v in b['results'][name].items() if k != 'seconds'}
    assert a['ms_curve'] == b['ms_curve'] and a['sanity'] == b['sanity']
    assert read_record(raw, 'evaluation')['accuracy'] != a['accuracy']                      # so the normalisation mattered


BAD = [('module missing', dict(model='no_such_package_for_fgr:plain'), 'cannot import no_such_package_for_fgr'),
       ('file missing', dict(model='{zoo}/absent.py:plain'), 'no file'),
       ('factory missing', dict(model='{zoo}/tinynet.py:absent'), "has no callable 'absent'"),
       ('factory fails', dict(model='{zoo}/tinynet.py:broken', weights=None), 'tinynet.py:broken() failed: RuntimeError: no weights here'),
       ('not a module', dict(model='{zoo}/tinynet.py:not_a_module'), 'returned a str, not a torch.nn.Module'),
       ('no logits', dict(model='{zoo}/tinynet.py:flat', weights=None), 'the model returns (2, 3072) for 2 cifar10 test images, not (batch, classes) = (2, 10)'),
       ('classes', dict(dataset='cifar100'), 'not (batch, classes) = (2, 100)'),
       ('architecture', dict(model='{zoo}/tinynet.py:wider'), 'are not those of'),
       ('dataset', dict(dataset='mnist'), "unknown dataset 'mnist'"),
       ('attack', dict(attacks='ss,pgd'), "unknown attacks ['pgd']"),
       ('weights missing', dict(weights='{zoo}/absent.pt'), 'cannot read the weights file'),
       ('weights not torch', dict(weights='{zoo}/notes.txt'), 'notes.txt is not a file written by torch.save'),
       ('weights need more', dict(weights='{zoo}/unsafe.pt'), 'holds objects other than tensors and plain data (here test_evaluate_any.Extra)'),
       ('no state dict', dict(weights='{zoo}/list.pt'), 'holds no state dict'),
       ('images', dict(images=0), '--images must be ≥ 1'),
       ('mean length', dict(mean='0.5,0.5', std='0.2,0.2'), 'mean must be 3 numbers'),
       ('std length', dict(mean='0.5,0.5,0.5', std='0.2,0.2,0.2,0.2'), 'std must be 3 positive numbers'),
       ('mean alone', dict(mean='0.5,0.5,0.5'), 'mean and std go together'),
       ('mean not numbers', dict(mean='a,b,c', std='1,1,1'), '--mean must be numbers')]


@pytest.mark.parametrize('case, options, message', BAD, ids=[c for c, _, _ in BAD])
def test_bad_input_is_refused_before_any_attack(zoo, tmp_path, capsys, monkeypatch, case, options, message):
    monkeypatch.setenv('FGR_RUNS', str(tmp_path / 'runs'))
    monkeypatch.setattr(fgr.evaluate, 'robust_accuracy', lambda *a, **kw: pytest.fail('an attack ran'))
    out = tmp_path / 'report.json'
    code, text, err = run(argv(zoo, out, **{k: v if v is None else str(v).format(zoo=zoo) for k, v in options.items()}), capsys)
    assert code == 2 and text == ''
    assert err.startswith('error: ') and err.count('\n') == 1 and message in err, err
    assert not out.exists() and not (tmp_path / 'runs').exists()


def test_a_report_asked_again_is_read_back(zoo, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv('FGR_RUNS', str(tmp_path / 'runs'))
    args = argv(zoo, None, attacks='ss,ms')                                    # written where reports go by default
    code, first, _ = run(args, capsys)
    path, = (tmp_path / 'runs' / 'reports').glob('cifar10-*.json')
    stored = read_record(path, 'evaluation')
    monkeypatch.setattr(fgr.evaluate, 'robust_accuracy', lambda *a, **kw: pytest.fail('an attack ran'))
    code, again, _ = run(args, capsys)
    assert code == 0 and again == first and read_record(path, 'evaluation') == stored
    with pytest.raises(pytest.fail.Exception, match='an attack ran'): main(argv(zoo, None, attacks='ss,ms', images=8))
    model, _ = load_classifier(f"{zoo}/tinynet.py:plain")                      # no weights given: its state's hash tells models apart
    monkeypatch.undo(); monkeypatch.setenv('FGR_RUNS', str(tmp_path / 'runs'))
    r = report(model, 'cifar10', ['ss'], images=8, out=tmp_path / 'state.json')
    assert report(model, 'cifar10', ['ss'], images=8, out=tmp_path / 'state.json') == r
    with torch.no_grad(): model.body[0].bias.add_(1.0)
    assert report(model, 'cifar10', ['ss'], images=8, out=tmp_path / 'other.json')['key'] != r['key']
    with pytest.raises(InputError, match='holds a report of another model or request'):     # an earlier report is never overwritten
        report(model, 'cifar10', ['ss'], images=8, out=tmp_path / 'state.json')
    assert read_record(tmp_path / 'state.json', 'evaluation') == r


def test_the_command_runs_as_a_program(zoo, tmp_path):
    out = tmp_path / 'report.json'
    cmd = [sys.executable, '-m', 'fgr.evaluate', *argv(zoo, out, attacks='ss,ms', images=8, mean=MEAN, std=STD)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1].split() == ['attack', 'accuracy', '±', 's.e.', 'queries/image', 'seconds']
    assert [l.split()[0] for l in lines[2:5]] == ['clean', 'ss', 'ms'] and lines[-1] == f"report: {out}"
    assert read_record(out, 'evaluation')['results']['ms']['images'] == 8

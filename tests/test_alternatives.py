"""benchmarks/*.py: the alternatives that were measured and dropped still compute what they claim (the two-pass
objectives the library's penalty gradient, the finite difference the exact one in the float64 limit), and each
committed result is a readable `alternative` record whose verdict its own figures support."""
import importlib.util
from pathlib import Path

import pytest
import torch

from conftest import cifar_or_skip
from fgr.data import to_float
from fgr.models import make_model
from fgr.naive import cosine, penalty_gradient
from fgr.records import read_record
from fgr.train import DEFENSES, TrainConfig

BENCHMARKS = Path(__file__).resolve().parents[1] / 'benchmarks'
SCRIPTS = ('two_pass', 'finite_difference', 'forward_over_reverse', 'compile_probe')


def script(name):
    spec = importlib.util.spec_from_file_location(f'benchmarks_{name}', BENCHMARKS / f'{name}.py')
    module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def batch64():
    torch.set_num_threads(1)
    x, y = cifar_or_skip('cifar10', 'test', n=8, seed=3)
    torch.manual_seed(0)
    return to_float(x).double(), y, make_model('vgg11', 10, 1/16).double().train()


@pytest.mark.parametrize('convention', ['authors', 'per_sample'])
def test_two_pass_objectives_have_the_library_penalty_gradient_and_loss(batch64, convention):
    x, y, net = batch64
    two_pass = script('two_pass')
    for defense, objective in two_pass.TWO_PASS.items():
        cfg = TrainConfig(defense=defense, width=1/16, convention=convention).resolved()
        exact = penalty_gradient(DEFENSES[defense], net, x, y, cfg)
        assert ((penalty_gradient(objective, net, x, y, cfg) - exact).norm() / exact.norm()).item() < 1e-10, defense
        torch.testing.assert_close(objective(net, x, y, cfg).loss, DEFENSES[defense](net, x, y, cfg).loss, atol=0, rtol=1e-12)


@pytest.mark.parametrize('convention', ['authors', 'per_sample'])
def test_finite_difference_formula_is_exact_in_the_limit(batch64, convention):
    "In float64 a step of 1e-9 flips no ReLU, and the finite difference is the exact penalty gradient; its loss is FGR's."
    x, y, net = batch64
    fd_module = script('finite_difference')
    cfg = TrainConfig(defense='fgr', width=1/16, convention=convention).resolved()
    fd = lambda *a: fd_module.fgr_finite_difference(*a, step=1e-9)
    exact = penalty_gradient(DEFENSES['fgr'], net, x, y, cfg)
    assert cosine(penalty_gradient(fd, net, x, y, cfg), exact) > 1 - 1e-6
    assert cosine(penalty_gradient(lambda *a: fd_module.fgr_finite_difference(*a, step=1e-2), net, x, y, cfg), exact) < 1 - 1e-6   # a large step is not
    torch.testing.assert_close(fd(net, x, y, cfg).loss, DEFENSES['fgr'](net, x, y, cfg).loss, atol=0, rtol=1e-12)


@pytest.mark.parametrize('name', SCRIPTS)
def test_each_committed_result_is_an_alternative_record_with_a_supported_verdict(name):
    record = read_record(BENCHMARKS / f'{name}.json', 'alternative')
    assert record['name'] == f'{name}.py' and record['verdict'].startswith('dropped')
    r = record['results']
    if name == 'finite_difference':
        assert r['best_cosine'] < r['min_cosine'] or max(r['step_ratio'].values()) > r['max_step_ratio']
    elif name == 'compile_probe':
        assert not r['ok'] or r['median_s'] >= r['eager_median_s']
    else:
        ratio = 'fgr_step_ratio' if name == 'two_pass' else 'step_ratio'
        assert min(a[ratio] for a in r['archs'].values()) >= 1


def test_torch_func_packing_computes_the_grouped_packs_gradients():
    assert script('packed_func').agreement() < 1e-10


@pytest.mark.parametrize('name', ['packed_training', 'packed_func', 'threads'])
def test_each_packing_record_supports_its_verdict(name):
    record = read_record(BENCHMARKS / f'{name}.json', 'alternative')
    r, verdict = record['results'], record['verdict']
    if name == 'packed_training':     # the experiments train one run at a time because packing does not pay here
        assert verdict.startswith('does not pay') and min(g['ratio'] for g in r['groups'].values()) <= 1.1
    elif name == 'packed_func':        # grouped convolutions are kept because torch.func is slower
        assert verdict.startswith('dropped') and min(r[d]['torch_func_over_grouped'] for d in ('standard', 'fgr')) >= 1
    else:                              # the grid's default: one-thread workers side by side
        side, packed = 'two runs side by side, 1 thread each', 'two runs packed, 2 threads'
        assert all(s[side] <= s[packed] for s in r['seconds'].values()) == verdict.startswith('two one-thread')

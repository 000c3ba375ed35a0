"""fgr.attacks: budgets, gradient-free means no gradients, the model left untouched, determinism, query counts and bad
input, on a small model trained briefly on real CIFAR-10.

How strong each attack is (Table 1's ordering against a random flow, OB's balancing parameter, GF well below clean) is
asserted on the reproduction page nbs/experiments/attacks.ipynb, which `make test` executes: it trains its own standard
model, so the tests do not train a second one for the same checks."""
import copy
import pytest
import torch
import torch.nn as nn
from conftest import cifar_test_images, trained_small_cnn
from fgr.warp import warp
from fgr.gradients import flow_gradient
from fgr.attacks import (single_step, multi_step, optimization_based, gradient_free, pgd_linf,
                         BestSuccessful, flow_smoothness, margin_loss)

FLOW_ATTACKS = {'SS': single_step, 'MS': multi_step, 'OB': optimization_based, 'GF': gradient_free}
ALL_ATTACKS = {**FLOW_ATTACKS, 'PGD': pgd_linf}
FAST = {'SS': {}, 'MS': {'iterations': 3}, 'OB': {'iterations': 3}, 'GF': {'iterations': 2, 'population': 3},
        'PGD': {'iterations': 3}}   # cheap settings for tests that are not about strength


pytestmark = pytest.mark.usefixtures('one_thread')   # conftest: its small models run fastest on one thread


@pytest.fixture(scope='module')
def model(one_thread):
    "A model that classifies some images: `small_cnn` trained for 2 epochs on 2,000 images."
    return trained_small_cnn(2000, epochs=2)


@pytest.fixture(scope='module')
def data(): return cifar_test_images(100)


def correctly_classified(model, data, n):
    "The first `n` images (and labels) that the model gets right: the ones an attack has work to do on."
    x, y = data
    with torch.no_grad(): keep = (model(x).argmax(1) == y).nonzero()[:n, 0]
    return x[keep], y[keep]


def test_budgets_ranges_and_success(model, data):
    x, y = data
    runs = [single_step(model, x, y), multi_step(model, x, y), multi_step(model, x, y, random_start=True, step_size=0.004),
            multi_step(model, x, y, epsilon=0.03, iterations=5)]
    for r, eps in zip(runs, (0.01, 0.01, 0.01, 0.03)):
        assert r.flow.shape == (100, 32, 32, 2) and r.flow.abs().max() <= eps + 1e-7
    runs += [optimization_based(model, x[:20], y[:20], iterations=10), gradient_free(model, x[:20], y[:20], iterations=5)]
    pgd = pgd_linf(model, x, y)
    assert pgd.flow is None and (pgd.x_adv - x).abs().max() <= 8 / 255 + 1e-6
    for r in runs + [pgd]:
        assert r.x_adv.min() >= 0 and r.x_adv.max() <= 1 and r.success.dtype == torch.bool
        with torch.no_grad(): assert torch.equal(r.success, model(r.x_adv).argmax(1) != y[:len(r.x_adv)])
        if r.flow is not None: torch.testing.assert_close(r.x_adv, warp(x[:len(r.x_adv)], r.flow).clamp(0, 1))


class Spy(nn.Module):
    "Wraps a model and records, for every call, whether gradients were enabled and how many images it saw."
    def __init__(self, net): super().__init__(); self.net, self.calls = net, []
    def forward(self, x):
        self.calls.append((torch.is_grad_enabled() or x.requires_grad, len(x)))
        return self.net(x)


def test_gradient_free_never_touches_gradients(model, data):
    spy = Spy(model)
    gradient_free(spy, *(t[:6] for t in data), iterations=3, population=5)
    assert spy.calls and not any(grad for grad, _ in spy.calls)
    spy.calls.clear()
    multi_step(spy, *(t[:6] for t in data), iterations=2)   # the spy does see gradients where there are some
    assert sum(grad for grad, _ in spy.calls) == 2


@pytest.mark.parametrize('name', list(ALL_ATTACKS))
def test_queries_count_forward_passes_per_image(model, data, name):
    spy, x, y = Spy(model), data[0][:6], data[1][:6]
    r = ALL_ATTACKS[name](spy, x, y, **FAST[name])
    assert r.queries == sum(n for _, n in spy.calls) / len(x)
    assert r.queries == {'SS': 2, 'MS': 4, 'OB': 4, 'GF': 1 + 2 * 3 + 1, 'PGD': 4}[name]


@pytest.mark.parametrize('name', list(ALL_ATTACKS))
def test_attacks_leave_the_model_untouched(model, data, name):
    net = copy.deepcopy(model).train()
    net[1].eval()                                   # a caller's mixed modes are kept too
    net[-1].bias.requires_grad_(False)
    for i, p in enumerate(net.parameters()): p.grad = torch.full_like(p, float(i)) if i % 2 else None
    state, grads = copy.deepcopy(net.state_dict()), [None if p.grad is None else p.grad.clone() for p in net.parameters()]
    modes, flags = [m.training for m in net.modules()], [p.requires_grad for p in net.parameters()]
    r = ALL_ATTACKS[name](net, *(t[:8] for t in data), **FAST[name])
    assert [m.training for m in net.modules()] == modes and [p.requires_grad for p in net.parameters()] == flags
    for k, t in net.state_dict().items(): assert torch.equal(t, state[k]), k    # incl. BatchNorm running statistics
    for p, g in zip(net.parameters(), grads): assert (p.grad is None) if g is None else torch.equal(p.grad, g)
    assert r.x_adv.grad_fn is None and not r.x_adv.requires_grad
    assert r.flow is None or (r.flow.grad_fn is None and not r.flow.requires_grad)


def test_model_mode_restored_after_an_error(model, data):
    net = copy.deepcopy(model).train()
    with pytest.raises(ValueError, match='labels must lie in'): multi_step(net, data[0][:4], data[1][:4] + 10)
    assert all(m.training for m in net.modules()) and all(p.requires_grad for p in net.parameters())


@pytest.mark.parametrize('name, settings', [('MS', {'random_start': True}), ('PGD', {}), ('GF', {'iterations': 5, 'population': 10})])
def test_deterministic_given_a_seed_or_generator(model, data, name, settings):
    attack, (x, y) = ALL_ATTACKS[name], correctly_classified(model, data, 8)
    run = lambda seed: attack(model, x, y, seed=seed, **{**FAST[name], **settings}).x_adv
    assert torch.equal(run(1), run(1)) and not torch.equal(run(1), run(2))
    assert torch.equal(run(torch.Generator().manual_seed(1)), run(1))
    g = torch.Generator().manual_seed(1)
    assert not torch.equal(run(g), run(g))                  # a generator's state advances between calls


def test_single_step_is_epsilon_sign_of_the_flow_gradient(model, data):
    # In float64 the step off the kink is 1e-12 pixel; where the closed-form gradient is nonzero, the signs agree.
    net, x, y = copy.deepcopy(model).double(), data[0][:20].double(), data[1][:20]
    gv = flow_gradient(net, x, y, 'sum')
    v = single_step(net, x, y, epsilon=0.02).flow
    assert ((v == 0.02 * gv.sign())[gv != 0]).float().mean() > 0.9999


def test_multi_step_one_step_of_epsilon_is_single_step(model, data):
    assert torch.equal(multi_step(model, *data, iterations=1, step_size=0.01).flow, single_step(model, *data).flow)


def test_multi_step_default_step_is_epsilon_over_k(model, data):
    # With α = ε/K and no random start every coordinate moves by ±α per step: the flow is a multiple of α.
    v = multi_step(model, *(t[:10] for t in data), epsilon=0.01, iterations=4).flow
    k = v / 0.0025
    assert torch.allclose(k, k.round(), atol=1e-4) and v.abs().max() <= 0.01 + 1e-7


def test_flow_smoothness_against_a_loop():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(2, 4, 5, 2, generator=g, dtype=torch.float64)
    H, W, xi = 4, 5, 1e-8
    expected = torch.zeros(2, dtype=torch.float64)
    for b in range(2):
        for i in range(H):
            for j in range(W):
                for di, dj in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                    q = v[b, min(max(i + di, 0), H - 1), min(max(j + dj, 0), W - 1)]   # replicated border
                    expected[b] += ((v[b, i, j] - q).pow(2).sum() + xi).sqrt()
    torch.testing.assert_close(flow_smoothness(v, xi), expected / (H * W))


def test_margin_loss_against_sorting():
    z = torch.randn(50, 10, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (50,), generator=torch.Generator().manual_seed(1))
    others = torch.stack([torch.cat([z[i, :y[i]], z[i, y[i] + 1:]]).max() for i in range(50)])
    torch.testing.assert_close(margin_loss(z, y), (z[torch.arange(50), y] - others).clamp(min=0))
    assert torch.equal(margin_loss(z, y) == 0, z.argmax(1) != y)


def test_best_successful_keeps_the_smoothest_success():
    v = torch.zeros(3, 2, 2, 2)
    best = BestSuccessful(v)
    best.update(v + 1, torch.tensor([5., 5., 5.]), torch.tensor([True, False, True]))
    best.update(v + 2, torch.tensor([3., 1., 9.]), torch.tensor([True, False, True]))
    out = best.result(v + 7)
    assert out[0].eq(2).all() and out[1].eq(7).all() and out[2].eq(1).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_attacks_run_on_a_gpu(model, data):
    net, x, y = copy.deepcopy(model).cuda(), data[0][:16].cuda(), data[1][:16].cuda()
    for name, attack in ALL_ATTACKS.items():
        r = attack(net, x, y, **FAST[name])
        assert r.x_adv.device == x.device and r.success.device == x.device
    cpu_seeded = multi_step(net, x, y, random_start=True, seed=torch.Generator().manual_seed(0), iterations=2)
    assert cpu_seeded.x_adv.is_cuda


@pytest.mark.parametrize('name', list(ALL_ATTACKS))
def test_bad_input(model, data, name):
    attack, x, y = ALL_ATTACKS[name], data[0][:4], data[1][:4]
    run = lambda **kw: attack(model, kw.pop('x', x), kw.pop('y', y), **{**FAST[name], **kw})
    with pytest.raises(ValueError, match=r'labels must have shape \(B,\) = \(4,\)'): run(y=y[:3])
    with pytest.raises(ValueError, match=r'labels must lie in \[0, 9\]'): run(y=y + 10)
    with pytest.raises(ValueError, match=r'must hold images in \[0, 1\]'): run(x=x * 2 - 0.5)
    if name in ('SS', 'MS', 'PGD'):
        with pytest.raises(ValueError, match='epsilon .* must be ≥ 0'): run(epsilon=-0.01)
    if name != 'SS':
        with pytest.raises(ValueError, match='iterations .* must be ≥ 1'): run(iterations=0)
    if name in ('OB', 'GF'):
        with pytest.raises(ValueError, match='c .* must be ≥ 0'): run(c=-1.)


# --- beyond the paper's attacks (fgr.deformations, importable from fgr.attacks) -------------------------------------

def _seeded_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.Softplus(), torch.nn.AdaptiveAvgPool2d(4),
                               torch.nn.Flatten(), torch.nn.Linear(96, 10)).double().eval()


def test_the_new_attacks_are_importable_from_fgr_attacks():
    from fgr import attacks, deformations
    from fgr.attacks import strong_flow, stadv_protocol, rotation_translation, adef, elastic
    assert (strong_flow, stadv_protocol, rotation_translation, adef, elastic) == tuple(getattr(deformations, n) for n in attacks.BEYOND_THE_PAPER)
    with pytest.raises(AttributeError, match='no attribute'): attacks.stadv


def test_the_strong_attack_is_at_least_as_strong_as_ms_and_stays_in_the_ball():
    from fgr.attacks import multi_step, strong_flow
    net, g = _seeded_net(), torch.Generator().manual_seed(1)
    x = torch.rand(24, 3, 16, 16, dtype=torch.float64, generator=g)
    y = net(x).argmax(1)
    for eps in (0.005, 0.02):
        s, m = strong_flow(net, x, y, epsilon=eps, iterations=10, restarts=1), multi_step(net, x, y, epsilon=eps)
        assert s.success.sum() >= m.success.sum() and s.flow.abs().max() <= eps + 1e-12
    assert strong_flow(net, x, y, epsilon=0.0, iterations=3, restarts=1).success.sum() == 0      # no budget, no success


@pytest.mark.parametrize('attack, kwargs, message', [
    ('strong_flow', dict(epsilon=-0.1), 'epsilon'), ('strong_flow', dict(restarts=0), 'restarts must be'),
    ('rotation_translation', dict(rotations=0), 'grid cannot be empty'), ('rotation_translation', dict(max_translation_px=-1.), 'max_translation_px'),
    ('adef', dict(sigma_px=0.), 'sigma_px'), ('adef', dict(max_norm_px=-1.), 'max_norm_px'),
    ('elastic', dict(draws=0), 'draws must be'), ('elastic', dict(max_displacement_px=-2.), 'max_displacement_px'),
])
def test_the_new_attacks_refuse_bad_settings(attack, kwargs, message):
    from fgr import deformations
    net, x = _seeded_net(), torch.rand(2, 3, 16, 16, dtype=torch.float64)
    with pytest.raises(ValueError, match=message): getattr(deformations, attack)(net, x, net(x).argmax(1), **kwargs)
    with pytest.raises(ValueError, match='shape'): getattr(deformations, attack)(net, x[0], net(x).argmax(1))

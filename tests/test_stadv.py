"""fgr.deformations.stadv_protocol, MultiRobustBench's StAdv: the flow stays in its L∞ ball, the images are valid, the
accuracy it leaves falls with the bound, and on a briefly trained model it sits between a random flow of the same size
and the project's strong attack (`strong_flow`) at ε = bound; its first step is Adam's on the margin; bad settings are
refused with a ValueError that names them."""
import copy
import pytest
import torch
from conftest import cifar_test_images, trained_small_cnn
from fgr.attacks import flow_smoothness, right_of_kink
from fgr.deformations import stadv_protocol, strong_flow
from fgr.warp import warp

BOUNDS = (0.01, 0.05)   # two of the leaderboard's twenty bounds, grid units


pytestmark = pytest.mark.usefixtures('one_thread')   # conftest: its small models run fastest on one thread


@pytest.fixture(scope='module')
def model(one_thread):
    "`small_cnn` trained for 4 epochs on 5,000 images: about half the test images right."
    return trained_small_cnn(5000, epochs=4)


@pytest.fixture(scope='module')
def data(): return cifar_test_images(200)


@pytest.fixture(scope='module')
def runs(model, data):
    "The protocol at each bound, as the leaderboard runs it."
    return {b: stadv_protocol(model, *data, bound=b) for b in BOUNDS}


def accuracy(model, x, y):
    with torch.no_grad(): return (model(x).argmax(1) == y).float().mean().item()


@pytest.mark.parametrize('bound', BOUNDS)
def test_flow_in_its_ball_and_images_valid(model, data, runs, bound):
    x, y = data
    r = runs[bound]
    assert r.flow.shape == (len(x), 32, 32, 2) and r.flow.abs().max() <= bound + 1e-7
    assert torch.isfinite(r.x_adv).all() and r.x_adv.min() >= 0 and r.x_adv.max() <= 1
    torch.testing.assert_close(r.x_adv, warp(x, r.flow).clamp(0, 1))
    with torch.no_grad(): assert torch.equal(r.success, model(r.x_adv).argmax(1) != y)
    assert r.queries == 21                                      # 20 gradient steps and the final check


def test_accuracy_falls_with_the_bound(model, data, runs):
    clean, small, large = accuracy(model, *data), 1 - runs[0.01].success.float().mean().item(), 1 - runs[0.05].success.float().mean().item()
    assert 0.3 < clean and large <= small <= clean and small < clean


@pytest.mark.parametrize('bound', BOUNDS)
def test_between_a_random_flow_and_the_strong_attack(model, data, runs, bound):
    x, y = data
    noise = bound * (2 * torch.rand(len(x), 32, 32, 2, generator=torch.Generator().manual_seed(0)) - 1)
    strong = strong_flow(model, x, y, epsilon=bound, iterations=20, restarts=1)
    acc_strong, acc_stadv = 1 - strong.success.float().mean().item(), 1 - runs[bound].success.float().mean().item()
    se = (acc_stadv * (1 - acc_stadv) / len(x)) ** 0.5 + 1 / len(x)   # training differs a little between machines: within noise
    assert acc_strong <= acc_stadv + 2 * se and acc_stadv < accuracy(model, warp(x, noise), y)


def test_first_step_is_adams_on_the_margin(model, data):
    "One iteration from the identity: Adam moves each component by lr · g/(|g| + 1e-8), down the margin's gradient g."
    x, y = data
    v = torch.zeros(len(x), 32, 32, 2, requires_grad=True)
    z = model(warp(x, right_of_kink(x, v)))
    margin = z.gather(1, y[:, None])[:, 0] - z.scatter(1, y[:, None], -float('inf')).amax(1)
    g, = torch.autograd.grad(margin.sum(), v)
    one = stadv_protocol(model, x, y, bound=0.01, iterations=1, step_size=0.004)
    big = g.abs() > 1e-4
    assert big.float().mean() > 0.5
    torch.testing.assert_close(one.flow[big], -0.004 * g.sign()[big], atol=1e-6, rtol=0)
    assert one.flow.abs().max() <= 0.004 + 1e-7 and one.queries == 2


def test_deterministic_and_model_untouched(model, data):
    x, y = data[0][:20], data[1][:20]
    net = copy.deepcopy(model).train()
    before = copy.deepcopy(net.state_dict())
    a, b = stadv_protocol(net, x, y, bound=0.05), stadv_protocol(net, x, y, bound=0.05)
    assert torch.equal(a.flow, b.flow) and torch.equal(a.success, b.success)
    assert net.training and all(p.requires_grad for p in net.parameters())
    for k, t in net.state_dict().items(): assert torch.equal(t, before[k]), k


def test_intended_penalty_smooths_the_flow(model, data, runs):
    x, y = data[0][:50], data[1][:50]
    smooth = stadv_protocol(model, x, y, bound=0.05, smoothness=True)
    assert smooth.flow.abs().max() <= 0.05 + 1e-7
    assert flow_smoothness(smooth.flow).mean() < 0.5 * flow_smoothness(runs[0.05].flow[:50]).mean()


@pytest.mark.parametrize('settings, message', [
    (dict(bound=-0.01), 'bound'), (dict(bound=0.), 'bound'), (dict(bound=float('nan')), 'bound'), (dict(bound='0.01'), 'bound'),
    (dict(bound=True), 'bound'), (dict(iterations=0), 'iterations'), (dict(iterations=2.5), 'iterations'),
    (dict(iterations=2), r'bound/\(iterations − 2\)'), (dict(iterations=True), 'iterations'), (dict(step_size=0.), 'step_size'),
    (dict(step_size='0.001'), 'step_size'), (dict(smoothness=1), 'smoothness')])
def test_bad_settings_are_refused(model, data, settings, message):
    with pytest.raises(ValueError, match=message): stadv_protocol(model, data[0][:2], data[1][:2], **settings)

"""The method core: warp (Eq. 4), flow and input gradients, the IGR/FGR penalties, and their error cases."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fgr.warp import warp, warp_reference, identity_flow, pixels_to_flow, flow_to_pixels
from fgr.gradients import flow_gradient, flow_gradient_autograd, input_gradient
from fgr.penalties import fgr_penalty, igr_penalty, lambda_per_sample, loss_and_input_gradient
from fgr.theory import warp_jacobian_norm
from fgr.train import TrainConfig, igr, fgr


def small_net(dtype=torch.float64):
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Softplus(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                         nn.Linear(96, 10)).to(dtype).eval()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.rand(5, 3, 16, 16, dtype=torch.float64, generator=g), torch.tensor([0, 1, 2, 3, 9])


def test_budget_in_pixels_at_cifar_size():
    assert torch.allclose(flow_to_pixels(torch.tensor([0.01, 0.01]), 32, 32), torch.tensor([0.155, 0.155]))


def test_warp_matches_eq4_on_random_flows(batch):
    x, _ = batch
    for size_px in (0.3, 2.5, 40.0):      # inside a cell, across cells, far past the border
        v = pixels_to_flow(size_px * (2 * torch.rand(5, 16, 16, 2, dtype=torch.float64) - 1), 16, 16)
        assert (warp(x, v) - warp_reference(x, v)).abs().max() < 1e-12


def test_identity_flow_returns_image_and_is_differentiable(batch):
    x, _ = batch
    v0 = identity_flow(x).requires_grad_()
    out = warp(x, v0)
    assert (out - x).abs().max() < 1e-12
    (g,) = torch.autograd.grad(out.pow(2).sum(), v0)
    assert g.abs().sum() > 0


def test_border_replicates_edge_pixels(batch):
    x, _ = batch
    far_left = pixels_to_flow(torch.tensor([-100.0, 0.0], dtype=torch.float64), 16, 16).expand(5, 16, 16, 2)
    assert (warp(x, far_left) - x[..., :1]).abs().max() < 1e-12


def test_warp_second_derivatives_gradgradcheck():
    x = torch.rand(1, 1, 4, 5, dtype=torch.float64, requires_grad=True)
    v = pixels_to_flow(0.1 + 0.8 * torch.rand(1, 4, 5, 2, dtype=torch.float64), 4, 5).requires_grad_()
    assert torch.autograd.gradgradcheck(warp, (x, v))


def test_flow_gradient_closed_form_matches_autograd(batch):
    x, y = batch
    net = small_net()
    for reduction in ('mean', 'sum'):
        closed = flow_gradient(net, x, y, reduction)
        assert closed.shape == (5, 16, 16, 2)
        assert (closed - flow_gradient_autograd(net, x, y, reduction)).abs().max() < 1e-10


def test_flow_gradient_is_chain_rule_of_input_gradient(batch):
    # Eq. 12-13: |∇v0 L| <= |∇x L| * ||∇v0 I||, per image, with the operator norm of the warp's Jacobian
    x, y = batch
    net = small_net()
    gv = flow_gradient(net, x, y, 'sum').flatten(1).norm(dim=1)
    gx = input_gradient(net, x, y, 'sum').flatten(1).norm(dim=1)
    assert (gv <= warp_jacobian_norm(x) * gx * (1 + 1e-12)).all()


def test_penalty_conventions_and_lambda_conversion(batch):
    x, y = batch
    net = small_net()
    for penalty in (fgr_penalty, igr_penalty):
        assert torch.allclose(penalty(net, x, y, 'per_sample'), 25 * penalty(net, x, y), rtol=1e-12)
    assert lambda_per_sample(700, 128) == pytest.approx(700 / 128 ** 2)


def test_penalties_have_parameter_gradients(batch):
    x, y = batch
    net = small_net()
    for penalty in (fgr_penalty, igr_penalty):
        net.zero_grad()
        penalty(net, x, y).backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_fgr_penalty_matches_independent_autograd_value(batch):
    x, y = batch
    net = small_net()
    reference = flow_gradient_autograd(net, x, y).pow(2).sum() / len(x)
    assert torch.allclose(fgr_penalty(net, x, y), reference, rtol=1e-9)



@pytest.mark.parametrize('defense', ['igr', 'fgr'])
@pytest.mark.parametrize('convention', ['authors', 'per_sample'])
@pytest.mark.parametrize('training', [False, True], ids=['eval', 'train'])
def test_one_pass_objective_has_the_two_pass_parameter_gradients(batch, defense, convention, training):
    # fgr.train's igr/fgr take the cross-entropy and the penalty's gradient from one forward pass; the reference
    # evaluates the model twice, once for the cross-entropy and once inside input_gradient / flow_gradient (chapter 2).
    # With BatchNorm in training mode both passes normalise with the same batch statistics, so the gradients agree too.
    x, y = batch
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.Softplus(), nn.AdaptiveAvgPool2d(4),
                        nn.Flatten(), nn.Linear(96, 10)).double().train(training)
    lam = {'igr': 5000.0, 'fgr': 700.0}[defense]
    lam = lam if convention == 'authors' else lambda_per_sample(lam, len(x))
    params = list(net.parameters())
    out = {'igr': igr, 'fgr': fgr}[defense](net, x, y, TrainConfig(defense=defense, convention=convention, lam=lam).resolved())
    one_pass = torch.cat([g.flatten() for g in torch.autograd.grad(out.loss, params)])
    if training: assert net[1].num_batches_tracked.item() == 1          # BatchNorm's running statistics: one update
    gradient = {'igr': input_gradient, 'fgr': flow_gradient}[defense]
    g = gradient(net, x, y, 'mean' if convention == 'authors' else 'sum', create_graph=True)
    penalty = g.pow(2).flatten(1).sum(1).mean()
    reference = F.cross_entropy(net(x), y) + lam * penalty
    two_passes = torch.cat([g.flatten() for g in torch.autograd.grad(reference, params, retain_graph=True)])
    penalty_part = torch.cat([g.flatten() for g in torch.autograd.grad(lam * penalty, params)])
    assert penalty_part.norm() > 0.01 * two_passes.norm()                # the penalty matters in the comparison
    assert (one_pass - two_passes).abs().max() <= 1e-12 * two_passes.abs().max()
    assert torch.allclose(out.penalty, penalty.detach(), rtol=1e-12, atol=0)


def test_loss_and_input_gradient_is_one_pass_of_the_convention(batch):
    x, y = batch
    net = small_net()
    logits, loss, gx = loss_and_input_gradient(net, x, y)
    assert torch.allclose(logits, net(x), rtol=1e-12) and torch.allclose(loss, F.cross_entropy(net(x), y), rtol=1e-12)
    assert torch.allclose(gx, input_gradient(net, x, y, 'mean'), rtol=1e-12, atol=0)
    assert torch.allclose(loss_and_input_gradient(net, x, y, 'per_sample')[2], input_gradient(net, x, y, 'sum'), rtol=1e-12, atol=0)
    assert gx.requires_grad and not loss_and_input_gradient(net, x, y, create_graph=False)[2].requires_grad

# --- bad input: each names the problem -------------------------------------------------------------------------

@pytest.mark.parametrize('make_flow, message', [
    (lambda x: torch.zeros(5, 16, 16), 'shape (B, H, W, 2)'),
    (lambda x: torch.zeros(4, 16, 16, 2, dtype=x.dtype), 'shape (B, H, W, 2)'),
    (lambda x: torch.zeros(5, 16, 16, 2, dtype=torch.float32), 'dtype'),
    (lambda x: torch.full((5, 16, 16, 2), float('nan'), dtype=x.dtype), 'NaN or inf'),
    (lambda x: torch.full((5, 16, 16, 2), float('inf'), dtype=x.dtype), 'NaN or inf'),
    (lambda x: torch.zeros(5, 16, 16, 2, dtype=x.dtype, device='meta'), 'is on meta'),
    (lambda x: [[0.0]], 'torch.Tensor'),
])
def test_bad_flows_are_rejected(batch, make_flow, message):
    x, _ = batch
    with pytest.raises((ValueError, TypeError), match=message.replace('(', r'\(').replace(')', r'\)')):
        warp(x, make_flow(x))


@pytest.mark.parametrize('make_images, message', [
    (lambda x: x * 2, r'\[0, 1\]'),
    (lambda x: x - 0.5, r'\[0, 1\]'),
    (lambda x: x.clone().index_fill_(0, torch.tensor([1]), float('nan')), 'NaN or inf'),
    (lambda x: x[0], r'\(B, C, H, W\)'),
    (lambda x: (x * 255).to(torch.uint8), 'floating'),
])
def test_bad_images_are_rejected(batch, make_images, message):
    x, y = batch
    bad = make_images(x)
    for call in (lambda: warp(bad, torch.zeros(5, 16, 16, 2, dtype=x.dtype)), lambda: identity_flow(bad),
                 lambda: flow_gradient(small_net(), bad, y), lambda: fgr_penalty(small_net(), bad, y),
                 lambda: igr_penalty(small_net(), bad, y)):
        with pytest.raises((ValueError, TypeError), match=message):
            call()


@pytest.mark.parametrize('model, message', [
    (nn.Identity(), r'logits of shape \(B, classes\)'),
    (lambda x: x.flatten(1)[:2], r'logits of shape \(B, classes\)'),
    (lambda x: (x.mean(), x.mean()), r'logits of shape \(B, classes\)'),
])
def test_model_with_wrong_output_is_rejected(batch, model, message):
    x, y = batch
    for fn in (flow_gradient, input_gradient, fgr_penalty, igr_penalty):
        with pytest.raises(ValueError, match=message):
            fn(model, x, y)


@pytest.mark.parametrize('labels, message', [
    (torch.tensor([0, 1, 2]), r'shape \(B,\)'),
    (torch.tensor([0, 1, 2, 3, 10]), r'\[0, 9\]'),
    (torch.tensor([0, 1, 2, 3, -1]), r'\[0, 9\]'),
    (torch.zeros(5), 'integer'),
])
def test_bad_labels_are_rejected(batch, labels, message):
    x, _ = batch
    with pytest.raises((ValueError, TypeError), match=message):
        fgr_penalty(small_net(), x, labels)


def test_bad_convention_and_reduction_are_rejected(batch):
    x, y = batch
    with pytest.raises(ValueError, match='convention'):
        fgr_penalty(small_net(), x, y, 'batch')
    with pytest.raises(ValueError, match="'mean' or 'sum'"):
        flow_gradient(small_net(), x, y, 'none')


def test_the_public_names_of_the_penalties_module(batch):
    "The README's import line, and its one-forward objective against the two-forward sum, in float64."
    from fgr.penalties import flow_gradient, input_gradient, fgr_penalty, igr_penalty, penalized_loss
    from fgr import gradients
    assert flow_gradient is gradients.flow_gradient and input_gradient is gradients.input_gradient
    x, y = batch
    net = small_net()
    for name, penalty, lam in (('fgr', fgr_penalty, 700.), ('igr', igr_penalty, 5000.)):
        out = penalized_loss(net, x, y, lam=lam, penalty=name)
        reference = torch.nn.functional.cross_entropy(net(x), y) + lam * penalty(net, x, y)
        assert torch.allclose(out.loss, reference, rtol=1e-12, atol=0)
        assert torch.allclose(out.cross_entropy + lam * out.penalty, out.loss, rtol=1e-14, atol=0)

"""fgr.models: the CIFAR VGG-11 and ResNet-18, their width multiplier, and their errors."""
import pytest
import torch
import torch.nn.functional as F
from fgr.models import vgg11, resnet18, make_model, ARCHITECTURES, scaled


def n_params(m): return sum(p.numel() for p in m.parameters())


def test_paper_sizes_at_width_one():
    # The well-known sizes of the CIFAR variants (e.g. kuangliu/pytorch-cifar) for ten classes.
    assert n_params(vgg11()) == 9_231_114
    assert n_params(resnet18()) == 11_173_962
    # A new head for 100 classes adds 90 rows of 512 weights + 1 bias.
    assert n_params(vgg11(100)) - n_params(vgg11(10)) == 90 * 513


@pytest.mark.parametrize('arch', list(ARCHITECTURES))
def test_width_scales_channels_and_cost(arch):
    full, quarter = make_model(arch, 10, 1.0), make_model(arch, 10, 0.25)
    # Parameters of conv layers scale with width², so a quarter width has about 1/16 of them.
    assert 1 / 20 < n_params(quarter) / n_params(full) < 1 / 12
    widths = [m.out_channels for m in quarter.modules() if isinstance(m, torch.nn.Conv2d)]
    assert max(widths) == 128 and min(widths) == 16


@pytest.mark.parametrize('arch', list(ARCHITECTURES))
@pytest.mark.parametrize('num_classes', [10, 100])
def test_forward_shapes_and_double_backward(arch, num_classes):
    torch.manual_seed(0)
    net = make_model(arch, num_classes, 1 / 8)
    x, y = torch.rand(3, 3, 32, 32, requires_grad=True), torch.randint(0, num_classes, (3,))
    logits = net(x)
    assert logits.shape == (3, num_classes) and torch.isfinite(logits).all()
    gx = torch.autograd.grad(F.cross_entropy(logits, y), x, create_graph=True)[0]
    grads = torch.autograd.grad(gx.pow(2).sum(), list(net.parameters()))
    assert all(g.abs().sum() > 0 for g in grads)


def test_seeded_initialisation_is_reproducible():
    torch.manual_seed(3); a = resnet18(10, 1 / 16)
    torch.manual_seed(3); b = resnet18(10, 1 / 16)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_eval_mode_treats_images_independently():
    torch.manual_seed(0)
    net, x = vgg11(10, 1 / 4).eval(), torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x)[2:3], net(x[2:3]), atol=1e-5, rtol=1e-5)


def test_scaled_never_below_one_channel():
    assert scaled(64, 1 / 1000) == 1 and scaled(512, 0.25) == 128


@pytest.mark.parametrize('call, match', [
    (lambda: make_model('vgg16'), 'valid architectures: vgg11, resnet18'),
    (lambda: vgg11(num_classes=1), 'at least 2'),
    (lambda: resnet18(num_classes=10.0), 'integer'),
    (lambda: vgg11(width=0), '> 0'),
    (lambda: resnet18(width=float('inf')), '> 0'),
    (lambda: vgg11(width='1'), 'number'),
])
def test_bad_arguments(call, match):
    with pytest.raises((ValueError, TypeError), match=match): call()

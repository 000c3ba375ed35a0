"""Shared test fixtures. Real-data tests find CIFAR the way `fgr.data` does; without it they skip, except under CI."""
import os
import pytest
import torch

from fgr.data import find_data_root, load_cifar, random_subset

ON_CI = os.environ.get('CI', '').lower() in ('1', 'true', 'yes')


def cifar_or_skip(name='cifar10', split='train', n=None, seed=0):
    "A fixed random subset of real CIFAR (uint8 images, labels); skip if no offline source exists (fail under CI=true)."
    kind, path = find_data_root(name, split)
    if kind == 'download':
        msg = f"no offline {name} found (looked beside the repository and in $FGR_DATA); tests that need real data cannot run"
        if ON_CI: pytest.fail(msg + " — under CI missing data is a failure")
        pytest.skip(msg)
    return random_subset(*load_cifar(name, split), n, seed)


def tiny_record_or_skip(path):
    "`path`, a record the tiny book build writes to the runs directory; skip if it is missing (fail under CI=true)."
    if not path.exists():
        msg = f"no {path.name} in the runs directory: build the tiny book first (make book-build PROFILE=tiny; make test does)"
        if ON_CI: pytest.fail(msg)
        pytest.skip(msg)
    return path


def trained_small_cnn(n:int, epochs:int):
    "`fgr.models.small_cnn` trained with Adam for `epochs` on `n` real CIFAR-10 training images, seeded (skips without data)."
    from fgr.data import to_float
    from fgr.models import train_small_cnn
    x, y = cifar_or_skip('cifar10', 'train', n=n, seed=0)
    return train_small_cnn(to_float(x), y, epochs=epochs)


def cifar_test_images(n:int):
    "`n` real CIFAR-10 test images as floats in [0, 1] and their labels, a fixed subset (skips without data)."
    from fgr.data import to_float
    x, y = cifar_or_skip('cifar10', 'test', n=n, seed=1)
    return to_float(x), y


@pytest.fixture(scope='module')
def one_thread():
    "For a module whose models are small: they run fastest on one thread, and much faster than on two when other work shares the CPU."
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

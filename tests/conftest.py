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


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

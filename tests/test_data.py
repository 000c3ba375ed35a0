"""fgr.data: finding CIFAR, reading and caching it, the fixed random subsets, and on-tensor augmentation."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import fgr.data as data
from fgr.data import augment, find_data_root, load_cifar, random_subset, to_float
from conftest import cifar_or_skip


def make_tree(root, classes, per_class=2, size=32):
    for c in classes:
        (root / 'cifar10' / 'test' / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((size, size, 3), i * 40, np.uint8)).save(root / 'cifar10' / 'test' / c / f'{i}.png')


def test_real_cifar10_test_set_is_complete_and_balanced():
    x, y = cifar_or_skip('cifar10', 'test')
    assert x.shape == (10000, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert torch.bincount(y).tolist() == [1000] * 10


def test_real_cifar100_train_subset():
    x, y = cifar_or_skip('cifar100', 'train', n=500)
    assert x.shape == (500, 3, 32, 32) and 0 <= y.min() and y.max() <= 99


def test_explicit_root_reads_folder_tree_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv('FGR_CACHE', str(tmp_path / 'cache'))
    make_tree(tmp_path / 'data', data.CIFAR10_CLASSES)
    x, y = load_cifar('cifar10', 'test', root=tmp_path / 'data')
    assert x.shape == (20, 3, 32, 32) and y.tolist() == [i // 2 for i in range(20)]
    assert x[1].max() == 40
    monkeypatch.setattr(data, '_read_folder', lambda *a: pytest.fail('second load decoded the images again'))
    x2, y2 = load_cifar('cifar10', 'test', root=tmp_path / 'data')
    assert torch.equal(x, x2) and torch.equal(y, y2)


def test_environment_variable_is_a_source(tmp_path, monkeypatch):
    monkeypatch.setenv('FGR_CACHE', str(tmp_path / 'cache'))
    make_tree(tmp_path / 'env', data.CIFAR10_CLASSES, per_class=1)
    monkeypatch.setenv('FGR_DATA', str(tmp_path / 'env'))
    assert find_data_root('cifar10', 'test') == ('folder', tmp_path / 'env' / 'cifar10' / 'test')
    assert len(load_cifar('cifar10', 'test')[0]) == 10


def test_torchvision_layout_is_recognised(tmp_path):
    (tmp_path / 'cifar-10-batches-py').mkdir()
    assert find_data_root('cifar10', 'train', root=tmp_path) == ('torchvision', tmp_path)


def test_root_without_cifar_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv('FGR_CACHE', str(tmp_path / 'cache'))
    with pytest.raises(ValueError, match='does not hold cifar10'):
        load_cifar('cifar10', 'test', root=tmp_path)
    make_tree(tmp_path, ['cat', 'dog', 'frog'])
    with pytest.raises(ValueError, match='expected 10 class folders, found 3'):
        load_cifar('cifar10', 'test', root=tmp_path)
    assert not (tmp_path / 'cache').exists() or not any((tmp_path / 'cache').iterdir())


def test_wrong_image_size_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv('FGR_CACHE', str(tmp_path / 'cache'))
    make_tree(tmp_path, data.CIFAR10_CLASSES, per_class=1, size=28)
    with pytest.raises(ValueError, match='not a 32×32 RGB'):
        load_cifar('cifar10', 'test', root=tmp_path)


@pytest.mark.parametrize('name, split, message', [('mnist', 'train', 'cifar10, cifar100'), ('cifar10', 'valid', 'train, test')])
def test_unknown_dataset_or_split(name, split, message):
    with pytest.raises(ValueError, match=message):
        load_cifar(name, split)


def test_random_subset_is_fixed_and_mixes_classes():
    x = torch.arange(1000).view(1000, 1, 1, 1)
    y = torch.arange(1000) // 100                       # sorted by class, like the data on disk
    a, b = random_subset(x, y, 100, seed=3), random_subset(x, y, 100, seed=3)
    assert torch.equal(a[0], b[0]) and len(torch.unique(a[1])) == 10
    assert not torch.equal(random_subset(x, y, 100, seed=4)[0], a[0])
    with pytest.raises(ValueError, match='n must be'):
        random_subset(x, y, 1001)


def test_augment_matches_direct_crop_and_flip():
    x = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
    out = augment(x, torch.Generator().manual_seed(5))
    oy, ox, flip = torch.randint(0, 9, (3, 32), generator=torch.Generator().manual_seed(5))
    for i in range(32):
        ref = F.pad(x[i], (4, 4, 4, 4))[:, oy[i]:oy[i] + 32, ox[i]:ox[i] + 32]
        assert torch.equal(out[i], ref.flip(-1) if flip[i] % 2 else ref)
    assert torch.equal(augment(to_float(x), torch.Generator().manual_seed(5)), to_float(out))


def test_to_float_range_and_type_check():
    x = torch.tensor([0, 128, 255], dtype=torch.uint8).view(1, 1, 1, 3)
    assert torch.allclose(to_float(x), torch.tensor([0.0, 128 / 255, 1.0]).view(1, 1, 1, 3))
    with pytest.raises(TypeError, match='uint8'):
        to_float(x.float())

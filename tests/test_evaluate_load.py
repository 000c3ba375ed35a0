"""fgr.evaluate.load_model reads checkpoints with weights_only=True: the trainer's own load and give the trained model's
logits; one that holds any other object is refused with a one-line ValueError naming the file, and nothing in it runs."""
from pathlib import Path
import pytest
import torch

import fgr.train
from conftest import cifar_or_skip
from fgr.data import PIPELINES, to_float
from fgr.evaluate import load_model
from fgr.train import TrainConfig, train


def test_trained_checkpoint_loads_with_its_logits(tmp_path, monkeypatch):
    x, _ = cifar_or_skip('cifar10', 'test', n=32)
    built, make = [], fgr.train.make_model
    monkeypatch.setattr(fgr.train, 'make_model', lambda *a, **kw: built.append(make(*a, **kw)) or built[-1])   # keep the trained model
    record = train(TrainConfig(width=1 / 16, epochs=1, train_limit=256, test_limit=64, runs_dir=str(tmp_path), progress=False))
    trained, = built
    assert torch.load(record['checkpoint'], map_location='cpu', weights_only=True)['config_hash'] == record['config_hash']
    loaded = load_model(record)
    assert not loaded.training
    x = PIPELINES[record['config']['pipeline'] or 'paper'][1](to_float(x))
    with torch.no_grad(): expected, got = trained.eval()(x), loaded(x)
    assert torch.equal(got, expected)


def touch(path):
    "What unpickling a `Trap` would call: here it only creates a file, but it could be any code."
    Path(path).touch()


class Trap:
    "An object of a class defined here, whose unpickling would call `touch(path)`."
    def __init__(self, path): self.path = str(path)
    def __reduce__(self): return (touch, (self.path,))


class Plain:
    "An object of a class defined here, with the default pickling (its class is named in the file)."
    def __init__(self): self.value = 1


@pytest.mark.parametrize('obj, named', [('trap', 'test_evaluate_load.touch'), ('plain', 'test_evaluate_load.Plain')])
def test_checkpoint_with_other_objects_is_refused(tmp_path, obj, named):
    ran = tmp_path / 'ran'
    ckpt = tmp_path / 'checkpoint.pt'
    record = dict(config=dict(arch='vgg11', dataset='cifar10', width=1 / 16), config_hash='0' * 64, checkpoint=str(ckpt))
    torch.save(dict(config_hash=record['config_hash'], model={}, extra=Trap(ran) if obj == 'trap' else Plain()), ckpt)
    with pytest.raises(ValueError) as info: load_model(record)
    message = str(info.value)
    assert '\n' not in message and str(ckpt) in message and named in message
    assert 'holds objects other than tensors and plain data' in message and 'could run code when loaded' in message
    assert info.value.__cause__ is None and info.value.__suppress_context__      # not torch's long UnpicklingError too
    assert not ran.exists()                                                    # refused before anything in it ran
    if obj == 'trap':                                                          # the trap is real: an unsafe load would run it
        torch.load(ckpt, weights_only=False)
        assert ran.exists()

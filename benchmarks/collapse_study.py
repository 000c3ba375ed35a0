"""Why do the penalised models collapse at CPU scale? One factor at a time, each run a training record.

Every run is `fgr.train.train` on CIFAR-10 with VGG-11; the base is the calibration issue's CPU setting (width 1/8,
8,000 training images, 6 epochs, learning rate ÷ 10 after epochs 4 and 5, 1,000 test images) and each entry of
`STUDY` changes one or two settings of it. Each finished run's record is copied to
benchmarks/training/collapse-w0.125/<name>.json, with the study's name and factor added; the book's page
"Why the penalised models collapse" reads those records. Runs go to $FGR_RUNS (else .cache/collapse-runs) and are
reused when rerun.

    .venv/bin/python benchmarks/collapse_study.py            # every run not yet recorded, one thread (about an hour)
    .venv/bin/python benchmarks/collapse_study.py NAME ...   # just these
"""
import json, os, sys
from pathlib import Path
import torch
from fgr.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / 'benchmarks' / 'training' / 'collapse-w0.125'
BASE = dict(dataset='cifar10', arch='vgg11', width=0.125, epochs=6, milestones=(4, 5), train_limit=8000, test_limit=1000,
            device='cpu', progress=False)
LONG = dict(epochs=18, milestones=(12, 15))
FULL_WIDTH = dict(width=1.0, epochs=2, milestones=())
STUDY = {   # name: (factor, settings changed from BASE)
    'standard-lr0.1': ('learning rate', dict(defense='standard', lr=0.1)),
    'standard-lr0.01': ('learning rate', dict(defense='standard', lr=0.01)),
    'fgr700-lr0.1': ('learning rate', dict(defense='fgr', lam=700, lr=0.1)),
    'fgr700-lr0.01': ('learning rate', dict(defense='fgr', lam=700, lr=0.01)),
    'igr5000-lr0.1': ('learning rate', dict(defense='igr', lam=5000, lr=0.1)),
    'igr5000-lr0.01': ('learning rate', dict(defense='igr', lam=5000, lr=0.01)),
    'fgr700-lr0.1-warmup2': ('λ warm-up', dict(defense='fgr', lam=700, lr=0.1, lam_warmup_epochs=2)),
    'fgr700-lr0.01-warmup2': ('λ warm-up', dict(defense='fgr', lam=700, lr=0.01, lam_warmup_epochs=2)),
    'igr5000-lr0.01-warmup2': ('λ warm-up', dict(defense='igr', lam=5000, lr=0.01, lam_warmup_epochs=2)),
    'fgr100-lr0.01': ('λ', dict(defense='fgr', lam=100, lr=0.01)),
    'fgr300-lr0.01': ('λ', dict(defense='fgr', lam=300, lr=0.01)),
    'fgr700-lr0.01-random-start': ('random start', dict(defense='fgr', lam=700, lr=0.01, random_flow_std=0.01)),
    'at-lr0.1': ('defences without λ', dict(defense='at', lr=0.1)),
    'at-lr0.01': ('defences without λ', dict(defense='at', lr=0.01)),
    'adt-lr0.01': ('defences without λ', dict(defense='adt', lr=0.01)),
    'standard-lr0.01-authors-pipeline': ('data pipeline', dict(defense='standard', lr=0.01, pipeline='authors_code')),
    'fgr700-lr0.01-authors-pipeline': ('data pipeline', dict(defense='fgr', lam=700, lr=0.01, pipeline='authors_code')),
    'standard-lr0.01-25k': ('training images', dict(defense='standard', lr=0.01, train_limit=25000)),
    'fgr700-lr0.01-25k': ('training images', dict(defense='fgr', lam=700, lr=0.01, train_limit=25000)),
    'standard-lr0.01-18ep': ('epochs', dict(defense='standard', lr=0.01, **LONG)),
    'fgr700-lr0.01-18ep': ('epochs', dict(defense='fgr', lam=700, lr=0.01, **LONG)),
    'standard-lr0.01-w0.25': ('width', dict(defense='standard', lr=0.01, width=0.25)),
    'fgr700-lr0.01-w0.25': ('width', dict(defense='fgr', lam=700, lr=0.01, width=0.25)),
    'standard-lr0.1-w1': ('width', dict(defense='standard', lr=0.1, **FULL_WIDTH)),
    'standard-lr0.01-w1': ('width', dict(defense='standard', lr=0.01, **FULL_WIDTH)),
    'fgr700-lr0.01-w1': ('width', dict(defense='fgr', lam=700, lr=0.01, **FULL_WIDTH)),
    'standard-lr0.1-w1-25k': ('width', dict(defense='standard', lr=0.1, train_limit=25000, **FULL_WIDTH)),
}


def run(name: str) -> dict:
    "Train (or reuse) the study's run `name` and write its record, with the study's name and factor, to OUT."
    factor, changes = STUDY[name]
    runs = os.environ.get('FGR_RUNS') or str(ROOT / '.cache' / 'collapse-runs')
    record = train(TrainConfig(**{**BASE, **changes, 'runs_dir': runs}))
    record['study'] = dict(name=name, factor=factor, changes=changes, order=list(STUDY).index(name))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f'{name}.json').write_text(json.dumps(record, indent=1))
    return record


if __name__ == '__main__':
    torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', 1)))
    names = sys.argv[1:] or [n for n in STUDY if not (OUT / f'{n}.json').exists()]
    unknown = [n for n in names if n not in STUDY]
    if unknown: sys.exit(f"unknown study runs {unknown}; valid: {', '.join(STUDY)}")
    for name in names:
        r = run(name)
        print(f"{name}: test accuracy {r['metrics']['test_accuracy']:.3f}, first-epoch loss {r['metrics']['history'][0]['loss']:.3f}, "
              f"flow-gradient norm {r['metrics']['test_flow_gradient_norm']:.3g}", flush=True)

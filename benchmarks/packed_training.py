"""Many models as one: `fgr.packed_train.train_packed` against the same runs trained one after another with
`fgr.train.train`, on real CIFAR-10, one CPU thread.

Two groups of six width-1/8 VGG-11 runs: the six recipes of Table 1 (Standard, AT, IGR, ADT, FGR, FGR+ADT, each at the
CPU profile's λ), and an FGR λ sweep (three λ, two seeds each), the shape of the calibration runs. Each group is trained
both ways from scratch in fresh folders, the two ways alternating, twice; what is timed is the whole call, records and
final evaluations included, so the figure is what a user of the trainer waits. The ratio is the median time one after
another over the median time packed.

Run: `.venv/bin/python benchmarks/packed_training.py` (about ten minutes on one core of the 2-core CPU). It writes
`packed_training.json` beside itself, an `alternative` record (fgr.records), whose verdict says whether packing pays.
"""
import contextlib, io, statistics, tempfile, time
from fgr.bench_record import run_alternative
from fgr.packed_train import train_packed
from fgr.train import TrainConfig, train

RECIPES = [dict(defense='standard'), dict(defense='at'), dict(defense='igr', lam=500.), dict(defense='adt'),
           dict(defense='fgr', lam=70.), dict(defense='fgr_adt', lam=70.)]
SWEEP = [dict(defense='fgr', lam=lam, seed=seed) for lam in (7., 70., 700.) for seed in (0, 1)]
GROUPS = {'six recipes': RECIPES, 'FGR λ sweep': SWEEP}

def timed(fn) -> float:
    "Seconds `fn()` takes, its printing swallowed."
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()): fn()
    return time.perf_counter() - start

def measure(images:int=2048, epochs:int=1, reps:int=2, width:float=1/8) -> tuple[dict, str]:
    "Seconds of each group packed and one after another (alternating, `reps` times each); their ratios and the verdict."
    base = dict(width=width, epochs=epochs, train_limit=images, test_limit=500, batch_size=128, device='cpu', progress=False)
    groups = {}
    for name, members in GROUPS.items():
        seconds = dict(packed=[], one_after_another=[])
        for rep in range(reps):
            for way in (('packed', 'one_after_another') if rep % 2 == 0 else ('one_after_another', 'packed')):
                runs = tempfile.mkdtemp(prefix=f'packed-{rep}-')
                cfgs = [TrainConfig(**base, **m, runs_dir=runs) for m in members]
                seconds[way].append(timed(lambda: train_packed(cfgs) if way == 'packed' else [train(c) for c in cfgs]))
        groups[name] = dict(members=members, seconds=seconds,
                            ratio=statistics.median(seconds['one_after_another']) / statistics.median(seconds['packed']))
    ratios = {n: g['ratio'] for n, g in groups.items()}
    results = dict(arch='vgg11', width=width, images=images, epochs=epochs, batch_size=128, reps=reps, threads=1, groups=groups)
    figures = '; '.join(f"{n} packed in {1 / r:.2f}× the time of one after another" for n, r in ratios.items())
    verdict = (f"{'pays' if min(ratios.values()) > 1.1 else 'does not pay'}: {figures} (six width-{width:g} VGG-11 runs each, "
               f"{epochs} epoch of {images} real CIFAR-10 images, one thread)")
    return results, verdict

if __name__ == '__main__': run_alternative(__file__, measure)

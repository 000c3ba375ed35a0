"""Threads on the 2-core CPU, with the packed trainer: how to spend two cores on two runs.

The protocol of the measurements the grid's defaults rest on (a width-1/8 VGG-11, 8,000 real CIFAR-10 training images,
two epochs, `python -m fgr.train`), for Standard and for FGR, each way in a fresh process and a fresh runs folder:

- one run with two threads, and with one thread;
- two runs (seeds 0 and 1) side by side, one thread each: what the grid's two local workers do;
- the same two runs packed into one network (`fgr.packed_train.train_packed`), with two threads and with one.

Never more threads than cores: the two side-by-side processes have one each. Each figure is the wall time of the whole
command, start-up included; the verdict compares the two ways of training two runs on two cores.

Run: `.venv/bin/python benchmarks/threads.py` (about five minutes, nothing else running). It writes `threads.json`
beside itself, an `alternative` record (fgr.records).
"""
import json, os, subprocess, sys, tempfile, time
from pathlib import Path
from fgr.bench_record import write_alternative

SETTINGS = ['--width', '0.125', '--epochs', '2', '--train_limit', '8000', '--test_limit', '500', '--device', 'cpu', '--no-progress']
PACK = """import sys, json
from fgr.packed_train import train_packed
from fgr.train import parse_config
train_packed([parse_config(json.loads(a)) for a in sys.argv[1:]])"""

def command(threads:int, argv:list[str], packed:list[list[str]]|None=None) -> subprocess.Popen:
    "`python -m fgr.train argv` (or, with `packed`, one `train_packed` of those argument lists) with `threads` compute threads."
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, '-c', PACK, *map(json.dumps, packed)] if packed else [sys.executable, '-m', 'fgr.train', *argv]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True)

def wall(*procs) -> float:
    "Seconds until every one of the started `procs` has finished successfully."
    start = time.perf_counter()
    for p in procs:
        _, err = p.communicate()
        if p.returncode: raise RuntimeError(f"a measured command failed: {err[-500:]}")
    return time.perf_counter() - start

def measure() -> tuple[dict, str]:
    results = {}
    for defense in ('standard', 'fgr'):
        run = lambda seed: ['--defense', defense, '--seed', str(seed), '--runs_dir', tempfile.mkdtemp(prefix='threads-'), *SETTINGS]
        r = results[defense] = {}
        r['one run, 2 threads'] = wall(command(2, run(0)))
        r['one run, 1 thread'] = wall(command(1, run(0)))
        r['two runs side by side, 1 thread each'] = wall(command(1, run(0)), command(1, run(1)))
        for threads in (2, 1): r[f'two runs packed, {threads} thread{"s" if threads > 1 else ""}'] = wall(command(threads, [], [run(0), run(1)]))
    best = {d: min(('two runs side by side, 1 thread each', 'two runs packed, 2 threads'), key=r.get) for d, r in results.items()}
    figures = '; '.join(f"{d}: two side by side {r['two runs side by side, 1 thread each']:.1f} s, packed with 2 threads {r['two runs packed, 2 threads']:.1f} s"
                        for d, r in results.items())
    side = all(b.startswith('two runs side by side') for b in best.values())
    verdict = f"{'two one-thread processes side by side stay the way' if side else 'packing is faster for some'}: {figures} (width-1/8 VGG-11, 8,000 images, 2 epochs)"
    return dict(settings=SETTINGS, cores=len(os.sched_getaffinity(0)), seconds=results), verdict

if __name__ == '__main__':
    results, verdict = measure()
    print(verdict)
    write_alternative(Path(__file__).with_suffix('.json'), Path(__file__).name, results, verdict)

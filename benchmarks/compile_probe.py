"""`torch.compile` of the model inside the library's FGR step: measured (it does not run) and dropped.

Compiling could fuse the element-wise work of batch normalisation's double backward pass, which is much of an FGR
step at small widths. But the penalty's parameter gradient is a double backward pass, and compiled graphs
(aot_autograd) do not support one in every version of torch. `compile_probe` runs the library's FGR step
(`fgr.step.optimizer_step` with `fgr.train.fgr`) with `torch.compile(model)` and records whether it runs, and if it
does, its median step time against the eager step's.

Run: `.venv/bin/python benchmarks/compile_probe.py [--device cuda]` (seconds when compiling fails at once; minutes
when it compiles). It writes `compile_probe.json` beside itself, an `alternative` record (fgr.records), for the CPU
and, with `--device cuda`, `compile_probe-cuda.json`.
"""
import argparse, statistics, time
from pathlib import Path
import torch
from fgr.bench import VARIANTS, bench_data, setup_variant, time_variants
from fgr.bench_record import write_alternative
from fgr.data import to_float
from fgr.step import optimizer_step
from fgr.train import DEFENSES

def _sync(device):
    if torch.device(device).type == 'cuda': torch.cuda.synchronize(device)

def compile_probe(arch:str, width:float, x:torch.Tensor, y:torch.Tensor, steps:int=5) -> dict:
    "Whether the library's FGR step runs with `torch.compile(model)`, and its median step time if it does."
    model, optimizer, cfg = setup_variant(VARIANTS['fgr'], arch, width, x.device)
    compiled, start = torch.compile(model), time.perf_counter()
    try:
        optimizer_step(compiled, optimizer, DEFENSES['fgr'], x, y, cfg); _sync(x.device)
        first = time.perf_counter() - start
        eager = time_variants(['fgr'], arch, width, x, y, reps=steps)['fgr']
        times = []
        for _ in range(steps):
            start = time.perf_counter(); optimizer_step(compiled, optimizer, DEFENSES['fgr'], x, y, cfg); _sync(x.device)
            times.append(time.perf_counter() - start)
        return dict(ok=True, compile_s=first, median_s=statistics.median(times), eager_median_s=statistics.median(eager))
    except Exception as e: return dict(ok=False, error=f"{type(e).__name__}: {str(e)[:300]}", seconds=time.perf_counter() - start)

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--device', default='cpu'); p.add_argument('--width', type=float, default=1.0)
    args = p.parse_args()
    torch.set_num_threads(1)
    images, labels, data = bench_data(128)
    x, y = to_float(images).to(args.device), labels.to(args.device)
    probe = compile_probe('vgg11', args.width, x, y)
    results = dict(device=args.device, arch='vgg11', width=args.width, batch_size=128, data=data, torch=torch.__version__, **probe)
    verdict = (f"dropped: it does not run ({probe['error']})" if not probe['ok'] else
               f"{'dropped' if probe['median_s'] >= probe['eager_median_s'] else 'faster'}: a compiled step takes "
               f"{probe['median_s'] / probe['eager_median_s']:.2f}× an eager one, after {probe['compile_s']:.0f} s of compiling")
    name = Path(__file__).stem + ('' if args.device == 'cpu' else f"-{torch.device(args.device).type}")
    write_alternative(Path(__file__).with_name(f'{name}.json'), Path(__file__).name, results, verdict, args.device)
    print(verdict)

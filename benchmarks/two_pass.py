"""One forward pass or two: IGR and FGR with the cross-entropy and the penalty from separate forward passes, measured
and dropped.

The penalty needs the input gradient of the batch's loss, so a forward pass of the batch; an objective that adds
`fgr_penalty` to a separately computed cross-entropy runs the network twice on the same batch, and the library's
objectives first did. Both passes give the same logits (batch normalisation uses the batch's statistics in training
mode), so `fgr.penalties.penalized_loss` takes both terms from one pass: the parameter gradients are the same (checked
here in float64, and in tests/test_alternatives.py), and batch normalisation's running statistics are updated once per
step instead of twice. This script measures what the second pass costs, in step time and peak memory.

Run: `.venv/bin/python benchmarks/two_pass.py` (a few minutes on two CPU cores, one thread). It writes `two_pass.json`
beside itself, an `alternative` record (fgr.records).
"""
import statistics
import torch
from fgr.bench import VARIANTS, Variant, bench_data, peak_memory, time_variants
from fgr.bench_record import run_alternative
from fgr.data import to_float
from fgr.experiments import get_profile
from fgr.models import make_model
from fgr.naive import penalty_gradient
from fgr.penalties import fgr_penalty, igr_penalty
from fgr.train import DEFENSES, Objective, TrainConfig, random_flow, standard

def igr_two_pass(model, x, y, cfg) -> Objective:
    "IGR (Eq. 5) as the cross-entropy of one forward pass plus `igr_penalty`, which runs a second one."
    out, penalty = standard(model, x, y, cfg), igr_penalty(model, x, y, cfg.convention)
    return Objective(out.loss + cfg.lam * penalty, penalty.detach(), out.logits)

def fgr_two_pass(model, x, y, cfg) -> Objective:
    "FGR (Eq. 11, closed form) as the cross-entropy of one forward pass plus `fgr_penalty`, which runs a second one."
    x = random_flow(x, cfg.random_flow_std)
    out, penalty = standard(model, x, y, cfg), fgr_penalty(model, x, y, cfg.convention)
    return Objective(out.loss + cfg.lam * penalty, penalty.detach(), out.logits)

TWO_PASS = {'igr': igr_two_pass, 'fgr': fgr_two_pass}

def agreement(x, y) -> dict:
    "Relative L2 difference of each two-pass objective's penalty gradient to the library's, in float64 (VGG-11 width 1/16)."
    torch.manual_seed(0)
    net, out = make_model('vgg11', 10, 1/16).double().train(), {}
    for defense, objective in TWO_PASS.items():
        cfg = TrainConfig(defense=defense, width=1/16).resolved()
        exact = penalty_gradient(DEFENSES[defense], net, x.double(), y, cfg)
        out[defense] = ((penalty_gradient(objective, net, x.double(), y, cfg) - exact).norm() / exact.norm()).item()
    return out

def measure(batch_size:int=128, reps:int=3) -> tuple[dict, str]:
    "Step time and peak memory of the two-pass objectives over the library's, both architectures at the mini width."
    width = get_profile('mini').width
    images, labels, data = bench_data(batch_size)
    x, y = to_float(images), labels
    variants = dict(VARIANTS, **{f'{d}_two_pass': Variant(d, o) for d, o in TWO_PASS.items()})
    names, per_arch = ['igr', 'igr_two_pass', 'fgr', 'fgr_two_pass'], {}
    for arch in ('vgg11', 'resnet18'):
        med = {n: statistics.median(t) for n, t in time_variants(names, arch, width, x, y, reps=reps, variants=variants).items()}
        mem = {n: peak_memory(n, arch, width, x, y, variants) for n in names}
        per_arch[arch] = dict(median_s=med, peak_bytes=mem, **{f'{d}_step_ratio': med[f'{d}_two_pass'] / med[d] for d in TWO_PASS},
                              **{f'{d}_memory_ratio': mem[f'{d}_two_pass'] / mem[d] for d in TWO_PASS})
    agree = agreement(x[:8], y[:8])
    results = dict(data=data, width=width, batch_size=batch_size, penalty_gradient_rel_error_float64=agree, archs=per_arch,
                   threads=torch.get_num_threads())
    steps = [r[f'{d}_step_ratio'] for r in per_arch.values() for d in TWO_PASS]
    memory = [r[f'{d}_memory_ratio'] for r in per_arch.values() for d in TWO_PASS]
    verdict = (f"{'dropped' if min(steps) >= 1 else 'not always slower'}: two passes take {min(steps):.2f}–{max(steps):.2f}× the one-pass step and {min(memory):.2f}–{max(memory):.2f}× its "
               f"peak memory (IGR and FGR, VGG-11 and ResNet-18 at width {width:g}), for the same penalty gradient "
               f"(relative difference ≤ {max(agree.values()):.0e} in float64)")
    return results, verdict

if __name__ == '__main__': run_alternative(__file__, measure)

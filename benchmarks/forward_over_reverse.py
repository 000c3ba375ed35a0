"""Forward-over-reverse FGR: an exact alternative to the double backward pass, measured and rejected.

The penalty's parameter gradient is ∇_θ P = (2/B) ∇_θ ⟨∇_x L, u⟩ with u = ∇_{v0}I · ∇_{v0}L held fixed, and ⟨∇_x L, u⟩
is the derivative of L along u: a forward-mode (dual-number) pass gives it, and one reverse pass through that pass gives
its parameter gradient, with no double backward. PyTorch's forward-mode rule for training-mode batch norm is not
differentiable in reverse through the batch statistics (the parameter gradient comes out wrong, cosine ≈ 0.4 to the
exact one), so the dual pass swaps in a batch norm written with elementary operations; with it the gradient is exact
(relative difference ~1e-14 in float64, checked below).

It runs two passes of its own and carries a tangent through every layer, more convolutions in all than the double
backward pass. Measured on the 2-core CPU, one thread, batch 128, at the mini width (1/8), interleaved as
`fgr.bench.time_variants`; the figures are in `forward_over_reverse.json` beside this script, an `alternative` record
(fgr.records), with the verdict drawn from them. Run: `.venv/bin/python benchmarks/forward_over_reverse.py` (about 2
minutes).
"""
import contextlib, statistics
import torch
import torch.nn.functional as F
import torch.autograd.forward_ad as fwAD
from fgr.bench import setup_variant, VARIANTS, Variant, time_variants, peak_memory
from fgr.bench_record import run_alternative
from fgr.naive import penalty_gradient
from fgr.train import DEFENSES, Objective
from fgr.penalties import loss_and_input_gradient, _mean_squared_norm
from fgr.gradients import forward_differences

_batch_norm = F.batch_norm

def _elementary_batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    "Training-mode batch norm from elementary operations, whose forward-mode derivative reverse mode can differentiate."
    if not training: return _batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
    var, mean = torch.var_mean(input, (0, 2, 3), correction=0, keepdim=True)
    with torch.no_grad():
        n = input.numel() / input.shape[1]
        running_mean.mul_(1 - momentum).add_(fwAD.unpack_dual(mean).primal.flatten(), alpha=momentum)
        running_var.mul_(1 - momentum).add_(fwAD.unpack_dual(var).primal.flatten() * n / (n - 1), alpha=momentum)
    return (input - mean) * (torch.rsqrt(var + eps) * weight[:, None, None]) + bias[:, None, None]

@contextlib.contextmanager
def elementary_batch_norm():
    F.batch_norm = _elementary_batch_norm
    try: yield
    finally: F.batch_norm = _batch_norm

def fgr_forward_over_reverse(model, x, y, cfg) -> Objective:
    "FGR (authors' convention) with ∇_θ P from a forward-mode pass along u and one reverse pass through it."
    _, _, gx = loss_and_input_gradient(model, x, y, cfg.convention, create_graph=False)
    d = forward_differences(x)
    g = (gx[..., None] * d).sum(1)                    # ∇_{v0} L
    u = (d * g[:, None]).sum(-1)                      # fixed direction in image space
    with fwAD.dual_level(), elementary_batch_norm():
        logits, dlogits = fwAD.unpack_dual(model(fwAD.make_dual(x, u)))
    loss = F.cross_entropy(logits, y)
    directional = ((F.softmax(logits, 1) - F.one_hot(y, logits.shape[1])) * dlogits).sum(1).mean()   # ⟨∇_x L, u⟩
    surrogate = 2 / len(x) * directional                                                              # its ∇_θ is ∇_θ P
    return Objective(loss + cfg.lam * (_mean_squared_norm(g) + surrogate - surrogate.detach()), _mean_squared_norm(g), logits)

def measure() -> tuple[dict, str]:
    "Exactness in float64 (width 1/16, random images) and step time and peak memory against FGR at width 1/8, both architectures."
    variants = dict(VARIANTS, fgr_forward_over_reverse=Variant('fgr', fgr_forward_over_reverse))
    results = dict(rel_error_float64={}, archs={}, width=1/8, batch_size=128, threads=torch.get_num_threads())
    for arch in ('vgg11', 'resnet18'):
        model, _, cfg = setup_variant(VARIANTS['fgr'], arch, 1/16, 'cpu')
        model = model.double()
        torch.manual_seed(1)
        x, y = torch.rand(8, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (8,))
        a, b = penalty_gradient(DEFENSES['fgr'], model, x, y, cfg), penalty_gradient(fgr_forward_over_reverse, model, x, y, cfg)
        results['rel_error_float64'][arch] = ((a - b).norm() / a.norm()).item()
    torch.manual_seed(0)
    x, y = torch.rand(128, 3, 32, 32), torch.randint(0, 10, (128,))
    for arch in ('vgg11', 'resnet18'):
        names = ['igr', 'fgr', 'fgr_forward_over_reverse', 'fgr_naive']
        med = {k: statistics.median(v) for k, v in time_variants(names, arch, 1/8, x, y, reps=5, variants=variants).items()}
        mem = {n: peak_memory(n, arch, 1/8, x, y, variants) for n in ('fgr', 'fgr_forward_over_reverse')}
        results['archs'][arch] = dict(median_s=med, peak_bytes=mem, step_ratio=med['fgr_forward_over_reverse'] / med['fgr'],
                                      memory_ratio=mem['fgr_forward_over_reverse'] / mem['fgr'])
    steps, memory = ([r[k] for r in results['archs'].values()] for k in ('step_ratio', 'memory_ratio'))
    verdict = (f"{'dropped' if min(steps) >= 1 else 'not always slower'}: exact (relative difference ≤ {max(results['rel_error_float64'].values()):.0e} "
               f"in float64), but its step takes {min(steps):.2f}–{max(steps):.2f}× the library's FGR step and {min(memory):.2f}–{max(memory):.2f}× "
               "its peak memory (VGG-11 and ResNet-18 at width 1/8)")
    return results, verdict

if __name__ == '__main__': run_alternative(__file__, measure)

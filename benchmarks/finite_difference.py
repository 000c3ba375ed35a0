"""A finite-difference penalty gradient: FGR without the double backward pass, measured and rejected.

Write g = ∇_{v0} L (B×H×W×2, from the batch-mean loss) and P = (1/B) Σ_i ‖g_i‖². Since g = Σ_c ∇_x L ⊙ ∇_{v0} I and
∇_{v0} I does not depend on the parameters θ,

    ∇_θ P = (2/B) (∂∇_x L/∂θ)ᵀ u = (2/B) d/dh ∇_θ L(x + h u) at h = 0,   u = ∇_{v0} I · g,

where x + h u is the image warped a step h along the flow gradient, to first order. A forward difference,
(2/(B h)) (∇_θ L(x + h u) − ∇_θ L(x)), needs one more forward and backward pass at the moved image instead of the
double backward pass, and ∇_θ L(x) is computed for the cross-entropy anyway. `fgr_finite_difference` does this with a
surrogate loss whose value is FGR's objective and whose gradient is the finite-difference one; `step` is the largest
change of a pixel intensity, h ‖u‖∞.

The formula is right: in float64 with a step of 1e-9 its gradient is the exact one (tests/test_alternatives.py). In
float32, at the size of a real training step, it is not reliably right at any step, because of the ReLU. The exact
double backward pass treats a ReLU's second derivative as zero, but a finite difference of ∇_θ L sees every unit whose
pre-activation changes sign between x and x + h u, each a finite jump. Their number shrinks in proportion to h while
the difference is divided by h, so their share does not vanish as h → 0; it disappears only once no unit flips at all,
which takes float64 and h ≈ 1e-9, far below float32's resolution. A training option must be right on every batch, so
it is judged by its best step's worst batch: it would be offered only if that cosine with the exact gradient reached
FD_MIN_COSINE and its step took at most FD_MAX_STEP_RATIO of an exact FGR step.

Run: `.venv/bin/python benchmarks/finite_difference.py` (a few minutes on two CPU cores, one thread). It writes
`finite_difference.json` beside itself, an `alternative` record (fgr.records).
"""
import statistics
import torch
import torch.nn.functional as F
from fgr.bench import VARIANTS, Variant, bench_data, setup_variant, time_variants
from fgr.bench_record import run_alternative
from fgr.data import to_float
from fgr.experiments import get_profile
from fgr.gradients import forward_differences, model_logits
from fgr.naive import cosine, penalty_gradient
from fgr.penalties import _mean_squared_norm, _reduction, loss_and_input_gradient
from fgr.train import DEFENSES, Objective

FD_STEP = 1e-5                                 # largest intensity change h·|u|∞ of the finite difference
FD_SWEEP = (1e-3, 1e-4, 1e-5, 1e-6)
FD_MAX_STEP_RATIO, FD_MIN_COSINE = 0.7, 0.99   # what it had to reach to be offered: its step time over exact FGR's, its gradient's cosine

def fgr_finite_difference(model, x, y, cfg, step:float=FD_STEP) -> Objective:
    "FGR with ∇_θ of the penalty by a forward difference of ∇_θ L between x and x + h·u, u = ∇_{v0}I·∇_{v0}L (no double backward)."
    logits, loss, gx = loss_and_input_gradient(model, x, y, cfg.convention, create_graph=False)
    d = forward_differences(x.detach())
    g = (gx[..., None] * d).sum(1)                                # ∇_{v0} L, (B, H, W, 2)
    u = (d * g[:, None]).sum(-1)                                  # the warp's first-order change along g, (B, C, H, W)
    h = step / u.abs().amax().clamp(min=torch.finfo(x.dtype).tiny)
    moved = F.cross_entropy(model_logits(model, x.detach() + h * u), y)
    scale = 1 if _reduction(cfg.convention) == 'mean' else len(x)
    fd = 2 * scale / (len(x) * h) * (moved - loss)                # its gradient ≈ ∇_θ P
    penalty = _mean_squared_norm(g)
    return Objective(loss + cfg.lam * (penalty + fd - fd.detach()), penalty, logits)

def fd_cosines(model, x, y, cfg, trials:int=3, steps=FD_SWEEP) -> dict:
    "Per step, the cosine similarity of the finite-difference penalty gradient to the exact one on each of `trials` parts of `x`."
    out = {s: [] for s in steps}
    for xb, yb in zip(x.chunk(trials), y.chunk(trials)):
        exact = penalty_gradient(DEFENSES['fgr'], model, xb, yb, cfg)
        for s in steps: out[s].append(cosine(penalty_gradient(lambda *a: fgr_finite_difference(*a, step=s), model, xb, yb, cfg), exact))
    return out

def measure(batch_size:int=128, trials:int=3, reps:int=3) -> tuple[dict, str]:
    "The cosines (VGG-11 at the mini width, `trials` batches of real training images) and the step time against exact FGR, for both architectures."
    width = get_profile('mini').width
    images, labels, data = bench_data(trials * batch_size)
    x, y = to_float(images), labels
    model, _, cfg = setup_variant(VARIANTS['fgr'], 'vgg11', width, 'cpu')
    cos = fd_cosines(model, x, y, cfg, trials)
    best = max(min(v) for v in cos.values())
    variants = dict(VARIANTS, fgr_fd=Variant('fgr', fgr_finite_difference))
    ratios = {}
    for arch in ('vgg11', 'resnet18'):
        t = time_variants(['fgr', 'fgr_fd'], arch, width, x[:batch_size], y[:batch_size], reps=reps, variants=variants)
        ratios[arch] = statistics.median(t['fgr_fd']) / statistics.median(t['fgr'])
    results = dict(data=data, width=width, batch_size=batch_size, trials=trials, cosine_by_step={str(k): v for k, v in cos.items()},
                   best_cosine=best, step_ratio=ratios, min_cosine=FD_MIN_COSINE, max_step_ratio=FD_MAX_STEP_RATIO, threads=torch.get_num_threads())
    offered = best >= FD_MIN_COSINE and max(ratios.values()) <= FD_MAX_STEP_RATIO
    verdict = (f"{'offered' if offered else 'dropped'}: its step takes {min(ratios.values()):.2f}–{max(ratios.values()):.2f}× an exact FGR step "
               f"(needed ≤ {FD_MAX_STEP_RATIO:g}), and its best step's worst-batch cosine with the exact penalty gradient is {best:.3f} "
               f"(needed ≥ {FD_MIN_COSINE:g})")
    return results, verdict

if __name__ == '__main__': run_alternative(__file__, measure)

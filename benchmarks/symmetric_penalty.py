"""Both sides of the kink: FGR's penalty on the right flow gradient alone, against the symmetric penalty on both one-sided
flow gradients (`penalized_loss(..., penalty='fgr_sym')`, chapter *The penalties*), measured for cost and effect.

FGR penalises the right derivative of the warp at v0 (forward differences), so it trains a model to be insensitive to
moves right and down; the theory chapter shows that the constant bounding a deformation in every direction is
√(‖∇⁺‖² + ‖∇⁻‖²). This script measures, at the `mini` width on one CPU thread:
- cost: the training step of each, interleaved rounds on one batch of 128 real images;
- effect: a VGG-11 trained with each (λ 700 warmed up over the first epoch, learning rate 0.01, 4 epochs of 8,000
  images, the trainer's own loop, `fgr.train.train_epoch`), then on 1,000 test images: clean accuracy, the mean norms
  of the right and left flow gradients, and MS at Table 1's budget.
Run: `.venv/bin/python benchmarks/symmetric_penalty.py` (about ten minutes on two CPU cores, one thread). It writes
`symmetric_penalty.json` beside itself, an `alternative` record (fgr.records).
"""
import statistics
import torch
from fgr.bench import VARIANTS, Variant, bench_data, time_variants
from fgr.bench_record import run_alternative
from fgr.data import load_cifar, random_subset, to_float
from fgr.evaluate import robust_accuracy
from fgr.experiments import get_profile
from fgr.gradients import flow_gradient_from_input_gradient, input_gradient
from fgr.models import make_model
from fgr.step import Stepper
from fgr.train import Objective, TrainConfig, _penalised, evaluate_accuracy, make_optimizer, random_flow, train_epoch

def fgr_sym(model, x, y, cfg) -> Objective:
    "FGR's objective with the symmetric penalty: cross-entropy + λ · ½(‖∇⁺_{v0} L‖² + ‖∇⁻_{v0} L‖²), from one forward pass."
    return _penalised(model, random_flow(x, cfg.random_flow_std), y, cfg, 'fgr_sym')

OBJECTIVES = {'fgr': VARIANTS['fgr'], 'fgr_sym': Variant('fgr', fgr_sym)}

def side_norms(model, x, y) -> dict:
    "Mean per-image norms of the right and left flow gradients on `x`."
    gx = input_gradient(model.eval(), x, y, 'sum')
    return {side: flow_gradient_from_input_gradient(gx, x, side).flatten(1).norm(dim=1).mean().item() for side in ('right', 'left')}

def trained(variant, width, x, y, epochs=4, lam=700.):
    "A VGG-11 of `width` trained with `variant`'s objective by the trainer's loop, λ warmed up over the first epoch."
    cfg = TrainConfig(defense='fgr', width=width, lam=lam, lr=0.01, epochs=epochs, milestones=(3,), lam_warmup_epochs=1, progress=False).resolved()
    torch.manual_seed(0)
    model = make_model('vgg11', 10, width)
    optimizer, scheduler = make_optimizer(model, cfg)
    step, generator = Stepper(model, optimizer, variant.objective), torch.Generator().manual_seed(0)
    for epoch in range(1, epochs + 1):
        train_epoch(model, optimizer, x, y, cfg, generator, epoch, step=step); scheduler.step()
    return model.eval()

def measure(batch_size:int=128, reps:int=5) -> tuple[dict, str]:
    width = get_profile('mini').width
    images, labels, data = bench_data(batch_size)
    times = time_variants(list(OBJECTIVES), 'vgg11', width, to_float(images), labels, reps=reps, variants=OBJECTIVES)
    median = {n: statistics.median(t) for n, t in times.items()}
    xtr, ytr = random_subset(*load_cifar('cifar10', 'train'), 8000, seed=0)
    xte, yte = random_subset(*load_cifar('cifar10', 'test'), 1000, seed=0)
    xtr, xte = to_float(xtr), to_float(xte)
    effect = {}
    for name, variant in OBJECTIVES.items():
        model = trained(variant, width, xtr, ytr)
        effect[name] = dict(clean=evaluate_accuracy(model, xte, yte), **{f'flow_gradient_norm_{s}': v for s, v in side_norms(model, xte, yte).items()},
                            ms=robust_accuracy(model, xte, yte, 'ms', epsilon=0.01, iterations=20)['accuracy'])
    results = dict(data=data, width=width, batch_size=batch_size, step_s=times, median_step_s=median,
                   step_ratio=median['fgr_sym'] / median['fgr'], effect=effect, test_images=len(xte), train_images=len(xtr))
    f, s = effect['fgr'], effect['fgr_sym']
    verdict = (f"an option, not the default: the symmetric penalty's step takes {results['step_ratio']:.2f}× FGR's; trained alike (λ 700, "
               f"4 epochs of 8,000 images, width {width:g}), FGR leaves the left flow gradient at {f['flow_gradient_norm_left'] / f['flow_gradient_norm_right']:.2f}× "
               f"its right one and the symmetric penalty at {s['flow_gradient_norm_left'] / s['flow_gradient_norm_right']:.2f}×; clean {f['clean']:.3f} vs "
               f"{s['clean']:.3f}, MS {f['ms']:.3f} vs {s['ms']:.3f} on {len(xte):,} test images (one seed each)")
    return results, verdict

if __name__ == '__main__': run_alternative(__file__, measure)

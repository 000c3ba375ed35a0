"""Packing by torch.func instead of grouped convolutions: the members' parameters stacked (`torch.func.stack_module_state`)
and the model mapped over them with `torch.func.vmap`, measured against `fgr.packed` and dropped where slower.

Both compute the same thing, K independent models on K batches; they differ in how PyTorch runs it. The step timed is
one SGD step of six width-1/8 VGG-11s (batches of 128 each): the Standard objective (cross-entropy) and FGR's
(cross-entropy + λ ‖∇_{v0} L‖², the input gradient differentiated again), each from one forward pass. The script also
checks that the torch.func step computes the grouped pack's parameter gradients (float64).

Run: `.venv/bin/python benchmarks/packed_func.py` (a minute or two, one thread). It writes `packed_func.json` beside
itself, an `alternative` record (fgr.records).
"""
import copy, statistics, time
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value, stack_module_state, vmap
from fgr.bench import bench_data
from fgr.bench_record import run_alternative
from fgr.data import to_float
from fgr.gradients import flow_gradient_from_input_gradient
from fgr.models import make_model
from fgr.packed import pack
from fgr.packed_train import packed_objective
from fgr.train import TrainConfig

def func_pack(models):
    "The members' parameters and buffers stacked (leaves that require grad), and a stateless copy of the architecture."
    params, buffers = stack_module_state(models)
    return params, buffers, copy.deepcopy(models[0]).to('meta')

def func_losses(params, buffers, base, x, y, lam:float, penalised:bool) -> torch.Tensor:
    "Each member's loss on its batch x[k], y[k] (K, B, ...): the cross-entropy, plus λ · FGR's penalty if `penalised`."
    def cross_entropy(xk, p, b, yk): return F.cross_entropy(functional_call(base, (p, b), (xk,)), yk)
    def one(p, b, xk, yk):
        if not penalised: return cross_entropy(xk, p, b, yk)
        gx, ce = grad_and_value(cross_entropy)(xk, p, b, yk)      # ∇_x from the same forward pass, differentiable in p
        return ce + lam * flow_gradient_from_input_gradient(gx, xk).pow(2).flatten(1).sum(1).mean()
    return vmap(one, randomness='different')(params, buffers, x, y)

def step_seconds(step, reps:int) -> list[float]:
    step()                                                           # warm-up
    out = []
    for _ in range(reps):
        start = time.perf_counter(); step(); out.append(time.perf_counter() - start)
    return out

def measure(k:int=6, batch_size:int=128, width:float=1/8, reps:int=5) -> tuple[dict, str]:
    images, labels, data = bench_data(k * batch_size)
    x, y = to_float(images), labels
    results, ratios = dict(data=data, k=k, batch_size=batch_size, width=width, arch='vgg11', threads=torch.get_num_threads()), {}
    for defense, lam in (('standard', 0.), ('fgr', 70.)):
        models = [make_model('vgg11', 10, width) for _ in range(k)]
        pm, cfgs = pack(models).train(), [TrainConfig(defense=defense, lam=lam or None, width=width).resolved()] * k
        grouped_opt = torch.optim.SGD(pm.parameters(), lr=0.01, momentum=0.9)
        def grouped():
            grouped_opt.zero_grad(); packed_objective(pm, x, y, cfgs).loss.backward(); grouped_opt.step()
        params, buffers, base = func_pack(models)
        func_opt = torch.optim.SGD(params.values(), lr=0.01, momentum=0.9)
        xs, ys = x.view(k, batch_size, *x.shape[1:]), y.view(k, batch_size)
        def functional():
            func_opt.zero_grad(); func_losses(params, buffers, base, xs, ys, lam, defense == 'fgr').sum().backward(); func_opt.step()
        try:
            times = dict(grouped=step_seconds(grouped, reps), torch_func=step_seconds(functional, reps))
        except Exception as e:                                       # an unsupported operation is a result too
            results[defense] = dict(error=f"{type(e).__name__}: {str(e)[:300]}"); continue
        med = {n: statistics.median(t) for n, t in times.items()}
        ratios[defense] = med['torch_func'] / med['grouped']
        results[defense] = dict(times_s=times, median_s=med, torch_func_over_grouped=ratios[defense])
    results['gradient_rel_error_float64'] = agreement()
    failed = [d for d in ('standard', 'fgr') if 'error' in results[d]]
    figures = '; '.join(f"{d}: {r:.2f}× the grouped step" for d, r in ratios.items()) + ''.join(f"; {d}: fails ({results[d]['error'][:80]})" for d in failed)
    keep = ratios and not failed and max(ratios.values()) < 1
    verdict = f"{'kept' if keep else 'dropped'}: torch.func takes {figures} ({k} width-{width:g} VGG-11s, batches of {batch_size}, one thread)"
    return results, verdict

def agreement(k:int=3, b:int=4) -> float:
    "Largest relative difference between the torch.func and the grouped pack's FGR parameter gradients, in float64."
    models = [make_model('vgg11', 10, 1/16).double() for _ in range(k)]
    x, y = torch.rand(k * b, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0)), torch.arange(k * b) % 10
    pm = pack(models).train()
    packed_objective(pm, x, y, [TrainConfig(defense='fgr', lam=70., width=1/16).resolved()] * k).loss.backward()
    params, buffers, base = func_pack(models)
    func_losses(params, buffers, base, x.view(k, b, 3, 32, 32), y.view(k, b), 70., True).sum().backward()
    grouped = {n[4:]: p.grad for n, p in pm.named_parameters()}
    as_stacked = lambda name, g: g if pm.how[name] == 'stack' else g.view(k, -1, *g.shape[1:])
    scale = max(g.abs().max() for g in grouped.values())          # relative to the largest entry: a bias before a batch norm has a ~0 gradient
    return max(((p.grad - as_stacked(n, grouped[n])).abs().max() / scale).item() for n, p in params.items())

if __name__ == '__main__': run_alternative(__file__, measure)

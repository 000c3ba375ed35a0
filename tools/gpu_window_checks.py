"""The checks a GPU window runs before its grid (tools/gpu_window.sh), written as one JSON file: CUDA correctness of the flow gradient, bf16 against float32 and the
trainer's CUDA graph against eager through a λ warm-up and a learning-rate drop (`fgr.bench.correctness`); the bf16
matrix rate of this GPU; and the FLOPs of one training step of every recipe at the profile's width, counted by
PyTorch's FLOP counter, from which the window's achieved rate is computed. On the CPU only the FLOP count runs (tiny)."""
import argparse, json, sys, time
from pathlib import Path
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map
from torch.utils.flop_counter import flop_registry
from fgr.bench import correctness
from fgr.config import TrainConfig
from fgr.experiments import get_profile
from fgr.models import make_model
from fgr.records import provenance
from fgr.train import DEFENSES, make_optimizer, make_stepper


class CountFlops(TorchDispatchMode):
    """Sums the FLOPs of every operator PyTorch's FLOP counter knows (convolutions, matrix products and their backward passes),
    without the counter's per-module tracking, which refuses the double backward of the penalised recipes."""
    def __init__(self): super().__init__(); self.flops = 0
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        count = flop_registry.get(func._overloadpacket)
        if count is not None:
            shape = lambda t: t.shape if isinstance(t, torch.Tensor) else t
            self.flops += count(*tree_map(shape, args), **tree_map(shape, kwargs or {}), out_val=tree_map(shape, out))
        return out


def step_flops(defense:str, width:float, device, batch_size:int=128) -> int:
    "FLOPs of one training step of `defense` (VGG-11 at `width`, a batch of `batch_size` random images), counted by PyTorch."
    cfg = TrainConfig(defense=defense, width=width, batch_size=batch_size, device=str(device), progress=False).resolved()
    torch.manual_seed(0)
    model = make_model('vgg11', 10, width).to(device)
    optimizer = make_optimizer(model, cfg)[0]
    x, y = torch.rand(batch_size, 3, 32, 32, device=device), torch.randint(0, 10, (batch_size,), device=device)
    step = make_stepper(model, optimizer, cfg)
    with CountFlops() as counter: step(x, y, cfg)
    return counter.flops


def matmul_rate(device, n:int=8192, reps:int=10) -> float:
    "bf16 matrix-product FLOP/s on `device`: the mean of `reps` n×n×n products after three warm-ups, on random data."
    a, b = torch.randn(n, n, device=device, dtype=torch.bfloat16), torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3): a @ b
    torch.cuda.synchronize(); start = time.perf_counter()
    for _ in range(reps): a @ b
    torch.cuda.synchronize()
    return 2 * n ** 3 * reps / (time.perf_counter() - start)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument('--profile', required=True)
    p.add_argument('--out', required=True, help='the JSON file to write (must not exist)')
    a = p.parse_args(argv)
    out, P = Path(a.out), get_profile(a.profile)
    if out.exists(): print(f"error: {out} exists; nothing is overwritten", file=sys.stderr); return 2
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    start, record = time.perf_counter(), dict(profile=P.name, device=str(device), provenance=provenance(device))
    record['step_flops'] = {}
    for d in DEFENSES:
        try: record['step_flops'][d] = step_flops(d, P.width, device)
        except Exception as e: record['step_flops'][d] = f"{type(e).__name__}: {str(e)[:200]}"
    if device.type == 'cuda':
        record['bf16_matmul_flop_per_s'] = matmul_rate(device)
        try: record['correctness'] = correctness(device)
        except Exception as e: record['correctness'] = dict(error=f"{type(e).__name__}: {str(e)[:300]}")
    record['seconds'] = time.perf_counter() - start
    out.write_text(json.dumps(record, indent=1))
    print(json.dumps({k: v for k, v in record.items() if k != 'provenance'}, indent=1)[:3000])
    return 0


if __name__ == '__main__': sys.exit(main())

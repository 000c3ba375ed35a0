"""Pack a compact CIFAR-10 subset for the GPU check (tools/gpu_check.sh): a tar.gz of cifar10/{train,test}/<class>/*.png,
a fixed random subset of the offline image folders with the same number of images per class, the PNG files as they are. It goes to .cache/gpu-data/ (ignored by
git), which a device call carries; the data is never committed."""
import argparse, random, tarfile
from pathlib import Path

from fgr.data import find_data_root

ROOT = Path(__file__).resolve().parents[1]


def pack(out:Path, train:int=25000, test:int=2000, seed:int=0) -> Path:
    "Write `train` and `test` CIFAR-10 images (random by `seed`, the same number per class) from the offline folders to the tar.gz `out`."
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with tarfile.open(tmp, 'w:gz') as tar:
        for split, n in (('train', train), ('test', test)):
            kind, folder = find_data_root('cifar10', split)
            if kind != 'folder': raise SystemExit(f"pack_gpu_data: needs the offline CIFAR-10 image folders; found {kind} {folder}")
            classes, rng = sorted(d for d in folder.iterdir() if d.is_dir()), random.Random(seed)
            for i, c in enumerate(classes):                       # balanced: every class present, n in all
                files, k = sorted(c.glob('*.png')), n // len(classes) + (i < n % len(classes))
                if k > len(files): raise SystemExit(f"pack_gpu_data: asked for {k} {split} images of {c.name}, the folder has {len(files)}")
                for f in sorted(rng.sample(files, k)): tar.add(f, arcname=f"cifar10/{split}/{c.name}/{f.name}")
    tmp.replace(out)
    return out


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--train", type=int, default=25000, help="training images (all 25,000 of the offline folders)")
    p.add_argument('--test', type=int, default=2000, help="test images")
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out', type=Path, default=ROOT / '.cache' / 'gpu-data' / 'cifar10-subset.tar.gz')
    a = p.parse_args()
    path = pack(a.out, a.train, a.test, a.seed)
    print(f"{path} ({path.stat().st_size / 2**20:.1f} MiB): {a.train} train and {a.test} test images; carry {path.parent.relative_to(ROOT)}")

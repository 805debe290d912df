"""One full HP training iteration at a preset's shapes with synthetic images and random backbone weights.

    python benchmarks/train_step.py --preset cocostuff27 --batch 64 [--iters 5] [--device cuda|fake] [key=value ...]

The iteration is the trainer's own `train_step` in online mode: the frozen backbone on the clean and on the
augmented view (fp16 autocast on a GPU), LHP from the last-block attention, the HP loss (code form), the probes and the
optimizer steps. Prints the median ms/iteration, the peak memory (CUDA max allocated, or the CPU process's peak
resident set) and the device name. On a 2-core CPU use a small --batch (the work grows with B²).
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import resource
import statistics
import tempfile
import time

import torch

from hpnb.config import get_config
from hpnb.testing import device_scope
from hpnb.train import Trainer


class SyntheticImages(torch.utils.data.Dataset):
    """Normalised random images with random labels, the shapes of a real training set."""

    def __init__(self, n: int, res: int, n_classes: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, res, res, generator=g)
        self.labels = torch.randint(-1, n_classes, (n, res, res), generator=g)
        self.classes = [f"class{i}" for i in range(n_classes)]
        self.split, self.root = "train", None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": self.labels[i], "name": f"synthetic_{i}", "index": i}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cocostuff27")
    p.add_argument("--batch", type=int, default=None, help="default: the preset's batch size")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--device", default=None)
    p.add_argument("--loss-path", default="auto", choices=("auto", "on", "compile", "off"), help="LossConfig.fused")
    p.add_argument("overrides", nargs="*", help="config key=value, e.g. pool_size=16 for a quick CPU check")
    args = p.parse_args()
    from hpnb.config import parse_overrides

    with device_scope(args.device) as device:  # fake: the stand-in accelerator (gpu_table.sh --dry-run)
        cfg = get_config(
            args.preset,
            backbone_mode="online",
            backbone_weights="random",
            device=str(device),
            **({"batch_size": args.batch} if args.batch else {}),
            **parse_overrides(args.overrides),
        )
        n_classes = 27 if "27" in args.preset else (3 if "potsdam" in args.preset else 11)
        n_images = max(cfg.batch_size * 2, cfg.pool_size)
        data = SyntheticImages(n_images, cfg.res, n_classes)
        import hpnb.train as T

        T.build_dataset = lambda c, split, res, n=None: data  # synthetic data instead of the preset's dataset
        config_of = T.loss_config
        T.loss_config = lambda c: dataclasses.replace(config_of(c), fused=args.loss_path)  # the loss path measured
        T.extract_features = lambda backbone, dataset, **kw: _empty_val(backbone, dataset)
        with tempfile.TemporaryDirectory() as out:
            trainer = Trainer(cfg, out, progress=False)
            device = trainer.device
            trainer.build_pools(task_agnostic=True)
            t0 = time.perf_counter()
            trainer.build_pools(task_agnostic=False)
            renew = time.perf_counter() - t0
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            times = []
            for it in range(args.iters + 1):
                idx = torch.arange(cfg.batch_size) + (it % 2) * cfg.batch_size
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                trainer.train_step(idx, lam=0.5)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if it:  # the first iteration warms up kernels and allocators
                    times.append(time.perf_counter() - t0)
        if device.type == "cuda":
            name, peak = (
                torch.cuda.get_device_name(device),
                f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB (cuda max allocated)",
            )
        else:
            name = f"CPU {platform.machine()}, {torch.get_num_threads()} threads"
            peak = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (process peak RSS)"
        grid = cfg.res // trainer.backbone.patch_size
        print(
            f"{args.preset}: batch {cfg.batch_size}, {cfg.res} px ({grid}×{grid} patches), backbone {cfg.backbone} "
            f"(random weights), K={cfg.dim}, M={cfg.pool_size}, loss path {args.loss_path} | {name} | torch {torch.__version__}"
        )
        print(
            f"median {1000 * statistics.median(times):.0f} ms/iteration over {len(times)} | peak {peak} | "
            f"one Q_sp renewal {1000 * renew:.0f} ms"
        )


def _empty_val(backbone, dataset):
    """A one-image validation FeatureSet (the benchmark does not validate)."""
    from hpnb.features import compute_features

    small = torch.utils.data.Subset(dataset, [0])
    small.split, small.root = "val", None
    return compute_features(backbone, small, attention=False, progress=False)


if __name__ == "__main__":
    main()

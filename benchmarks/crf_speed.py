"""Dense CRF throughput: a serial loop vs `crf_batch` on a spawn process pool, on synthetic evaluation-size inputs.

    python benchmarks/crf_speed.py --images 32 --workers 2 [--repeats 3 --res 320 --classes 11 --grid 40]

Each synthetic image is res×res uint8 with blocky regions (one colour per class, plus noise); its log-probabilities
are noisy one-hot logits on the grid×grid feature grid, bilinearly upsampled to res×res and log-softmaxed (the
evaluation feeds full-resolution log-probabilities to the CRF, spec §4.2–4.3). The pooled time includes starting
the worker processes. The speed-up cannot exceed the number of cores. With --repeats R the serial loop and the
pool alternate R times and the best time of each is kept (the least disturbed by other work on a shared machine);
the load average printed at the start shows whether other processes were competing for the cores.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from hpnb.crf import crf_batch, crf_labels


def synthetic_inputs(
    n: int, res: int, classes: int, grid: int, seed: int = 0
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """n uint8 (res, res, 3) images and their float32 (classes, res, res) log-probabilities."""
    g = np.random.default_rng(seed)
    colours = g.integers(0, 256, (classes, 3))
    images, logps = [], []
    for _ in range(n):
        coarse = torch.as_tensor(g.integers(0, classes, (8, 8)))
        label = coarse.repeat_interleave(res // 8, 0).repeat_interleave(res // 8, 1)  # (res, res)
        images.append(np.clip(colours[label.numpy()] + g.normal(0, 10, (res, res, 3)), 0, 255).astype(np.uint8))
        small = F.interpolate(label[None, None].float(), size=(grid, grid), mode="nearest")[0, 0].long()
        logits = 2.0 * F.one_hot(small, classes).permute(2, 0, 1).float()  # (classes, grid, grid)
        logits += torch.as_tensor(g.normal(0, 1.0, logits.shape), dtype=torch.float32)
        logits = F.interpolate(logits[None], size=(res, res), mode="bilinear", align_corners=False)[0]
        logps.append(logits.log_softmax(0).numpy())
    return images, logps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--res", type=int, default=320)
    p.add_argument("--classes", type=int, default=11)
    p.add_argument("--grid", type=int, default=40)
    p.add_argument("--repeats", type=int, default=1, help="alternate R times, keep the best of each")
    args = p.parse_args()
    images, logps = synthetic_inputs(args.images, args.res, args.classes, args.grid)
    print(
        f"{args.images} images {args.res}x{args.res}, {args.classes} classes, 10 mean-field iterations; "
        f"CPU with {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    )

    load0 = os.getloadavg()[0]
    t_serial = t_pool = float("inf")
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        serial = [crf_labels(im, lp) for im, lp in zip(images, logps, strict=True)]
        t_serial = min(t_serial, time.perf_counter() - t0)
        t0 = time.perf_counter()
        pooled = crf_batch(images, logps, workers=args.workers)
        t_pool = min(t_pool, time.perf_counter() - t0)
    best = f" (best of {args.repeats})" if args.repeats > 1 else ""
    print(f"serial loop          : {t_serial:6.1f} s  {args.images / t_serial:6.2f} images/s{best}")
    print(f"crf_batch workers={args.workers:<3d}: {t_pool:6.1f} s  {args.images / t_pool:6.2f} images/s{best}")

    same = all(np.array_equal(a, b) for a, b in zip(serial, pooled, strict=True))
    print(
        f"speed-up {t_serial / t_pool:.2f}x | identical labels: {same} | "
        f"1-min load average {load0:.2f} at start, {os.getloadavg()[0]:.2f} at end"
    )


if __name__ == "__main__":
    main()

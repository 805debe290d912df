"""Backbone feature-extraction throughput (images/s): hpnb's FrozenViT vs the plain fused timm forward.

    python benchmarks/feature_extraction.py --res 224 --batch 8 [--backbone NAME] [--device cuda] [--random]
    python benchmarks/feature_extraction.py --res 224 --batch 8 --precision   # + float64 (the CPU cache default)

Prints one line per path; copy the output into benchmarks/README.md with the machine and command.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from hpnb.backbones import DEFAULT_BACKBONE, load_backbone
from hpnb.utils import pick_device


def _time(fn, warmup: int, repeats: int, device: torch.device) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default=DEFAULT_BACKBONE)
    p.add_argument("--res", type=int, default=224)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default=None)
    p.add_argument("--random", action="store_true", help="random weights (no weight files needed)")
    p.add_argument(
        "--precision",
        action="store_true",
        help="also time the float64 forward that CPU feature caches use (bit-reproducible across CPUs)",
    )
    args = p.parse_args()
    device = pick_device(args.device)
    model = load_backbone(args.backbone, weights="random" if args.random else None, device=device)
    x = torch.randn(args.batch, 3, args.res, args.res, device=device)
    amp = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    )
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    )
    print(f"# {args.backbone} at {args.res}px, batch {args.batch}, {name}, torch {torch.__version__}")

    def fused():
        with torch.no_grad(), amp:
            model.vit.forward_features(x)

    def ours(attention: bool):
        def run():
            with amp:
                model(x, attention=attention)

        return run

    rows = {
        "timm fused forward (reference)": fused,
        "hpnb FrozenViT, feats only": ours(False),
        "hpnb FrozenViT, feats + last-block attention": ours(True),
    }
    if args.precision:  # what extract_features(precision="float64") runs: a float64 copy of the backbone
        import copy

        model64, x64 = copy.deepcopy(model).double(), x.double()
        rows["hpnb FrozenViT float64, feats + attention"] = lambda: model64(x64, attention=True)
    ref = None
    for label, fn in rows.items():
        ips = args.batch / statistics.median(_time(fn, args.warmup, args.repeats, device))
        ref = ref or ips
        print(f"{label:<46} {ips:8.2f} images/s  ({100 * ips / ref:5.1f} % of fused)")


if __name__ == "__main__":
    main()

"""An ESTIMATE (not a measurement) of the time of the full COCO-Stuff-27 schedule on one H100, from FLOPs and bytes.

    python benchmarks/paper_scale_estimate.py [--efficiency 0.4] [--bandwidth-efficiency 0.6]

Counts the work of one training iteration of the `cocostuff27` preset (online backbone, code-form loss, fused path)
term by term, divides each by the H100 SXM datasheet rate of the unit it runs on times an assumed efficiency, and
multiplies by the schedule's iterations (49,629 curated images × 5 crops / batch 64 × epochs). It replaces nothing:
`gpu_table.sh` measures the iteration on a real GPU, and this script's numbers are to be read against that table.
"""

from __future__ import annotations

import argparse

from hpnb.config import get_config

# H100 SXM datasheet peaks (dense): FLOP/s by unit, and HBM3 bandwidth
PEAK = {"fp16 tensor": 989e12, "tf32 tensor": 495e12, "fp32": 67e12}
HBM = 3.35e12  # bytes/s
CURATED_TRAIN = 49_629  # ../shared/data/cocostuff27/curated/train2017_Coco164kFull_Stuff_Coarse_7.txt
CURATED_VAL = 2_175


def vit_flops(tokens: int, dim: int = 384, depth: int = 12, mlp: int = 4) -> float:
    """Forward FLOPs of one image through a ViT: the linear layers (2·params·tokens) and attention (4·tokens²·dim)."""
    params = depth * (4 * dim * dim + 2 * mlp * dim * dim)
    return 2 * params * tokens + depth * 4 * tokens * tokens * dim


def iteration(b: int, n: int, k: int, c: int, m: int, masks_kept: bool, tf32: bool) -> dict[str, tuple[float, str]]:
    """(work, unit) per part of one iteration: FLOPs on a compute unit, or bytes on HBM."""
    nb = b * n
    sq = float(nb) * nb
    logits_unit = "tf32 tensor" if tf32 else "fp32"
    return {
        "ViT-S/8, clean + augmented view (fp16 autocast)": (2 * b * vit_flops(n + 1), "fp16 tensor"),
        "criteria, Eq. 2 (exact fp32)": (2.0 * nb * m * (c + k), "fp32"),
        "mask similarities f·f, s'·s' (exact fp32)": ((1 if masks_kept else 2) * 2 * sq * (c + k), "fp32"),
        "logits z·z, z_mix·z_mix, forward + recompute": (2 * 2 * 2 * sq * k, logits_unit),
        "gradient products (4 per stream)": (2 * 4 * sq * k, logits_unit),
        "elementwise passes of the tiles (≈ 24 B per entry, forward + backward, 2 streams)": (sq * 24 * 2 * 2, "HBM"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--efficiency", type=float, default=0.4, help="assumed share of the compute peak reached")
    p.add_argument("--bandwidth-efficiency", type=float, default=0.6, help="assumed share of HBM bandwidth reached")
    args = p.parse_args()
    cfg = get_config("cocostuff27")
    n = (cfg.res // 8) ** 2  # ViT-S/8 at 224 px: 28 × 28 patches
    iters = (CURATED_TRAIN * 5 // cfg.batch_size) * cfg.epochs
    renewals, validations = iters // cfg.renew_every, iters // cfg.val_every
    print(f"cocostuff27 preset: B={cfg.batch_size}, N={n}, K={cfg.dim}, C=384, M={cfg.pool_size}, {iters} iterations")
    print(f"assumed: {args.efficiency:.0%} of the compute peaks, {args.bandwidth_efficiency:.0%} of HBM bandwidth\n")
    for tf32 in (True, False):
        parts = iteration(cfg.batch_size, n, cfg.dim, 384, cfg.pool_size, masks_kept=False, tf32=tf32)
        total = 0.0
        print(f"logits and gradients in {'TF32' if tf32 else 'exact fp32'}:")
        for name, (work, unit) in parts.items():
            rate = HBM * args.bandwidth_efficiency if unit == "HBM" else PEAK[unit] * args.efficiency
            seconds = work / rate
            total += seconds
            amount = f"{work / 1e9:8.1f} GB " if unit == "HBM" else f"{work / 1e12:8.2f} TFLOP"
            print(f"  {name:82s} {amount} on {unit:11s} {1000 * seconds:7.1f} ms")
        renew = renewals * cfg.pool_size * vit_flops(n + 1) / (PEAK["fp16 tensor"] * args.efficiency)
        val_tokens = (cfg.val_res // 8) ** 2 + 1
        val = validations * CURATED_VAL * vit_flops(val_tokens) / (PEAK["fp16 tensor"] * args.efficiency)
        hours = (iters * total + renew + val) / 3600
        print(
            f"  one iteration ≈ {1000 * total:.0f} ms; {iters} iterations + {renewals} Q_sp renewals ({renew:.0f} s) + "
            f"{validations} validations' backbone passes ({val:.0f} s) ≈ {hours:.1f} h\n"
        )


if __name__ == "__main__":
    main()

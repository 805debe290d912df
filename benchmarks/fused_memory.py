"""Peak memory of the fused code-form loss against its formula (issue 21, F7): hp_loss's fused path, forward +
backward, with the packed masks kept for the backward or recomputed there, each run in its own process.

    python benchmarks/fused_memory.py --batch 2 4 8 [--grid 28 --dim 512 --feat-dim 384 --chunk 4 --tile 1024]
                                      [--step] > benchmarks/results_fused_memory.txt

Measured as `loss_fused.py` measures (its `loss_step.py` helper `_rss_mib` and the process's peak resident set, one
process per number): the growth of the peak RSS over the loss, above the allocated inputs (z, z_mix, z_aug, f, s',
criteria, ρ mask) and a one-image warm-up. The children run with MALLOC_MMAP_THRESHOLD_=65536, so that glibc returns
every freed tensor to the system at once and the RSS follows the live tensors (without it freed blocks stay in the
heap and the RSS is only an upper bound). `--step` adds `loss_step.py --fused on` (the whole training-step loss with
the heads, criteria and LHP; `loss_fused.measure`) for comparison. Prints a Markdown table, measured against
`hpnb.fused_loss.memory_bytes`, and the formula at the COCO preset's B = 64.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from loss_fused import measure  # noqa: E402  (benchmarks/ is not a package)
from loss_step import _rss_mib  # noqa: E402

import hpnb.fused_loss as fl  # noqa: E402
from hpnb.losses import LossConfig, LossInputs, hp_loss  # noqa: E402
from hpnb.positives import criteria  # noqa: E402

MODES = {"kept": 2**62, "recomputed": 0}  # MASK_BUDGET in the child: keep every mask, or none


def synthetic_inputs(b: int, n: int, k: int, c: int, pool: int = 2048, seed: int = 0) -> LossInputs:
    """Unit vectors at loss_step.py's shapes; criteria against random pools of `pool` rows (Eq. 2, small chunks)."""
    g = torch.Generator().manual_seed(seed)
    unit = lambda *shape: F.normalize(torch.randn(*shape, generator=g), dim=-1)  # noqa: E731
    f, s = unit(b, n, c), unit(b, n, k)
    c_ag = criteria(f.reshape(-1, c), unit(pool, c), chunk=256).reshape(b, n)
    c_sp = criteria(s.reshape(-1, k), unit(pool, k), chunk=256).reshape(b, n)
    z, z_mix = unit(b, n, k).requires_grad_(), unit(b, n, k).requires_grad_()
    return LossInputs(z=z, f=f, c_ag=c_ag, s_ema=s, c_sp=c_sp, z_mix=z_mix, z_aug=unit(b, n, k))


def child(args) -> None:
    """One measurement: hp_loss (fused) forward + backward, the growth of the peak RSS in MiB."""
    fl.MASK_BUDGET = MODES[args.mode]
    b, n = args.batch[0], args.grid**2
    cfg = LossConfig(rho=0.02, chunk_images=args.chunk, fused="on", tile=args.tile)
    inp = synthetic_inputs(b, n, args.dim, args.feat_dim)
    neg = torch.rand(n, b * n, generator=torch.Generator().manual_seed(1)) < cfg.rho
    one = LossInputs(**{k: v[:1] if isinstance(v, torch.Tensor) else v for k, v in inp.__dict__.items()})
    hp_loss(one, cfg, lam=0.5, neg_mask=neg[:, :n]).total.backward()  # warm-up: thread pools, kernels
    inp.z.grad = inp.z_mix.grad = None
    rss0 = _rss_mib()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = hp_loss(inp, cfg, lam=0.5, neg_mask=neg)
    out.total.backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"loss {float(out.total.detach()):.4f} | peak +{peak - rss0:.1f} MiB (warm-up peak +{before - rss0:.1f})")


def run_child(b: int, mode: str, args) -> tuple[float, float]:
    """The child's (loss, MiB above the inputs) for batch b, masks `mode`."""
    cmd = [sys.executable, __file__, "--child", "--mode", mode, "--batch", str(b)]
    cmd += ["--grid", str(args.grid), "--dim", str(args.dim), "--feat-dim", str(args.feat_dim)]
    cmd += ["--chunk", str(args.chunk), "--tile", str(args.tile)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    print(f"B={b} masks {mode}: {out.strip()}", flush=True)
    return float(re.search(r"loss (\S+)", out).group(1)), float(re.search(r"peak \+(\S+) MiB", out).group(1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--grid", type=int, default=28, help="patches per side: N = grid²")
    p.add_argument("--dim", type=int, default=512, help="K")
    p.add_argument("--feat-dim", type=int, default=384, help="C")
    p.add_argument("--chunk", type=int, default=4, help="anchor images per block")
    p.add_argument("--tile", type=int, default=1024, help="columns per tile")
    p.add_argument("--step", action="store_true", help="also loss_step.py --fused on (loss_fused.measure)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=tuple(MODES), default="kept", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    n = args.grid**2
    print(
        f"hp_loss fused forward+backward, N={n} K={args.dim} C={args.feat_dim} chunk={args.chunk} tile={args.tile}, "
        f"CPU {torch.get_num_threads()} threads, torch {torch.__version__}; MASK_BUDGET {fl.MASK_BUDGET / 2**20:g} MiB"
    )
    formula = lambda b, keep: fl.memory_bytes(b, n, args.dim, args.chunk, args.tile, keep=keep) / 2**20  # noqa: E731
    rows = []
    for b in args.batch:
        kept, recomputed = run_child(b, "kept", args), run_child(b, "recomputed", args)
        step = None
        if args.step:
            extra = ["--grid", str(args.grid), "--dim", str(args.dim), "--chunk", str(args.chunk)]
            step = measure(b, "on", 1, [*extra, "--tile", str(args.tile), "--feat-dim", str(args.feat_dim)])
        rows.append((b, kept, recomputed, step))
    step_head = " | loss_step.py --fused on, MiB" if args.step else ""
    print(f"\n| B | NB | masks kept: measured MiB | formula MiB | recomputed: measured MiB | formula MiB{step_head} |")
    print("|---:|---:|---:|---:|---:|---:|" + ("---:|" if args.step else ""))
    for b, kept, recomputed, step in rows:
        extra = f" | {step['peak']:g}" if step else ""
        print(
            f"| {b} | {b * n} | {kept[1]:.1f} | {formula(b, True):.1f} | {recomputed[1]:.1f} | "
            f"{formula(b, False):.1f}{extra} |"
        )
    for b, kept, recomputed, _ in rows:
        assert kept[0] == recomputed[0], f"B={b}: the two modes must give the same loss, {kept[0]} ≠ {recomputed[0]}"
    print(
        f"\nThe same loss in both modes at every B. Default MASK_BUDGET: masks kept up to NB = {int(fl.MASK_BUDGET**0.5)}."
    )
    for b in (32, 64):
        default = fl.keeps_masks(b * n)
        print(
            f"Formula at B={b} (NB={b * n}): {formula(b, False) / 1024:.2f} GiB with the masks recomputed (the default "
            f"{'keeps' if default else 'recomputes'} them), {formula(b, True) / 1024:.2f} GiB if they were kept"
        )


if __name__ == "__main__":
    main()

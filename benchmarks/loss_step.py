"""One HP loss forward + backward at paper shapes with synthetic inputs: time and peak memory.

    python benchmarks/loss_step.py --batch 4 [--grid 28 --dim 512 --pool 2048 --form code --chunk 4 --device cuda|fake]
                                   [--fused off|on|compile --tile 1024]

COCO setting: B = 64 crops, 28×28 = 784 patches each (ViT-S/8 at 224), K = 512, C = 384, M = 2048, τ = 0.8,
ρ = 0.02, LHP on, λ = 0.5. On a 2-core CPU use a reduced --batch. Timed: pool criteria (Eq. 2), LHP weights and
mixing (Eq. 7–9), the projection head Z and `hp_loss` forward + backward. Peak memory: CUDA max allocated, or on
CPU the growth of the process's peak resident set over the step.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch
import torch.nn.functional as F

from hpnb.heads import ProjectionHead
from hpnb.losses import LossConfig, LossInputs, hp_loss
from hpnb.positives import attention_to_lhp, criteria, mix_codes
from hpnb.testing import device_scope
from hpnb.utils import device_generator


def _rss_mib() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS")) / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--grid", type=int, default=28)
    p.add_argument("--dim", type=int, default=512, help="K")
    p.add_argument("--feat-dim", type=int, default=384, help="C")
    p.add_argument("--pool", type=int, default=2048, help="M")
    p.add_argument("--form", default="code")
    p.add_argument("--chunk", type=int, default=4, help="anchor images per block")
    p.add_argument("--fused", default="off", choices=("off", "on", "compile"), help="LossConfig.fused (issue 14)")
    p.add_argument("--tile", type=int, default=1024, help="columns per tile of the fused path")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default=None)
    args = p.parse_args()
    with device_scope(args.device) as device:  # fake: the stand-in accelerator (gpu_table.sh --dry-run)
        torch.manual_seed(0)
        b, h, k, c = args.batch, args.grid, args.dim, args.feat_dim
        n = h * h
        feats = F.normalize(torch.randn(b, n, c, device=device), dim=-1)
        s_ema = F.normalize(torch.randn(b, n, k, device=device), dim=-1)
        q_ag = F.normalize(torch.randn(args.pool, c, device=device), dim=-1)
        q_sp = F.normalize(torch.randn(args.pool, k, device=device), dim=-1)
        attn = 2 * torch.randn(b, 1 + n, 1 + n, device=device)
        codes = torch.randn(b, k, h, h, device=device, requires_grad=True)
        z_aug_src = torch.randn(b, k, h, h, device=device)
        proj = ProjectionHead(k).to(device)
        cfg = LossConfig(form=args.form, tau=0.8, rho=0.02, chunk_images=args.chunk, fused=args.fused, tile=args.tile)
        gen = device_generator(device, 0)

        def step() -> float:
            c_ag = criteria(feats.reshape(-1, c), q_ag).reshape(b, n)
            c_sp = criteria(s_ema.reshape(-1, k), q_sp).reshape(b, n)
            weights, denom = attention_to_lhp(attn, (h, h), args.form)
            z = proj(codes).flatten(2).transpose(1, 2)
            z_mix = proj(mix_codes(codes, weights, denom)).flatten(2).transpose(1, 2)
            z_aug = proj(z_aug_src).flatten(2).transpose(1, 2)
            out = hp_loss(
                LossInputs(z=z, f=feats, c_ag=c_ag, s_ema=s_ema, c_sp=c_sp, z_mix=z_mix, z_aug=z_aug),
                cfg,
                lam=0.5,
                generator=gen,
            )
            out.total.backward()
            codes.grad = None
            return float(out.total.detach())

        rss0 = _rss_mib()  # inputs allocated, nothing computed yet
        step()  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            loss = step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        if device.type == "cuda":
            peak = f"peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB (cuda max allocated)"
            where = torch.cuda.get_device_name(device)
        else:
            peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            peak = f"peak RSS {peak_rss:.0f} MiB (+{peak_rss - rss0:.0f} MiB above the inputs)"
            where = f"CPU, {torch.get_num_threads()} threads"
        path = f"fused={args.fused} tile={args.tile}" if cfg.fused_on(device) else "reference"
        print(
            f"form={args.form} B={b} N={n} K={k} C={c} M={args.pool} chunk={args.chunk} {path} on {where}, "
            f"torch {torch.__version__}"
        )
        print(
            f"loss {loss:.4f} | forward+backward median {1000 * statistics.median(times):.0f} ms "
            f"over {args.repeats} | {peak}"
        )


if __name__ == "__main__":
    main()

"""The fused code-form loss against the reference path at benchmark shapes, on any device (issue 14): the largest
relative difference of the total and of the gradients, for the Table 4 switches. Exit status 1 above 1e-5.

    python benchmarks/fused_equality.py [--device cuda|fake] [--batch 8] [--grid 28]

The unit tests (`tests/test_fused_loss.py`) check the full matrix on small CPU inputs; this script repeats the
check at paper-like shapes where the kernels (and, on CUDA, cuBLAS) take their real code paths. TF32 is off.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from hpnb.losses import LossConfig, LossInputs, hp_loss
from hpnb.testing import device_scope
from hpnb.utils import device_generator

SWITCHES = {
    "full": {},
    "no P_sp": {"use_sp": False},
    "no LHP": {"use_lhp": False},
    "one-sided": {"symmetric": False},
    "no R": {"use_reg": False},
    "chunk 1": {"chunk_images": 1},
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--grid", type=int, default=28)
    p.add_argument("--fused", default="on", choices=("on", "compile"))
    args = p.parse_args()
    with device_scope(args.device) as device:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        g = device_generator(device, 0)
        b, n, k, c = args.batch, args.grid**2, 512, 384
        unit = lambda *s: F.normalize(torch.randn(*s, generator=g, device=device), dim=-1)  # noqa: E731
        base = dict(f=unit(b, n, c), s_ema=unit(b, n, k), z_aug=unit(b, n, k))
        z0, zm0 = unit(b, n, k), unit(b, n, k)
        c_ag = (base["f"].reshape(-1, c) @ unit(2048, c).T).amax(1).reshape(b, n)
        c_sp = (base["s_ema"].reshape(-1, k) @ unit(2048, k).T).amax(1).reshape(b, n)
        neg = torch.rand(n, b * n, generator=g, device=device) < 0.02
        worst = 0.0
        print(f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}, B={b}, N={n}")
        for name, sw in SWITCHES.items():
            res = []
            for path in ("off", args.fused):
                z, zm = z0.clone().requires_grad_(), zm0.clone().requires_grad_()
                inp = LossInputs(z=z, z_mix=zm, c_ag=c_ag, c_sp=c_sp, **base)
                out = hp_loss(inp, LossConfig(fused=path, tau=0.8, rho=0.02, **sw), lam=0.5, neg_mask=neg)
                out.total.backward()
                res.append((out.total.detach(), z.grad, zm.grad, out.n_pos_ag))
            (t0, g0, m0, n0), (t1, g1, m1, n1) = res
            rel = lambda a, b_: float((a - b_).abs().max() / b_.abs().max().clamp_min(1e-30))  # noqa: E731
            diffs = [rel(t1, t0), rel(g1, g0)] + ([rel(m1, m0)] if m0 is not None else [])
            same = bool(torch.equal(n0, n1))
            worst = max(worst, *diffs) if same else float("inf")
            print(f"{name:10s} total {float(t0):.6f} vs {float(t1):.6f} | max rel diff: " + ", ".join(f"{d:.1e}" for d in diffs)
                  + f" | |P_ag| counts identical: {same}")  # fmt: skip
        print(f"worst relative difference {worst:.1e}: {'PASS' if worst <= 1e-5 else 'FAIL'} (tolerance 1e-5)")
        return 0 if worst <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())

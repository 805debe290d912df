"""Trainable heads of HP (paper §3.1, spec §1.2–1.5): segmentation head S, momentum head S', projection head Z.

`form="code"` (default) is the official head: a 1×1 linear branch plus a (1×1, ReLU, 1×1) branch, summed, each
with its own Dropout2d on the input; `form="paper"` is the plain two-layer ReLU MLP the paper describes.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from hpnb.utils import exact_fp32


class SegmentationHead(nn.Module):
    """S: backbone features (B, C, h, w) -> codes (B, K, h, w)."""

    def __init__(self, in_dim: int, dim: int, dropout: float = 0.1, form: str = "code"):
        super().__init__()
        if form not in ("code", "paper"):
            raise ValueError(f"form must be 'code' or 'paper', found {form!r}")
        self.form = form
        self.nonlinear = nn.Sequential(nn.Conv2d(in_dim, in_dim, 1), nn.ReLU(), nn.Conv2d(in_dim, dim, 1))
        self.drop_nonlinear = nn.Dropout2d(dropout)
        if form == "code":  # the official head adds a linear skip branch with its own dropout draw
            self.linear = nn.Conv2d(in_dim, dim, 1)
            self.drop_linear = nn.Dropout2d(dropout)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        out = self.nonlinear(self.drop_nonlinear(feats))
        if self.form == "code":
            out = out + self.linear(self.drop_linear(feats))
        return out


class ProjectionHead(nn.Module):
    """Z: Linear(K, K) then L2 normalisation, over the channel dim of (B, K, h, w) or the last dim of (n, K)."""

    def __init__(self, dim: int):
        super().__init__()
        self.fc = nn.Linear(dim, dim)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        if codes.ndim == 4:
            return F.normalize(self.fc(codes.permute(0, 2, 3, 1)), dim=-1).permute(0, 3, 1, 2)
        return F.normalize(self.fc(codes), dim=-1)


def momentum_copy(head: nn.Module) -> nn.Module:
    """S': a frozen copy of S with the same initial weights (spec §1.3)."""
    ema = copy.deepcopy(head)
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema


@torch.no_grad()
def ema_update(ema: nn.Module, head: nn.Module, m: float) -> None:
    """θ' ← m·θ' + (1 − m)·θ for every parameter; buffers are copied (once per iteration, spec §1.3)."""
    for p_ema, p in zip(ema.parameters(), head.parameters(), strict=True):
        p_ema.mul_(m).add_(p.detach(), alpha=1 - m)
    for b_ema, b in zip(ema.buffers(), head.buffers(), strict=True):
        b_ema.copy_(b)


class HPHeads(nn.Module):
    """S, S' and Z together, with the extra Dropout2d draws of the official forward (spec §1.5)."""

    def __init__(self, in_dim: int, dim: int, dropout: float = 0.1, form: str = "code"):
        super().__init__()
        self.seg = SegmentationHead(in_dim, dim, dropout, form)
        self.ema = momentum_copy(self.seg)
        self.proj = ProjectionHead(dim)
        self.form = form
        # code form: the features used for mining, S'(·) and s_mix each get their own channel dropout
        self.drop_mining = nn.Dropout2d(dropout if form == "code" else 0.0)
        self.drop_ema_out = nn.Dropout2d(dropout if form == "code" else 0.0)
        self.drop_mix = nn.Dropout2d(dropout if form == "code" else 0.0)

    def mining_features(self, feats: torch.Tensor) -> torch.Tensor:
        """f: L2-normalised (dropped, in the code form) backbone features for GHP mining, detached."""
        return F.normalize(self.drop_mining(feats.float()), dim=1).detach()

    @torch.no_grad()
    def momentum_codes(self, feats: torch.Tensor) -> torch.Tensor:
        """s': L2-normalised momentum-head codes (with the extra output dropout of the code form), no grad; in fp32
        under any autocast, since they decide P_sp (Eq. 4) against the fp32 criteria."""
        with exact_fp32(feats.device):
            return F.normalize(self.drop_ema_out(self.ema(feats.float())), dim=1)

    def project_mixed(self, s_mix: torch.Tensor) -> torch.Tensor:
        """z_mix = L2norm(Z(Dropout2d(s_mix)))."""
        return self.proj(self.drop_mix(s_mix))

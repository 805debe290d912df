"""The trainable part of HP in one module: heads S, S', Z and the two evaluation probes (spec §1.2–1.6, §4.1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hpnb.heads import HPHeads
from hpnb.losses import LossInputs
from hpnb.metrics import IGNORE
from hpnb.positives import criteria, mix_codes


class ClusterProbe(nn.Module):
    """n_clusters centroids (init N(0,1)); logits = cosine(code, centroid); loss = −mean assigned cosine (§4.1)."""

    def __init__(self, dim: int, n_clusters: int):
        super().__init__()
        self.centroids = nn.Parameter(torch.randn(n_clusters, dim))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, K, h, w) -> cosine logits (B, n_clusters, h, w)."""
        return torch.einsum("bkhw,ck->bchw", F.normalize(codes, dim=1), F.normalize(self.centroids, dim=1))

    def loss(self, codes: torch.Tensor) -> torch.Tensor:
        """Spherical k-means objective on detached codes: gradient only to the centroids."""
        cos = self(codes.detach())
        return -cos.max(dim=1).values.mean()


class HPModel(nn.Module):
    """Heads + probes. `loss_inputs` turns backbone outputs into the vectors `hp_loss` needs."""

    def __init__(self, in_dim: int, dim: int, n_classes: int, dropout: float = 0.1, form: str = "code"):
        super().__init__()
        self.heads = HPHeads(in_dim, dim, dropout, form)
        self.linear_probe = nn.Conv2d(dim, n_classes, 1)
        self.cluster_probe = ClusterProbe(dim, n_classes)
        self.in_dim, self.dim, self.n_classes = in_dim, dim, n_classes

    def loss_inputs(
        self,
        feats: torch.Tensor,
        feats_aug: torch.Tensor | None,
        lhp: tuple[torch.Tensor, torch.Tensor] | None,
        q_ag: torch.Tensor,
        q_sp: torch.Tensor | None,
        need_mix: bool = True,
    ) -> tuple[LossInputs, torch.Tensor]:
        """Backbone maps (B, C, h, w) -> (LossInputs, codes s) following the official forward (spec §1.5, §2)."""
        b, _, h, w = feats.shape
        flat = lambda x: x.flatten(2).transpose(1, 2)  # noqa: E731  (B, D, h, w) -> (B, N, D)
        heads = self.heads
        f = flat(heads.mining_features(feats))
        s = heads.seg(feats.float())
        s_ema = flat(heads.momentum_codes(feats)) if q_sp is not None else None
        z = flat(heads.proj(s))
        z_aug = flat(heads.proj(heads.seg(feats_aug.float()))) if feats_aug is not None else None
        z_mix = flat(heads.project_mixed(mix_codes(s, *lhp))) if (lhp is not None and need_mix) else None
        c_ag = criteria(f.reshape(b * h * w, -1), q_ag).reshape(b, -1)
        c_sp = criteria(s_ema.reshape(b * h * w, -1), q_sp).reshape(b, -1) if q_sp is not None else None
        return LossInputs(
            z=z, f=f, c_ag=c_ag, s_ema=s_ema, c_sp=c_sp, z_mix=z_mix, z_aug=z_aug, lhp=lhp, grid=(h, w)
        ), s

    def probe_losses(self, codes: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Linear-probe CE on logits upsampled to the labels, and the cluster-probe loss, on detached codes."""
        codes = codes.detach()
        logits = F.interpolate(self.linear_probe(codes), size=labels.shape[-2:], mode="bilinear", align_corners=False)
        target = labels.long()
        target = torch.where((target >= 0) & (target < self.n_classes), target, torch.full_like(target, IGNORE))
        linear = F.cross_entropy(logits, target, ignore_index=IGNORE) if (target >= 0).any() else logits.sum() * 0
        return linear, self.cluster_probe.loss(codes)

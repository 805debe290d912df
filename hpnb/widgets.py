"""Interactive explorers for the notebooks (ipywidgets). They recompute from cached features: no backbone
forward per slider move, `continuous_update=False`. Each has a static twin (the `*_figure` / `*_stats` functions
called at the paper's defaults) and an `update(...)` method that unit tests call directly.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from hpnb.features import FeatureSet
from hpnb.positives import criteria, positive_block, sample_patches_per_image


def _flat(fs: FeatureSet, n_images: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit patch features (n·N, C) of the first images and the majority label of each patch (n·N,)."""
    feats = fs.normalized(slice(0, n_images))
    n, c, h, w = feats.shape
    labels = fs.labels[:n].float()[:, None]
    # the label of a patch = the most frequent label among its pixels (nearest-neighbour downsampling is enough here)
    patch_labels = F.interpolate(labels, size=(h, w), mode="nearest")[:, 0].long()
    return feats.permute(0, 2, 3, 1).reshape(-1, c), patch_labels.reshape(-1)


def ghp_stats(fs: FeatureSet, pool_size: int = 64, n_images: int = 16, seed: int = 0, symmetric: bool = True) -> dict:
    """Eq. 2–3 on cached features: mean |P_ag| per anchor and purity (share of positives with the anchor's label)."""
    x, lab = _flat(fs, n_images)
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(len(fs), (pool_size,), generator=gen)  # Q_ag: one random patch of each of M images
    pool = sample_patches_per_image(fs.feats[images].float(), gen)
    c = criteria(x, pool)
    pos = positive_block(x, x, c, c, 0, symmetric)
    valid = (lab[:, None] >= 0) & (lab[None, :] >= 0)
    same = (lab[:, None] == lab[None, :]) & valid
    n_pos = pos.sum(1).float()
    purity = float((pos & same).sum() / (pos & valid).sum().clamp_min(1))
    return {"M": pool_size, "mean_positives": round(float(n_pos.mean()), 2),
            "share_without_positive": round(float((n_pos == 0).float().mean()), 3), "purity": round(purity, 3)}


def contrast_stats(fs: FeatureSet, tau: float = 0.6, rho: float = 0.05, pool_size: int = 64, n_images: int = 16,
                   seed: int = 0) -> dict:
    """With backbone features standing in for z: mean probability mass on the GHP under τ, and the size of the
    denominator (P_ag ∪ a ρ-sample), for the code form's shared denominator."""
    x, _ = _flat(fs, n_images)
    gen = torch.Generator().manual_seed(seed)
    pool = x[torch.randperm(len(x), generator=gen)[:pool_size]]
    c = criteria(x, pool)
    pos = positive_block(x, x, c, c, 0)
    eye = torch.eye(len(x), dtype=torch.bool)
    denom = (pos | (torch.rand(len(x), len(x), generator=gen) < rho)) & ~eye
    logits = (x @ x.T / tau).masked_fill(~denom, float("-inf"))
    p = torch.softmax(logits, dim=1).nan_to_num(0.0)
    keep = pos.any(1)
    return {"tau": tau, "rho": rho, "mass_on_positives": round(float((p * pos).sum(1)[keep].mean()), 3),
            "denominator_size": round(float(denom.sum(1).float().mean()), 1)}


@dataclass
class Explorer:
    """A slider, an output area, the function it recomputes and the last values it showed."""

    compute: callable
    widget: object = None
    last: dict = field(default_factory=dict)
    history: list = field(default_factory=list)

    def update(self, **values) -> dict:
        """Recompute for the given slider values (what a slider move calls); returns and keeps the stats."""
        self.last = self.compute(**values)
        self.history.append(self.last)
        if self.widget is not None:
            out = self.widget.children[-1]
            out.clear_output(wait=True)
            with out:
                print("  ".join(f"{k} = {v}" for k, v in self.last.items()))
        return self.last


def _explorer(compute, sliders: dict) -> Explorer:
    import ipywidgets as W

    exp = Explorer(compute=compute)
    out = W.Output()
    exp.widget = W.VBox([*sliders.values(), out])

    def on_change(_):
        exp.update(**{k: s.value for k, s in sliders.items()})

    for slider in sliders.values():
        slider.observe(on_change, names="value")
    on_change(None)
    return exp


def explore_pool_size(fs: FeatureSet, values=(8, 16, 32, 64, 128, 256), n_images: int = 16) -> Explorer:
    """Slider over M: how many GHP each anchor gets and how pure they are (cached features only)."""
    import ipywidgets as W

    slider = W.SelectionSlider(options=list(values), value=64 if 64 in values else values[0], description="M",
                               continuous_update=False)
    return _explorer(lambda pool_size: ghp_stats(fs, pool_size, n_images), {"pool_size": slider})


def explore_temperature(fs: FeatureSet, n_images: int = 16) -> Explorer:
    """Sliders over τ and ρ: probability mass on the positives and the denominator size."""
    import ipywidgets as W

    tau = W.FloatSlider(value=0.6, min=0.1, max=1.5, step=0.1, description="τ", continuous_update=False)
    rho = W.FloatSlider(value=0.05, min=0.0, max=1.0, step=0.05, description="ρ", continuous_update=False)
    return _explorer(lambda tau, rho: contrast_stats(fs, tau, rho, n_images=n_images), {"tau": tau, "rho": rho})


def sweep(compute, name: str, values) -> list[dict]:
    """The static twin of a slider: the stats at each value (a table or a line plot in the notebook)."""
    return [compute(**{name: v}) for v in values]


def stats_table(rows: list[dict]) -> str:
    """Rows of stats as a fixed-width text table (stable for nbval)."""
    keys = list(rows[0])
    lines = ["  ".join(f"{k:>22}" for k in keys)]
    lines += ["  ".join(f"{r[k]:>22}" for k in keys) for r in rows]
    return "\n".join(lines)


__all__ = ["ghp_stats", "contrast_stats", "Explorer", "explore_pool_size", "explore_temperature", "sweep", "stats_table"]
_ = np  # numpy is used by notebooks through this module's namespace

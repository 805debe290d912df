"""Interactive explorers for the notebooks (ipywidgets). They recompute from cached features: no backbone
forward per slider move, `continuous_update=False`. Each has a static twin (the `*_figure` / `*_stats` functions
called at the paper's defaults) and an `update(...)` method that unit tests call directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from hpnb.features import FeatureSet
from hpnb.metrics import patch_labels
from hpnb.positives import criteria, pool_image_indices, positive_block, sample_patches_per_image
from hpnb.printing import count, pct
from hpnb.utils import HpnbError


def _flat(fs: FeatureSet, n_images: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit patch features (n·N, C) of the first `n_images` images (the anchors) and each patch's label (n·N,):
    the majority label of its pixels (`hpnb.metrics.patch_labels`), used only to measure purity."""
    if n_images >= len(fs):
        raise HpnbError(
            f"the anchors are the first n_images={n_images} images and the reference pool needs other "
            f"images, but the feature set has only {len(fs)}; lower n_images or cache more images"
        )
    feats = fs.normalized(slice(0, n_images)).double()  # float64: no positive flips between CPU models
    n, c, h, w = feats.shape
    return feats.permute(0, 2, 3, 1).reshape(-1, c), patch_labels(fs.labels[:n], (h, w)).reshape(-1)


def anchor_pool(fs: FeatureSet, pool_size: int, n_images: int, generator: torch.Generator) -> torch.Tensor:
    """Q_ag as training builds it (spec §2.2): one random patch from each of M distinct images, drawn without
    replacement from the images that hold no anchor (the first `n_images` are the anchors) -> unit rows (M, C)."""
    idx = pool_image_indices(len(fs), pool_size, generator, exclude=range(n_images))
    return sample_patches_per_image(fs.feats[idx].double(), generator)


def purity(pos: torch.Tensor, lab: torch.Tensor) -> float:
    """Share of the positive pairs (both patches labelled) whose two patches have the same label."""
    valid = (lab[:, None] >= 0) & (lab[None, :] >= 0)
    same = (lab[:, None] == lab[None, :]) & valid
    return float((pos & same).sum() / (pos & valid).sum().clamp_min(1))


def ghp_stats(fs: FeatureSet, pool_size: int = 64, n_images: int = 16, seed: int = 0, symmetric: bool = True) -> dict:
    """Eq. 2–3 on cached features, anchors = all patches of the first `n_images` images, Q_ag from other images.

    mean |P_ag| per anchor; recall (share of the same-label pairs that are positives); the share of positive pairs
    that join two different images (the *global* part); the share of anchors without any positive; purity."""
    x, lab = _flat(fs, n_images)
    pool = anchor_pool(fs, pool_size, n_images, torch.Generator().manual_seed(seed))
    c = criteria(x, pool)
    pos = positive_block(x, x, c, c, 0, symmetric)
    n_pos = pos.sum(1).float()
    per_image = len(x) // n_images
    image = torch.arange(len(x)) // per_image
    same = (lab[:, None] == lab[None, :]) & (lab[:, None] >= 0) & ~torch.eye(len(x), dtype=torch.bool)
    return {
        "M": pool_size,
        "mean_positives": float(n_pos.mean()),
        "recall": float((pos & same).sum() / same.sum().clamp_min(1)),
        "other_images": float((pos & (image[:, None] != image[None, :])).sum() / pos.sum().clamp_min(1)),
        "share_without_positive": float((n_pos == 0).float().mean()),
        "purity": purity(pos, lab),
    }


def contrast_stats(
    fs: FeatureSet, tau: float = 0.6, rho: float = 0.05, pool_size: int = 64, n_images: int = 16, seed: int = 0
) -> dict:
    """With backbone features standing in for z: mean probability mass on the GHP under τ, and the size of the
    denominator (P_ag ∪ a ρ-sample), for the code form's shared denominator."""
    x, _ = _flat(fs, n_images)
    gen = torch.Generator().manual_seed(seed)
    c = criteria(x, anchor_pool(fs, pool_size, n_images, gen))
    pos = positive_block(x, x, c, c, 0)
    eye = torch.eye(len(x), dtype=torch.bool)
    denom = (pos | (torch.rand(len(x), len(x), generator=gen) < rho)) & ~eye
    logits = (x @ x.T / tau).masked_fill(~denom, float("-inf"))
    p = torch.softmax(logits, dim=1).nan_to_num(0.0)
    keep = pos.any(1)
    return {
        "tau": tau,
        "rho": rho,
        "mass_on_positives": float((p * pos).sum(1)[keep].mean()),
        "denominator_size": float(denom.sum(1).float().mean()),
    }


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
                print(stats_table([self.last]))
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


def explore_pool_size(fs: FeatureSet, values=(4, 8, 16, 32, 64, 128, 256), n_images: int = 16) -> Explorer:
    """Slider over M: how many GHP each anchor gets and how pure they are (cached features only). Values of M larger
    than the number of non-anchor images are left out (a pool takes one patch from each of M different images)."""
    import ipywidgets as W

    values = [m for m in values if m <= len(fs) - n_images]
    if not values:
        pool_image_indices(len(fs), 1, exclude=range(min(n_images, len(fs))))  # raises the explanatory error
    slider = W.SelectionSlider(
        options=values, value=64 if 64 in values else values[len(values) // 2], description="M", continuous_update=False
    )
    return _explorer(lambda pool_size: ghp_stats(fs, pool_size, n_images), {"pool_size": slider})


def explore_temperature(fs: FeatureSet, n_images: int = 16, pool_size: int = 64) -> Explorer:
    """Sliders over τ and ρ: probability mass on the positives and the denominator size (M capped by the number of
    non-anchor images)."""
    import ipywidgets as W

    pool_size = min(pool_size, len(fs) - n_images)
    tau = W.FloatSlider(value=0.6, min=0.1, max=1.5, step=0.1, description="τ", continuous_update=False)
    rho = W.FloatSlider(value=0.05, min=0.0, max=1.0, step=0.05, description="ρ", continuous_update=False)
    return _explorer(lambda tau, rho: contrast_stats(fs, tau, rho, pool_size, n_images), {"tau": tau, "rho": rho})


def sweep(compute, name: str, values, seeds=None) -> list[dict]:
    """The static twin of a slider: the stats at each value (a table or a line plot in the notebook).

    With `seeds`, each value is computed once per seed (e.g. per random pool draw) and every statistic becomes
    (mean, std over the seeds); `stats_table` prints them as "mean ± std"."""
    if seeds is None:
        return [compute(**{name: v}) for v in values]
    rows = []
    for v in values:
        runs = [compute(**{name: v, "seed": s}) for s in seeds]
        row = {}
        for key, first in runs[0].items():
            if key in FORMATS:
                vals = torch.tensor([r[key] for r in runs], dtype=torch.float64)
                row[key] = (float(vals.mean()), float(vals.std()) if len(vals) > 1 else 0.0)
            else:
                row[key] = first
        rows.append(row)
    return rows


def _cell(key: str, value, formats: dict) -> str:
    """One table cell: a statistic at its printing precision, "mean ± std" for an aggregated one."""
    if key not in formats:
        return str(value)
    fmt = formats[key]
    if not isinstance(value, tuple):
        return fmt(value)
    spread = count(value[1], digits=2) if fmt is count else fmt(value[1])  # a spread needs two digits at most
    return f"{fmt(value[0])} ± {spread}"


# how each statistic is printed: shares in percent with one decimal, mean counts to three significant digits
FORMATS = {
    "mean_positives": count,
    "denominator_size": count,
    "share_without_positive": pct,
    "purity": pct,
    "mass_on_positives": pct,
    "recall": pct,
    "other_images": pct,
}
HEADERS = {
    "M": "M",
    "tau": "τ",
    "rho": "ρ",
    "mean_positives": "mean |P_i|",
    "share_without_positive": "% without positive",
    "purity": "purity %",
    "recall": "recall %",
    "other_images": "% in other images",
    "mass_on_positives": "% mass on P_i",
    "denominator_size": "denominator size",
}


def stats_table(rows: list[dict], formats: dict | None = None, headers: dict | None = None) -> str:
    """Rows of stats as a fixed-width text table at the precision the numbers support (stable for nbval).

    `formats` / `headers` add to (or override) the module's FORMATS / HEADERS for other statistics."""
    formats, headers = {**FORMATS, **(formats or {})}, {**HEADERS, **(headers or {})}
    keys = list(rows[0])
    cells = [[headers.get(k, k) for k in keys]]
    cells += [[_cell(k, r[k], formats) for k in keys] for r in rows]
    widths = [max(len(row[j]) for row in cells) for j in range(len(keys))]
    return "\n".join("  ".join(f"{c:>{w}}" for c, w in zip(row, widths, strict=True)) for row in cells)


__all__ = [
    "ghp_stats",
    "contrast_stats",
    "Explorer",
    "explore_pool_size",
    "explore_temperature",
    "sweep",
    "stats_table",
]
_ = np  # numpy is used by notebooks through this module's namespace

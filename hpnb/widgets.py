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


def ghp_stats(
    fs: FeatureSet, pool_size: int = 64, n_images: int = 16, seed: int = 0, symmetric: bool = True, split: bool = False
) -> dict:
    """Eq. 2–3 on cached features, anchors = all patches of the first `n_images` images, Q_ag from other images.

    mean |P_ag| per anchor; recall (share of the same-label pairs that are positives); the share of positive pairs
    that join two different images (the *global* part); the share of anchors without any positive; purity.
    split=True adds `purity_other`: the purity of the positives found in other images, the hidden positives that
    plain Eq. 1 would have pushed away as negatives."""
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
        **({"purity_other": purity(pos & (image[:, None] != image[None, :]), lab)} if split else {}),
    }


def neighbourhood_stats(fs: FeatureSet, n_clusters: int, pool_size: int = 64, seeds=(0, 1, 2)) -> dict:
    """What the probes and HP's mining see in one representation (raw features, or codes through
    `hpnb.probes.code_set`), averaged over pool and centroid seeds: the cone (`hpnb.probes.cone_stats`: patch_cos,
    centroid_cos, top_share, winners_at_start per seed) and the GHP sets (`ghp_stats` with split=True: other_images,
    purity, purity_other)."""
    import statistics

    from hpnb.probes import cone_stats

    flat = fs.feats.permute(0, 2, 3, 1).flatten(0, 2)
    cones = [cone_stats(flat, n_clusters, seed=k) for k in seeds]
    ghps = [ghp_stats(fs, pool_size, seed=k, split=True) for k in seeds]
    return {
        **{key: statistics.mean(c[key] for c in cones) for key in ("patch_cos", "centroid_cos", "top_share")},
        "winners_at_start": [c["winners_at_start"] for c in cones],
        "n_clusters": n_clusters,
        **{key: statistics.mean(g[key] for g in ghps) for key in ("other_images", "purity", "purity_other")},
    }


def contrast_setup(fs: FeatureSet, pool_size: int = 64, n_images: int = 16, seed: int = 0) -> dict:
    """What τ and ρ do not change, computed once: the anchors x, their GHP sets (Eq. 2–3, Q_ag from other images) and
    the random generator's state after drawing the pool (the ρ-sample continues from it)."""
    x, _ = _flat(fs, n_images)
    gen = torch.Generator().manual_seed(seed)
    c = criteria(x, anchor_pool(fs, pool_size, n_images, gen))
    return {"x": x, "pos": positive_block(x, x, c, c, 0), "state": gen.get_state(), "seed": seed}


def contrast_stats(
    fs: FeatureSet,
    tau: float = 0.6,
    rho: float = 0.05,
    pool_size: int = 64,
    n_images: int = 16,
    seed: int = 0,
    setup: dict | None = None,
) -> dict:
    """With backbone features standing in for z: mean probability mass on the GHP under τ, and the size of the
    denominator (P_ag ∪ a ρ-sample), for the code form's shared denominator. `setup` (`contrast_setup`) skips
    recomputing what τ and ρ do not change."""
    setup = setup or contrast_setup(fs, pool_size, n_images, seed)
    x, pos = setup["x"], setup["pos"]
    gen = torch.Generator()
    gen.set_state(setup["state"])
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


def ghp_examples(
    fs: FeatureSet, pool_size: int = 64, n_images: int = 16, n_anchors: int = 3, seed: int = 0
) -> list[dict]:
    """Fig. 5 on cached features: for `n_anchors` anchors of different classes (one per anchor image, the first
    images), the criterion c_i (Eq. 2), the anchor's GHP set P_i (Eq. 3, over all patches of the anchor images) and
    its purity. Each: image, (row, col), c_i, positives (flat patch indices over the anchor images), purity."""
    x, lab = _flat(fs, n_images)
    pool = anchor_pool(fs, pool_size, n_images, torch.Generator().manual_seed(seed))
    c = criteria(x, pool)
    h, w = fs.grid
    n = h * w
    out, used = [], set()
    for image in range(n_images):
        if len(out) == n_anchors:
            break
        labels = lab[image * n : (image + 1) * n]
        classes = [int(k) for k in labels.unique() if k >= 0 and int(k) not in used]
        if not classes:
            continue
        k = max(classes, key=lambda k: int((labels == k).sum()))  # the image's largest class not shown yet
        i = image * n + int((labels == k).nonzero()[len((labels == k).nonzero()) // 2])  # a patch in its middle
        pos = positive_block(x[i : i + 1], x, c[i : i + 1], c, i)[0]
        same = (lab[pos] == lab[i]) & (lab[pos] >= 0)
        labelled = (lab[pos] >= 0).sum().clamp_min(1)
        used.add(k)
        out.append(
            {
                "image": image,
                "cell": divmod(i - image * n, w),
                "criterion": float(c[i]),
                "positives": pos.nonzero()[:, 0],
                "purity": float(same.sum() / labelled),
            }
        )
    return out


def _outline(ax, cell: tuple[int, int], p: int, colour: str, lw: float = 1.5) -> None:
    from matplotlib.patches import Rectangle

    ax.add_patch(Rectangle((cell[1] * p - 0.5, cell[0] * p - 0.5), p, p, fill=False, edgecolor=colour, lw=lw))


def pool_size_figure(fs: FeatureSet, curve: list[dict], examples: list[dict], pool_size: int, n_images: int = 16):
    """What moving M does: each example anchor's image with the anchor (red) and its GHP in that image (yellow), with
    |P_i| and purity; beside them |P_i| and purity against M, the current M marked."""
    import matplotlib.pyplot as plt

    h, w = fs.grid
    p = fs.images.shape[1] // h
    fig, axes = plt.subplots(1, len(examples) + 1, figsize=(3.0 * len(examples) + 4.2, 3.2))
    for ax, ex in zip(axes, examples, strict=False):
        ax.imshow(fs.images[ex["image"]].numpy())
        local = ex["positives"][(ex["positives"] // (h * w)) == ex["image"]] - ex["image"] * h * w
        for j in local.tolist():
            _outline(ax, divmod(j, w), p, "yellow", 1.0)
        _outline(ax, ex["cell"], p, "red", 2.0)
        other = len(ex["positives"]) - len(local)
        ax.set_title(
            f"c_i = {ex['criterion']:.2f}: |P_i| = {len(ex['positives'])}\n"
            f"{other} in other images, purity {100 * ex['purity']:.0f} %",
            fontsize=9,
        )
        ax.axis("off")
    ax = axes[-1]
    ms = [r["M"] for r in curve]
    ax.plot(ms, [r["mean_positives"] for r in curve], "o-", color="tab:blue")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("pool size M")
    ax.set_ylabel("mean |P_i| per anchor", color="tab:blue")
    ax.axvline(pool_size, color="red", lw=1)
    twin = ax.twinx()
    twin.plot(ms, [100 * r["purity"] for r in curve], "s--", color="tab:green")
    twin.set_ylabel("purity (%)", color="tab:green")
    ax.set_title(f"M = {pool_size} (red line)", fontsize=9)
    fig.suptitle("GHP of three anchors (red) in their own image (yellow), Eq. 2–3", fontsize=10)
    fig.tight_layout()
    return fig


def anchor_softmax(
    fs: FeatureSet,
    tau: float = 0.6,
    rho: float = 0.05,
    pool_size: int = 64,
    n_images: int = 16,
    seed: int = 0,
    setup: dict | None = None,
) -> dict:
    """One anchor's contrastive softmax under τ and ρ (features standing in for z, the code form's denominator
    P_ag ∪ a ρ-sample): its denominator's weights sorted, which are positives, and the probability on positives."""
    setup = setup or contrast_setup(fs, pool_size, n_images, seed)
    x = setup["x"]
    i = len(x) // 2  # a fixed anchor, in the middle of the anchor images
    pos = setup["pos"][i]
    denom = pos | (torch.rand(len(x), generator=torch.Generator().manual_seed(setup["seed"] + 1)) < rho)
    denom[i] = False
    weights = torch.softmax((x[denom] @ x[i]) / tau, dim=0)
    order = weights.argsort(descending=True)
    return {
        "tau": tau,
        "rho": rho,
        "weights": weights[order],
        "positive": pos[denom][order],
        "mass_on_positives": float(weights[pos[denom]].sum()),
    }


def temperature_figure(one: dict, curve: list[dict] | None = None, shown: int = 60):
    """The softmax weights of one anchor's denominator, sorted (positives green, random negatives grey), with the
    probability on its positives; beside it, that probability against τ with the current τ marked."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if curve else 1, figsize=(10 if curve else 6, 3.0), squeeze=False)
    ax = axes[0, 0]
    wts, pos = one["weights"][:shown].numpy(), one["positive"][:shown].numpy()
    ax.bar(range(len(wts)), wts, color=["tab:green" if q else "0.6" for q in pos])
    ax.set_xlabel(f"denominator entries, by weight (first {len(wts)} of {len(one['weights'])})")
    ax.set_ylabel("softmax weight")
    ax.set_title(
        f"τ = {one['tau']:.2f}, ρ = {one['rho']:.2f}: {100 * one['mass_on_positives']:.0f} % on the positives (green)",
        fontsize=9,
    )
    if curve:
        ax = axes[0, 1]
        ax.plot([r["tau"] for r in curve], [100 * r["mass_on_positives"] for r in curve], "o-")
        ax.axvline(one["tau"], color="red", lw=1)
        ax.set_xlabel("temperature τ")
        ax.set_ylabel("probability on positives (%)")
        ax.set_title(f"this anchor, ρ = {one['rho']:.2f} (red: current τ)", fontsize=9)
    fig.tight_layout()
    return fig


@dataclass
class Explorer:
    """Sliders, an output area, the function it recomputes, the figure it draws and the last values it showed."""

    compute: callable
    draw: callable = None  # stats -> matplotlib figure (None: a one-row table)
    widget: object = None
    last: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    seconds: list = field(default_factory=list)  # wall time of each redraw (compute + draw)
    picture: object = None  # the last figure as rendered, an RGBA array (tests compare redraws with it)

    def update(self, **values) -> dict:
        """Recompute for the given slider values (what a slider move calls), redraw; returns and keeps the stats."""
        import time

        start = time.perf_counter()
        self.last = self.compute(**values)
        self.history.append(self.last)
        fig = self.draw(self.last) if self.draw is not None else None
        if self.widget is not None:
            out = self.widget.children[-1]
            out.clear_output(wait=True)
            with out:
                if fig is not None:
                    from IPython.display import display

                    display(fig)
                else:
                    print(stats_table([self.last]))
        if fig is not None:
            import matplotlib.pyplot as plt

            fig.canvas.draw()  # render now, so the measured time includes drawing
            self.picture = np.asarray(fig.canvas.buffer_rgba()).copy()
            plt.close(fig)
        self.seconds.append(time.perf_counter() - start)
        return self.last


def _explorer(compute, sliders: dict, draw=None) -> Explorer:
    import ipywidgets as W

    exp = Explorer(compute=compute, draw=draw)
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
    curve = [ghp_stats(fs, m, n_images) for m in values]  # once: the curves the figure marks the current M on

    def compute(pool_size):
        return {**ghp_stats(fs, pool_size, n_images), "examples": ghp_examples(fs, pool_size, n_images)}

    def draw(stats):
        return pool_size_figure(fs, curve, stats["examples"], stats["M"], n_images)

    return _explorer(compute, {"pool_size": slider}, draw)


def explore_temperature(fs: FeatureSet, n_images: int = 16, pool_size: int = 64) -> Explorer:
    """Sliders over τ and ρ: probability mass on the positives and the denominator size (M capped by the number of
    non-anchor images)."""
    import ipywidgets as W

    pool_size = min(pool_size, len(fs) - n_images)
    tau = W.FloatSlider(value=0.6, min=0.1, max=1.5, step=0.1, description="τ", continuous_update=False)
    rho = W.FloatSlider(value=0.05, min=0.0, max=1.0, step=0.05, description="ρ", continuous_update=False)
    taus = [round(0.1 * k, 1) for k in range(1, 16)]

    setup = contrast_setup(fs, pool_size, n_images)  # once: what τ and ρ do not change

    def compute(tau, rho):
        one = anchor_softmax(fs, tau, rho, setup=setup)
        curve = [anchor_softmax(fs, t, rho, setup=setup) for t in taus]  # cheap: one anchor's row
        return {**contrast_stats(fs, tau, rho, setup=setup), "anchor": one, "curve": curve}

    return _explorer(
        compute, {"tau": tau, "rho": rho}, lambda stats: temperature_figure(stats["anchor"], stats["curve"])
    )


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
    "purity_other": pct,
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
    "purity_other": "purity in other images %",
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

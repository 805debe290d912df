"""Redraw time of the notebooks' two widgets (pool size M; temperature τ and share ρ), on notebook 02's cached
features: every slider value once, after the explorer is built (what a user's slider release costs: the statistics
from cached features and the figure, rendered). No backbone runs: the features come from the cache.

    python benchmarks/widget_redraw.py [--threads 2]      # prints one line per move, then the median and maximum
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    import matplotlib

    matplotlib.use("Agg")
    from hpnb.backbones import load_backbone
    from hpnb.data import get_dataset
    from hpnb.features import extract_features
    from hpnb.widgets import explore_pool_size, explore_temperature

    fs = extract_features(load_backbone(), get_dataset("toy", "val", res=224, n=272), progress=False)  # notebook 02
    print(f"features {tuple(fs.feats.shape)}, {torch.get_num_threads()} threads")
    moves = {}
    t0 = time.perf_counter()
    pool = explore_pool_size(fs)
    print(f"pool-size explorer built in {time.perf_counter() - t0:.2f} s (the M curve once, then M = 64 drawn)")
    slider = pool.widget.children[0]
    for m in slider.options:
        if m != slider.value:
            slider.value = m
            print(f"  M = {m:3d}: {pool.seconds[-1]:.2f} s")
    moves["M"] = pool.seconds[1:]
    t0 = time.perf_counter()
    temp = explore_temperature(fs)
    print(f"temperature explorer built in {time.perf_counter() - t0:.2f} s")
    tau, rho = temp.widget.children[0], temp.widget.children[1]
    for value in (0.2, 0.4, 0.8, 1.2):
        tau.value = value
        print(f"  τ = {value:.1f}: {temp.seconds[-1]:.2f} s")
    for value in (0.1, 0.3, 0.6):
        rho.value = value
        print(f"  ρ = {value:.1f}: {temp.seconds[-1]:.2f} s")
    moves["τ, ρ"] = temp.seconds[1:]
    for name, secs in moves.items():
        print(f"{name} widget: {len(secs)} moves, median {statistics.median(secs):.2f} s, max {max(secs):.2f} s")


if __name__ == "__main__":
    main()

"""Seconds per training iteration with the backbone features from the cache vs the backbone run online.

    python benchmarks/train_modes.py --preset toy --iters 10 [--device cuda]

Cache mode pays the feature extraction once (clean view + `aug_views` fixed augmented views per image), then each
iteration only runs the heads and the loss. Online mode runs the frozen backbone on the clean and on a freshly
augmented view every iteration (the official behaviour): no disk, unlimited augmentations, more compute.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from hpnb.config import get_config
from hpnb.train import train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="toy")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--device", default=None)
    args = p.parse_args()
    for mode in ("cache", "online"):
        cfg = get_config(
            args.preset,
            backbone_mode=mode,
            max_iters=args.iters,
            val_every=10**9,
            checkpoint_every=10**9,
            log_every=1,
            device=args.device,
        )
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            train(cfg, out=out, progress=False)
            total = time.perf_counter() - t0
            rows = [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines()]
        per_iter = statistics.median(r["seconds"] for r in rows[1:])
        print(
            f"{args.preset} {mode:>6}: {per_iter:.3f} s/iteration (median of {len(rows) - 1}), "
            f"{total:.1f} s for {args.iters} iterations including set-up (features, pools, final validation)"
        )


if __name__ == "__main__":
    main()

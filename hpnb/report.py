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
    hp, fs = result.results["online"]["HP"], result.features
    columns = {"ground truth": fs.labels[:4].numpy()}
    columns.update({head: hp.samples[head].numpy() for head in hp.samples})
    label_grid(fs.images[:4].numpy(), columns, classes, class_colours(result.cfg, len(classes))).savefig(
        run / f"qualitative_{split}.png", dpi=72
    )
    confusion_figure(hp.confusion["cluster"], classes, title=f"HP cluster probe, {split}").savefig(
        run / f"confusion_{split}.png", dpi=72
    )
    plt.close("all")


HEADS = ("cluster", "cluster+crf", "linear", "linear+crf")


def like_for_like(summary: dict) -> str:
    """The Markdown table that leads every report: both protocols, HP's codes beside the raw backbone features."""
    protocols = summary["protocols"]
    first = next(iter(next(iter(protocols.values()))["results"].values()))
    heads = [h for h in HEADS if h in first]
    lines = [
        "| protocol | features | " + " | ".join(f"{h} Acc | {h} mIoU" for h in heads) + " | empty clusters |",
        "|---|---|" + "---:|" * (2 * len(heads) + 1),
    ]
    for key, protocol in protocols.items():
        label = "(i) online probes" if key == "online" else "(ii) converged"
        if key == "online":
            label += f", {protocol['probe_steps']} steps"
        for k, (method, res) in enumerate(protocol["results"].items()):
            cells = " | ".join(f"{res[h]['acc']:.1f} | {res[h]['miou']:.1f}" if h in res else "– | –" for h in heads)
            lines.append(f"| {label if k == 0 else ''} | {method} | {cells} | {res['empty_clusters']} |")
    lines += ["", *(f"- {p['description']}." for p in protocols.values())]
    return "\n".join(lines)


def markdown(summary: dict, split: str) -> str:
    """Markdown: the like-for-like table (both protocols), then per-class IoU and the qualitative figure."""
    step = summary.get("checkpoint_step")
    lines = [
        f"# Evaluation on {split}",
        "",
        f"Checkpoint: {summary['selection']} (step {step}).",
        "",
        "## HP beside the raw backbone features, under the same protocol",
        "",
        like_for_like(summary),
    ]
    ious = {}
    for key, protocol in summary["protocols"].items():
        for method, res in protocol["results"].items():
            for head in ("cluster", "linear"):
                ious[f"{'(i)' if key == 'online' else '(ii)'} {method} {head}"] = res[head]["iou"]
    lines += ["", "## Per-class IoU (%)", "", iou_table(ious, summary["classes"])]
    lines += ["", f"![qualitative](qualitative_{split}.png)", ""]
    return "\n".join(lines)


ROWS = (("online", "HP"), ("online", "raw features"), ("converged", "HP"), ("converged", "raw features"))
METRICS = (("cluster", "acc"), ("cluster", "miou"), ("linear", "acc"), ("linear", "miou"))


def _mean_std(values: list[float]) -> str:
    import statistics

    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {std:.1f}"


def spread_table(summaries: list[dict], label: str = "") -> list[str]:
    """Markdown rows (no header): both protocols, HP and the raw features, mean ± std over the given evaluation
    summaries (one per seed), then HP − raw computed per seed. `label` fills the first column of the first row."""
    lines = []
    rows = [*ROWS, ("online", "HP − raw"), ("converged", "HP − raw")]
    for k, (protocol, method) in enumerate(rows):
        cells = []
        for head, metric in METRICS:
            per_seed = []
            for s in summaries:
                res = s["protocols"][protocol]["results"]
                hp_minus_raw = res["HP"][head][metric] - res["raw features"][head][metric]
                per_seed.append(hp_minus_raw if method == "HP − raw" else res[method][head][metric])
            cells.append(_mean_std(per_seed))
        empty = (
            "–"
            if method == "HP − raw"
            else _mean_std([s["protocols"][protocol]["results"][method]["empty_clusters"] for s in summaries])
        )
        name = "(i) online probes" if protocol == "online" else "(ii) converged"
        lines.append(f"| {label if k == 0 else ''} | {name} | {method} | " + " | ".join(cells) + f" | {empty} |")
    return lines


SPREAD_HEADER = [
    "| runs | protocol | features | cluster Acc | cluster mIoU | linear Acc | linear mIoU | empty clusters |",
    "|---|---|---|---:|---:|---:|---:|---:|",
]

"""What a user reads after an evaluation: `hpnb.report.evaluate_run` evaluates a run (`hpnb.evaluate`) and writes
its figures (qualitative grid, confusion matrix) and a Markdown report beside eval_<split>.json.

    python -m hpnb evaluate runs/toy --split test      # the command line calls this
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

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
    from hpnb.utils import atomic_write_text  # a run folder's files are written whole or not at all

    atomic_write_text(Path(run) / f"report_{split}.md", markdown(result.summary, split))
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


def _mean_std(values: list[float], signed: bool = False) -> str:
    import statistics

    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):{'+' if signed else ''}.1f} ± {std:.1f}"


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


PROTOCOL_NAMES = {"online": "(i) online probes", "converged": "(ii) converged"}


def score(summary: dict, protocol: str, features: str, head: str, metric: str) -> float:
    """One number of an evaluation summary: e.g. score(s, "converged", "HP", "cluster", "miou")."""
    return summary["protocols"][protocol]["results"][features][head][metric]


def paired(
    a: list[dict], b: list[dict] | None, protocol: str, head: str, metric: str, b_features: str = "HP"
) -> tuple[float, float, list[float]]:
    """a − b computed per seed (the lists in the same seed order): mean, sample std and the per-seed differences.
    b=None compares a's HP codes with a's own raw features (the baseline of the same seed)."""
    import statistics

    if b is not None and len(a) != len(b):
        raise ValueError(f"paired differences need one summary per seed on both sides, found {len(a)} and {len(b)}")
    diffs = [
        score(x, protocol, "HP", head, metric)
        - (
            score(x, protocol, "raw features", head, metric)
            if b is None
            else score(y, protocol, b_features, head, metric)
        )
        for x, y in zip(a, a if b is None else b, strict=True)
    ]
    return statistics.mean(diffs), (statistics.stdev(diffs) if len(diffs) > 1 else 0.0), diffs


def verdict(mean: float, std: float) -> str:
    """The reading a seed spread supports: "clear" when the mean difference is more than twice its spread."""
    if abs(mean) > 2 * std and mean != 0:
        return "clear: above" if mean > 0 else "clear: below"
    return "within the seed spread"


def comparison_table(variants: dict[str, list[dict]], label: str = "") -> list[str]:
    """Markdown rows (header `COMPARISON_HEADER`): per protocol, the raw backbone features (the baseline stored with
    the first variant's runs), each variant's trained codes, then the per-seed differences: the first variant minus
    each other one, and each variant minus the raw features; the last column counts the cluster probe's empty
    clusters. All lists hold one summary per seed, in seed order."""
    names = list(variants)
    first = variants[names[0]]

    def empty(runs: list[dict], protocol: str, features: str) -> str:
        counts = [s["protocols"][protocol]["results"][features]["empty_clusters"] for s in runs]
        return f"{_mean_std(counts)} of {len(runs[0]['classes'])}"

    lines = []
    for protocol, pname in PROTOCOL_NAMES.items():
        rows = [("raw features", [[score(s, protocol, "raw features", h, m) for s in first] for h, m in METRICS])]
        counts = [empty(first, protocol, "raw features")]
        for n in names:
            rows.append((n, [[score(s, protocol, "HP", h, m) for s in variants[n]] for h, m in METRICS]))
            counts.append(empty(variants[n], protocol, "HP"))
        for n in names[1:]:
            rows.append((f"{names[0]} − {n}", [paired(first, variants[n], protocol, h, m)[2] for h, m in METRICS]))
        for n in names:
            rows.append((f"{n} − raw", [paired(variants[n], None, protocol, h, m)[2] for h, m in METRICS]))
        counts += ["–"] * (len(rows) - len(counts))
        for k, ((row, values), count) in enumerate(zip(rows, counts, strict=True)):
            first_cell = label if (protocol == "online" and k == 0) else ""
            cells = " | ".join(_mean_std(v, signed=" − " in row) for v in values)
            lines.append(f"| {first_cell} | {pname if k == 0 else ''} | {row} | {cells} | {count} |")
    return lines


# The saved multi-seed runs of results/ that the notebooks, the demo report and the README compare (written by
# tools/camvid_results.sh and tools/sweep.py; never edited by hand): name -> (label, folder, {row: file pattern}).
SAVED_RUNS: dict[str, tuple[str, str, dict[str, str]]] = {
    "camvid": (
        "CamVid test, camvid-cpu preset (270 iterations)",
        "camvid",
        {"(a) full HP": "full_seed*_test.json", "(g) plain Eq. 1": "eq1_seed*_test.json"},
    ),
    "camvid-table4": (
        "CamVid test, camvid-cpu preset (270 iterations)",
        "camvid",
        {
            "(a) full HP": "full_seed*_test.json",
            "(b) no LHP": "no-lhp_seed*_test.json",
            "(c) no task-specific GHP": "no-sp_seed*_test.json",
            "(g) plain Eq. 1": "eq1_seed*_test.json",
        },
    ),
    "toy": (
        "toy world test, toy preset (222 iterations)",
        "sweep/toy-preset",
        {"(a) full HP": "toy_preset__seed*.json", "(g) plain Eq. 1": "plain_Eq._1__g___seed*.json"},
    ),
    "toy-notebook": (
        "toy world test, toy-notebook preset (36 iterations)",
        "sweep/toy-table4",
        {"(a) full HP": "_a__full__seed*.json", "(g) plain Eq. 1": "_g__plain_Eq._1__seed*.json"},
    ),
    "toy-table4": (
        "toy world test, toy-notebook preset (36 iterations)",
        "sweep/toy-table4",
        {
            "(a) full HP": "_a__full__seed*.json",
            "(b) no LHP": "_b__no_LHP__seed*.json",
            "(c) no task-specific GHP": "_c__no_task-specific_GHP__seed*.json",
            "(g) plain Eq. 1": "_g__plain_Eq._1__seed*.json",
        },
    ),
    **{
        f"toy-link-{link}": (
            f"toy world test, toy-notebook preset, toy_link {link}",
            "sweep/toy-link",
            {
                "(a) full HP": f"_a__full__toy_link_{link}__seed*.json",
                "(g) plain Eq. 1": f"_g__plain_Eq._1__toy_link_{link}__seed*.json",
            },
        )
        for link in (1.0,)
    },
}


def saved_runs(name: str, split: str = "test", root: str | Path | None = None) -> dict[str, list[dict]]:
    """{row: evaluation summaries in seed order} of one entry of `SAVED_RUNS` (rows without files are left out).
    Sweep records (tools/sweep.py) hold one summary per split; the CamVid copies are test summaries."""
    import json
    import re

    from hpnb.utils import HpnbError, repo_root

    if name not in SAVED_RUNS:
        raise HpnbError(f"unknown saved runs {name!r}; known: {', '.join(SAVED_RUNS)}")
    _, folder, rows = SAVED_RUNS[name]
    base = Path(root or repo_root() / "results") / folder
    out = {}
    for row, pattern in rows.items():
        found = []
        for path in base.glob(pattern):
            record = json.loads(path.read_text())
            seed = record.get("seed", int(re.search(r"seed(\d+)", path.name).group(1)))
            found.append((seed, record["eval"][split] if "eval" in record else record))
        if found:
            out[row] = [summary for _, summary in sorted(found, key=lambda t: t[0])]
    seeds = {len(v) for v in out.values()}
    if len(seeds) > 1:
        raise HpnbError(
            f"results/{folder}: the rows hold different numbers of seeds ({sorted(seeds)}); finish the runs"
        )
    return out


def saved_comparison(names: tuple[str, ...] = ("camvid", "toy-notebook"), split: str = "test") -> str:
    """Markdown: `comparison_table` of each saved entry that has runs (full HP, plain Eq. 1, the raw features, per
    protocol, mean ± std over seeds, differences per seed)."""
    lines = list(COMPARISON_HEADER)
    for name in names:
        runs = saved_runs(name, split)
        if runs:
            n = len(next(iter(runs.values())))
            lines += comparison_table(runs, f"{SAVED_RUNS[name][0]}, {n} seeds")
    return "\n".join(lines)


def table4_deltas(
    datasets: dict[str, dict[str, list[dict]]], metric: str = "miou", head: str = "cluster"
) -> dict[str, dict[str, dict[str, tuple[float, float]]]]:
    """{protocol: {dataset label: {row: (mean, std)}}}: each row's score minus the first row's (full HP), and the raw
    features' minus the first row's, computed per seed (`hpnb.viz.table4_delta_figure` draws it). `datasets` maps a
    label to {row: summaries in seed order} (`saved_runs`)."""
    out: dict = {}
    for protocol in PROTOCOL_NAMES:
        out[protocol] = {}
        for label, runs in datasets.items():
            names = list(runs)
            ref = runs[names[0]]
            rows = {n: paired(runs[n], ref, protocol, head, metric)[:2] for n in names[1:]}
            mean, std, _ = paired(ref, None, protocol, head, metric)
            rows["raw features"] = (-mean, std)
            out[protocol][f"{label} ({len(ref)} seeds)"] = rows
    return out


# Notebook 06's own run: full HP against plain Eq. 1 on CamVid, one seed of the saved runs' preset (results/camvid
# holds all three seeds of the same configs), timed by benchmarks/student_run.py.
STUDENT_PRESET, STUDENT_SEED = "camvid-cpu", 0
STUDENT_ROWS = {"(a) full HP": {}, "(g) plain Eq. 1": {"objective": "self"}}
STUDENT_EVAL = dict(protocols=("converged",), raw_features=False)  # (ii) on HP's rows: what (a) > (g) needs


def student_configs(preset: str = STUDENT_PRESET, seed: int = STUDENT_SEED, **overrides) -> dict:
    """{row: HPConfig} of the student's head-to-head run (no CRF: the saved runs were scored without it)."""
    from hpnb.config import get_config

    return {
        row: get_config(preset, seed=seed, crf=False, **switch, **overrides) for row, switch in STUDENT_ROWS.items()
    }


def head_to_head(
    configs: dict,
    root: str | Path,
    split: str | None = None,
    backbone=None,
    progress: bool = True,
    protocols: tuple[str, ...] = ("online", "converged"),
    raw_features: bool = True,
) -> dict[str, dict]:
    """Train (or load) each config of {row: HPConfig} into root/<row as a folder name> and evaluate its checkpoint
    selected on val on `split` (default: the config's test split), without the CRF: {row: evaluation summary}.
    `protocols` and `raw_features=False` skip what the comparison does not need (`evaluate_on_split`); with both
    protocols and the raw features, `comparison_table({row: [summary]})` sets the rows side by side, and `paired`
    compares HP's rows in any case."""
    from hpnb.train import train_or_load

    out = {}
    for row, cfg in configs.items():
        folder = Path(root) / "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in row).strip("_")
        run = train_or_load(cfg, folder, backbone=backbone, progress=progress)
        out[row] = evaluate_on_split(
            run.out, split, crf=False, progress=progress, protocols=protocols, raw_features=raw_features
        ).summary
    return out


COMPARISON_HEADER = [
    "| runs | protocol | row | cluster Acc | cluster mIoU | linear Acc | linear mIoU | empty clusters |",
    "|---|---|---|---:|---:|---:|---:|---:|",
]


SPREAD_HEADER = [
    "| runs | protocol | features | cluster Acc | cluster mIoU | linear Acc | linear mIoU | empty clusters |",
    "|---|---|---|---:|---:|---:|---:|---:|",
]


# ----------------------------------------------------------------------------------------------------------
# Runs without labels (your own images): what the clusters look like, so a person can name them
# ----------------------------------------------------------------------------------------------------------


def closest_patches(
    codes: torch.Tensor, centroid: torch.Tensor, n: int, image_of: torch.Tensor | None = None, per_image: int = 0
) -> torch.Tensor:
    """Indices (≤ n,) of the patch codes (N, K) with the largest cosine to one centroid (K,), nearest first. With
    `image_of` (N,), the image of each row, at most `per_image` patches of one image are taken: the ranking goes on
    past an image's surplus, so that one photo full of the cluster does not fill the strip."""
    cos = F.normalize(codes.float(), dim=1) @ F.normalize(centroid.float(), dim=0)
    if image_of is None or per_image <= 0:
        return cos.topk(min(n, len(cos))).indices
    taken: dict[int, int] = {}
    kept = []
    for idx in cos.argsort(descending=True).tolist():
        image = int(image_of[idx])
        if taken.get(image, 0) < per_image:
            taken[image] = taken.get(image, 0) + 1
            kept.append(idx)
            if len(kept) == n:
                break
    return torch.tensor(kept, dtype=torch.long)


@torch.no_grad()
def nearest_patches(fs, model, n: int = 8, per_image: int = 2, context: int = 1, size: int = 56):
    """Per cluster, crops (n, size, size, 3) uint8 around the patches nearest its centroid (at most `per_image` from
    one image, `context` patches around each), and each cluster's share of the patches (argmax over clusters).
    The codes are computed on the model's device and ranked on the CPU."""
    device = next(model.parameters()).device
    codes = torch.cat(
        [model.heads.seg(fs.feats[i : i + 16].to(device).float()).cpu() for i in range(0, len(fs), 16)]
    )  # (N, K, h, w)
    b, k, gh, gw = codes.shape
    flat = codes.permute(0, 2, 3, 1).reshape(-1, k)  # (N·h·w, K), row = image·h·w + y·w + x
    centroids = model.cluster_probe.centroids.detach().cpu()
    assign = (F.normalize(flat, dim=1) @ F.normalize(centroids, dim=1).T).argmax(1)
    shares = [float((assign == c).float().mean()) for c in range(len(centroids))]
    p = fs.images.shape[1] // gh  # pixels per patch
    strips = []
    image_of = torch.arange(len(flat)) // (gh * gw)
    for c in range(len(centroids)):
        crops = []
        for idx in closest_patches(flat, centroids[c], n, image_of, per_image).tolist():
            image, rest = divmod(idx, gh * gw)
            y, x = divmod(rest, gw)
            y0, x0 = max(0, min(y - context, gh - 2 * context - 1)), max(0, min(x - context, gw - 2 * context - 1))
            span = (2 * context + 1) * p
            crop = fs.images[image, y0 * p : y0 * p + span, x0 * p : x0 * p + span].numpy()
            crops.append(np.asarray(Image.fromarray(crop).resize((size, size), Image.BILINEAR)))
        strips.append(np.stack(crops))
    return strips, shares


def folder_images(cfg, split: str) -> list[tuple[str, Path]]:
    """(name, file) of each image of a folder run's split (the held-out tenth for "val")."""
    from hpnb.data.folder import ImageFolder

    samples = ImageFolder(cfg.data_root, split, cfg.val_res, n_clusters=cfg.n_clusters).samples
    return [(name, path) for name, path, _ in samples]


def folder_report(run, split: str | None = None, n_images: int = 4, crf: bool = True, progress: bool = False) -> dict:
    """The report of a run without labels: overlays of `n_images` held-out photos (photo, cluster map, overlay, with
    a legend) -> overlay_<split>.png; the patches nearest each centroid -> clusters.png; report_<split>.md. Names
    from names.json (`hpnb.predict.name_clusters`) are used everywhere; returns what was written."""
    import json

    import matplotlib.pyplot as plt

    from hpnb.data.base import read_photo
    from hpnb.features import extract_features
    from hpnb.predict import Segmenter
    from hpnb.runs import dataset_for, selected_step
    from hpnb.viz import cluster_overlays, cluster_strips

    use_headless_backend()
    run = Path(run)
    seg = Segmenter(run, crf=crf)
    cfg, split = seg.cfg, split or seg.cfg.test_split
    files = folder_images(cfg, split)[:n_images]
    images = [read_photo(path) for _, path in files]  # as training read them (EXIF, 16-bit, very large photos)
    labels = [seg(im) for im in images]
    names = [name for name, _ in files]
    fig = cluster_overlays(images, labels, seg.names, seg.colours, titles=names)
    fig.savefig(run / f"overlay_{split}.png", dpi=100)
    train = extract_features(  # the trainer's cache (cache mode): no backbone run
        seg.backbone, dataset_for(cfg, cfg.train_split, cfg.res, cfg.n_train), progress=progress
    )
    strips, shares = nearest_patches(train, seg.model)
    cluster_strips(strips, seg.names, seg.colours, shares).savefig(run / "clusters.png", dpi=100)
    plt.close("all")
    metrics = json.loads((run / "metrics.json").read_text())["best"]
    summary = {
        "run": str(run),
        "split": split,
        "checkpoint_step": selected_step(run),
        "selection": "lowest HP loss (Eq. 11, λ = 1) on the held-out images, same negatives at every validation",
        "held_out_loss": metrics.get("held_out_loss"),
        "clusters": [
            {"id": k, "name": n, "share": round(s, 4)} for k, (n, s) in enumerate(zip(seg.names, shares, strict=True))
        ],
        "figures": [f"overlay_{split}.png", "clusters.png"],
    }
    rows = [f"| {k} | {n} | {100 * s:.1f} % |" for k, (n, s) in enumerate(zip(seg.names, shares, strict=True))]
    from hpnb.utils import atomic_write_text  # a run folder's files are written whole or not at all

    atomic_write_text(
        run / f"report_{split}.md",
        "\n".join(
            [
                f"# Clusters of {run.name} (no labels)",
                "",
                f"Checkpoint: {summary['selection']} (step {summary['checkpoint_step']}).",
                "",
                "| cluster | name | share of training patches |",
                "|---:|---|---:|",
                *rows,
                "",
                'Name clusters in names.json beside this report, e.g. {"0": "sky", "3": "cat"}, then run '
                f"`python -m hpnb evaluate {run}` again.",
                "",
                f"![overlays](overlay_{split}.png)",
                "",
                "![clusters](clusters.png)",
                "",
            ]
        ),
    )
    atomic_write_text(run / f"eval_{split}.json", json.dumps(summary, indent=2))
    return summary

"""A run folder: what a training run writes and how it is read back, in one place for training and evaluation.

runs/<name>/
  config.json      the resolved HPConfig
  log.jsonl        one line per logged step (loss parts, λ, probe losses, validation)
  checkpoint.pt    the last state (every `checkpoint_every` steps and at the end): exact resume
  best.pt          the state selected on val (cluster Acc + mIoU + linear Acc + mIoU, the official rule)
  last_good.pt     written when the loss turned NaN
  metrics.json     {"best": ..., "last": ...} validation scores
  eval_<split>.json, report_<split>.md, figures   written by the evaluation
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from hpnb.config import HPConfig
from hpnb.utils import HpnbError, atomic_save

CONFIG, LOG, METRICS = "config.json", "log.jsonl", "metrics.json"
CHECKPOINT, BEST, LAST_GOOD = "checkpoint.pt", "best.pt", "last_good.pt"


def dataset_for(cfg: HPConfig, split: str, res: int, n: int | None = None):
    """The configured dataset split through the one registry (`hpnb.data.get_dataset`); `n` first items."""
    from hpnb.data import get_dataset

    train = split == cfg.train_split
    return get_dataset(
        cfg.dataset,
        split,
        root=cfg.data_root,
        res=res,
        transform="train" if train else "val",
        crop_type=cfg.crop_type if train else None,
        n=n,
        seed=cfg.seed,
        n_clusters=cfg.n_clusters,
        toy_link=cfg.toy_link,
    )


def run_steps(cfg: HPConfig) -> int:
    """The number of iterations a config trains for: epochs × (training images // batch), capped by max_iters."""
    n_train = len(dataset_for(cfg, cfg.train_split, cfg.res, cfg.n_train))
    return min(cfg.epochs * (n_train // cfg.batch_size), cfg.max_iters or 10**9)


def save_state(state: dict, path: Path) -> Path:
    """Atomic save (`hpnb.utils.atomic_save`): an interrupted run never leaves half a checkpoint."""
    return atomic_save(state, path)


def load_checkpoint(
    path: str | Path, cfg: HPConfig | None = None, in_dim: int | None = None, n_classes: int | None = None
) -> dict:
    """Read a checkpoint (weights_only) and check it belongs to this backbone, K and class count."""
    path = Path(path)
    if not path.is_file():
        raise HpnbError(f"no checkpoint at {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    meta = json.loads(state["meta"])
    expected = {
        "backbone": cfg.backbone if cfg else None,
        "dim": cfg.dim if cfg else None,
        "in_dim": in_dim,
        "n_classes": n_classes,
    }
    wrong = {k: (meta[k], v) for k, v in expected.items() if v is not None and meta[k] != v}
    if wrong:
        raise HpnbError(
            f"{path} does not fit this run: "
            + ", ".join(f"{k} is {a} there, {b} here" for k, (a, b) in wrong.items())
            + ". Use a run folder of its own, or the same backbone and dim (K)."
        )
    return state


def load_run(run, which: str = "best"):
    """(config, HPModel in eval mode) of a run folder; `which` = "best" (selected on val) or "last"."""
    from hpnb.model import HPModel

    run = Path(run)
    if not (run / CONFIG).is_file():
        raise HpnbError(
            f"{run} is not an hpnb run folder (no {CONFIG}). Train one first: python -m hpnb train --preset toy"
        )
    cfg = HPConfig.load(run / CONFIG)
    path = run / (BEST if which == "best" else CHECKPOINT)
    if which == "best" and not path.is_file():
        path = run / CHECKPOINT
    state = load_checkpoint(path, cfg)
    meta = json.loads(state["meta"])
    model = HPModel(meta["in_dim"], meta["dim"], meta["n_classes"], cfg.dropout, meta["form"])
    model.load_state_dict(state["model"])
    model.eval()
    model.classes = meta["classes"]
    return cfg, model


def read_log(run) -> list[dict]:
    """The logged steps of a run (empty when there is no log yet)."""
    path = Path(run) / LOG
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.is_file() else []


def append_log(run, row: dict) -> None:
    """Add one logged step."""
    with open(Path(run) / LOG, "a") as fh:
        fh.write(json.dumps(row) + "\n")


def truncate_log(run, step: int) -> None:
    """Keep the log lines up to `step` (a resumed run rewrites what came after its checkpoint)."""
    path = Path(run) / LOG
    if path.is_file():
        path.write_text("".join(json.dumps(row) + "\n" for row in read_log(run) if row["step"] <= step))


def selected_step(run, which: str = "best") -> int:
    """The training step of a run's checkpoint: the one selected on val (best.pt) or the last one. It is the budget
    of the baseline's linear probe, so that it trains as many steps as the HP probe it is compared with."""
    metrics = Path(run) / METRICS
    if which == "best" and metrics.is_file():
        best = json.loads(metrics.read_text()).get("best", {})
        if "step" in best:
            return int(best["step"])
    ckpt = Path(run) / CHECKPOINT
    if ckpt.is_file():
        return int(torch.load(ckpt, map_location="cpu", weights_only=True)["step"])
    rows = read_log(run)
    return max(1, rows[-1]["step"]) if rows else 200


def finished(out: Path, cfg: HPConfig, total: int) -> bool | None:
    """True: `out` holds this config, trained to the end; False: this config, unfinished; None: empty or another
    config."""
    saved = out / CONFIG
    if not saved.is_file() or json.loads(saved.read_text()) != json.loads(json.dumps(cfg.to_dict())):
        return None
    ckpt = out / CHECKPOINT
    return (
        ckpt.is_file()
        and (out / METRICS).is_file()
        and torch.load(ckpt, map_location="cpu", weights_only=True)["step"] == total
    )

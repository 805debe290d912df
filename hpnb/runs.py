"""A run folder: what a training run writes and how it is read back, in one place for training and evaluation.

runs/<name>/
  config.json      the resolved HPConfig; the folder belongs to it (`check_run_folder`: another config is refused)
  log.jsonl        one line per logged step (loss parts, λ, probe losses, validation); a torn last line is dropped
  checkpoint.pt    the last state (every `checkpoint_every` steps and at the end): exact resume
  best.pt          the state selected on val (cluster Acc + mIoU + linear Acc + mIoU, the official rule)
  last_good.pt     written when the loss turned NaN
  metrics.json     {"best": ..., "last": ...} validation scores ("best" has step null when every score was NaN)
  eval_<split>.json, report_<split>.md, figures   written by the evaluation

Every file is written whole or not at all (`hpnb.utils.atomic_save`, `atomic_write_text`); the log grows by one
write per line (`append_log`). Checkpoints carry a `format` number (`FORMAT`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from pathlib import Path

import torch

from hpnb.config import HPConfig
from hpnb.utils import HpnbError, atomic_save, atomic_write_text

CONFIG, LOG, METRICS = "config.json", "log.jsonl", "metrics.json"
CHECKPOINT, BEST, LAST_GOOD = "checkpoint.pt", "best.pt", "last_good.pt"
RUN_FILES = (CONFIG, LOG, METRICS, CHECKPOINT, BEST, LAST_GOOD)

# The checkpoint layout: 2 adds `format` and the run's config in `meta`. Checkpoints written before the field existed
# have the layout of format 1 and are read as such (the runs of notebooks 04-07 in runs/ are of that kind).
FORMAT = 2
OLDEST_FORMAT = 1

# Fields that may differ when a run is resumed: they do not change the trained weights (the DataLoader's processes read
# the same items; the CRF is applied at evaluation). Everything else must match: epochs and max_iters too, since λ's
# ramp (Eq. 11's warm-up, `hpnb.losses.lambda_schedule`) is a function of the run's length.
RESUME_FREE = ("workers", "crf", "crf_workers")


class RunWarning(UserWarning):
    """Something about a run folder that the reader should know: a dropped torn log line, a NaN validation score,
    a fallback from best.pt to the last checkpoint."""


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


def run_size(cfg: HPConfig) -> tuple[int, int, int]:
    """(training images, iterations per epoch, steps) of a config: steps = epochs × (images // batch), capped by
    max_iters."""
    n_train = len(dataset_for(cfg, cfg.train_split, cfg.res, cfg.n_train))
    per_epoch = n_train // cfg.batch_size
    return n_train, per_epoch, min(cfg.epochs * per_epoch, cfg.max_iters or 10**9)


def run_steps(cfg: HPConfig) -> int:
    """The number of iterations a config trains for: epochs × (training images // batch), capped by max_iters."""
    return run_size(cfg)[2]


# ---- the folder's config ------------------------------------------------------------------------------------


def config_changes(old: HPConfig, new: HPConfig, ignore: tuple[str, ...] = ()) -> dict[str, tuple]:
    """{field: (old value, new value)} of the fields that differ, in the config's field order."""
    a, b = (json.loads(json.dumps(dataclasses.asdict(c))) for c in (old, new))
    return {k: (a[k], b[k]) for k in a if k not in ignore and a[k] != b[k]}


def describe_changes(changes: dict[str, tuple]) -> str:
    """'tau 0.6 → 0.5, epochs 2 → 3' (JSON spelling of the values: null, true, false)."""
    return ", ".join(f"{k} {json.dumps(a)} → {json.dumps(b)}" for k, (a, b) in changes.items())


def check_run_folder(out: str | Path, cfg: HPConfig, resume: bool = False) -> None:
    """Refuse, before anything is loaded or written, a folder that belongs to another run: one whose config.json
    holds another config (on resume: another in anything but `RESUME_FREE`), or one with run files and no config.json.
    An empty or missing folder, or one of this very config, passes (without `resume` it is trained again from 0)."""
    out = Path(out)
    saved = out / CONFIG
    if not saved.is_file():
        found = [name for name in RUN_FILES if (out / name).is_file()]
        if found:
            raise HpnbError(
                f"{out} holds run files ({', '.join(found)}) but no {CONFIG}, so hpnb cannot tell which config wrote "
                f"them and will not write over them. Train into a new folder (--out {out}-new), or delete {out} first."
            )
        return
    changes = config_changes(HPConfig.load(saved), cfg, ignore=RESUME_FREE if resume else ())
    if not changes:
        return
    what = describe_changes(changes)
    if resume:
        raise HpnbError(
            f"cannot resume {out}: its run was trained with another config ({what}; saved → requested). A resumed run "
            f"must keep the saved config (only {', '.join(RESUME_FREE)} may change; epochs and max_iters may not, "
            "since λ's ramp depends on the run's length). Resume with the saved values (they are in "
            f"{saved}), or train the new config into a new folder: python -m hpnb train ... --out {out}-new"
        )
    raise HpnbError(
        f"{out} holds the run of another config ({what}; saved → requested) and hpnb will not write over it. Train "
        f"into a new folder: python -m hpnb train ... --out {out}-new; or continue that run with its own config "
        f"(--resume, with the values in {saved})."
    )


# ---- checkpoints ----------------------------------------------------------------------------------------------


def save_state(state: dict, path: Path) -> Path:
    """Atomic save (`hpnb.utils.atomic_save`) with the checkpoint `format`: an interrupted or failed save (disk full)
    leaves the previous file intact and no .part behind."""
    return atomic_save({**state, "format": FORMAT}, path)


def _next_step(path: Path) -> str:
    """What to do with a damaged or unreadable checkpoint, by its role in the run folder."""
    run = path.parent
    if path.name == CHECKPOINT:
        return (
            f"delete it and train the run again (python -m hpnb train ... --out {run} --resume starts at step 0 "
            "when no checkpoint.pt is left), or train into a new folder"
        )
    if path.name == BEST:
        return (
            f"delete it and evaluate the last state instead (python -m hpnb evaluate {run} --checkpoint last), "
            "or train the run again into a new folder"
        )
    return "delete it (or replace it with an intact copy) and train again"


def read_state(path: str | Path) -> dict:
    """torch.load(weights_only) of an hpnb checkpoint, with a clear HpnbError when it is missing, damaged, or of a
    format this hpnb does not read (older than `OLDEST_FORMAT` or newer than `FORMAT`; none = format 1)."""
    path = Path(path)
    if not path.is_file():
        raise HpnbError(f"no checkpoint at {path}. Train the run first: python -m hpnb train --preset toy --out DIR")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError:
        raise
    except Exception as err:  # noqa: BLE001  cut short, random bytes: torch's weights-only unpickler then raises
        # anything (UnpicklingError, EOFError, IndexError, KeyError, AssertionError, ...), depending on the bytes
        from hpnb.backbones import _load_failure

        raise HpnbError(
            f"{path} is damaged: torch cannot read it ({_load_failure(err).split('. ')[0]}); a save cut short, or a "
            "copy gone wrong. "
            f"Nothing in it can be used: {_next_step(path)}."
        ) from err
    if not isinstance(state, dict) or "meta" not in state or "model" not in state:
        raise HpnbError(
            f"{path} is not an hpnb checkpoint (expected a dict with 'model' and 'meta', found "
            f"{type(state).__name__}{' with keys ' + str(sorted(state)[:6]) if isinstance(state, dict) else ''}). "
            f"{_next_step(path).capitalize()}."
        )
    fmt = state.get("format", OLDEST_FORMAT)
    if not isinstance(fmt, int) or fmt < OLDEST_FORMAT:
        raise HpnbError(
            f"{path} has checkpoint format {fmt!r}, older than this hpnb reads (formats {OLDEST_FORMAT}-{FORMAT}): "
            f"{_next_step(path)}."
        )
    if fmt > FORMAT:
        raise HpnbError(
            f"{path} has checkpoint format {fmt}, newer than this hpnb reads (formats {OLDEST_FORMAT}-{FORMAT}): it "
            "was written by a newer hpnb. Update hpnb (git pull, then pip install -e .), or train the run again with "
            "this one into a new folder."
        )
    return state


def checkpoint_step(run) -> int | None:
    """The step of a run folder's checkpoint.pt (None when there is none)."""
    path = Path(run) / CHECKPOINT
    return int(read_state(path)["step"]) if path.is_file() else None


def load_checkpoint(
    path: str | Path, cfg: HPConfig | None = None, in_dim: int | None = None, n_classes: int | None = None
) -> dict:
    """Read a checkpoint (`read_state`) and check it belongs to this backbone, K and class count, and, when it
    carries its config (format 2), to this config in everything but `RESUME_FREE`."""
    path = Path(path)
    state = read_state(path)
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
    if cfg is not None and "config" in meta:
        changes = config_changes(HPConfig(**meta["config"]), cfg, ignore=RESUME_FREE)
        if changes:
            raise HpnbError(
                f"{path} was written under another config than this one ({describe_changes(changes)}; checkpoint → "
                f"here). Load it with its own config (config.json beside it), or train this config into a new folder."
            )
    return state


# ---- reading a run --------------------------------------------------------------------------------------------


def read_metrics(run) -> dict | None:
    """metrics.json of a run (None while the run has not finished)."""
    path = Path(run) / METRICS
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise HpnbError(
            f"{path} is damaged (not valid JSON: {err.msg}, line {err.lineno}). Delete it and resume the run "
            f"(python -m hpnb train ... --out {Path(run)} --resume writes it again at the end)."
        ) from err


def no_best_reason(run) -> str | None:
    """Why a finished run selected no checkpoint on val (metrics.json's best has step null), else None."""
    metrics = read_metrics(run)
    if metrics is None or metrics.get("best", {}).get("step", 0) is not None:
        return None
    return metrics["best"].get("reason", "no validation score could be compared")


def _best_or_fallback(run: Path) -> Path:
    """best.pt, or why there is none: an error when the run finished (every score NaN, or best.pt gone), a warning
    and the last checkpoint while the run is unfinished (no validation yet)."""
    if (run / BEST).is_file():
        return run / BEST
    reason = no_best_reason(run)
    if reason is not None:
        raise HpnbError(
            f"{run} has no best.pt: no checkpoint was selected on val because {reason}. Evaluate the last state "
            f"instead (which='last'; python -m hpnb evaluate {run} --checkpoint last), or train again (a NaN score "
            "comes from NaN codes: lower lr or tau)."
        )
    metrics = read_metrics(run)
    if metrics is not None:
        raise HpnbError(
            f"{run} has no best.pt, although metrics.json says step {metrics['best'].get('step')} was selected on val: "
            f"the file was deleted or lost. Evaluate the last state instead (which='last'; python -m hpnb evaluate "
            f"{run} --checkpoint last), or train the run again into a new folder."
        )
    if not (run / CHECKPOINT).is_file():
        raise HpnbError(
            f"{run} has neither best.pt nor checkpoint.pt: the run stopped before its first checkpoint. Train it: "
            f"python -m hpnb train ... --out {run} --resume"
        )
    warnings.warn(
        f"{run} has no best.pt yet (an unfinished run, stopped before its first validation step): loading "
        f"checkpoint.pt, the last state (step {checkpoint_step(run)}), instead of the one selected on val.",
        RunWarning,
        stacklevel=3,
    )
    return run / CHECKPOINT


def load_run(run, which: str = "best"):
    """(config, HPModel in eval mode) of a run folder; `which` = "best" (selected on val) or "last". Without best.pt:
    an unfinished run gives its last checkpoint with a RunWarning, a finished one an HpnbError that says why."""
    from hpnb.model import HPModel

    run = Path(run)
    if which not in ("best", "last"):
        raise HpnbError(f"which must be 'best' (selected on val) or 'last', found {which!r}")
    if not (run / CONFIG).is_file():
        raise HpnbError(
            f"{run} is not an hpnb run folder (no {CONFIG}). Train one first: python -m hpnb train --preset toy"
        )
    cfg = HPConfig.load(run / CONFIG)
    path = _best_or_fallback(run) if which == "best" else run / CHECKPOINT
    state = load_checkpoint(path, cfg)
    meta = json.loads(state["meta"])
    model = HPModel(meta["in_dim"], meta["dim"], meta["n_classes"], cfg.dropout, meta["form"])
    model.load_state_dict(state["model"])
    model.eval()
    model.classes = meta["classes"]
    return cfg, model


def labelled(run) -> bool:
    """Whether a run was trained with labels (the trainer marks unlabelled ones in its checkpoints' meta)."""
    run = Path(run)
    path = run / BEST if (run / BEST).is_file() else run / CHECKPOINT
    return json.loads(read_state(path)["meta"]).get("labelled", True)


# ---- the log ------------------------------------------------------------------------------------------------


def read_log(run) -> list[dict]:
    """The logged steps of a run (empty when there is no log yet). A torn last line (a run stopped while writing
    it) is dropped with a RunWarning; a damaged line elsewhere is an HpnbError naming the file and the line."""
    path = Path(run) / LOG
    if not path.is_file():
        return []
    lines = path.read_bytes().decode("utf-8", errors="replace").split("\n")
    numbered = [(i, line) for i, line in enumerate(lines, 1) if line.strip()]
    rows = []
    for i, line in numbered:
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or "step" not in row:
                raise ValueError("not a logged step (no 'step')")
        except ValueError as err:  # json.JSONDecodeError is a ValueError
            bad = isinstance(err, json.JSONDecodeError)
            why = f"not valid JSON: {err.msg} at column {err.colno}" if bad else str(err)
            if i == numbered[-1][0]:
                kept = f"{len(rows)} logged step{'' if len(rows) == 1 else 's'}"
                warnings.warn(
                    f"{path}: dropped its last line, line {i} ({why}), torn by a run stopped while writing it; the "
                    f"{kept} before it are kept (a resumed run rewrites the log from its checkpoint).",
                    RunWarning,
                    stacklevel=2,
                )
                break
            raise HpnbError(
                f"{path} is damaged at line {i} ({why}: {line[:60]!r}); only a torn last line is expected after an "
                "interrupted run. Delete that line (its step is then missing from the plot), or train the run again "
                "into a new folder."
            ) from err
        rows.append(row)
    return rows


def append_log(run, row: dict) -> None:
    """Add one logged step: one write() of one whole line to a file opened for appending, so a stopped run leaves
    at most a torn last line (which `read_log` drops)."""
    data = (json.dumps(row) + "\n").encode("utf-8")
    fd = os.open(Path(run) / LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if os.write(fd, data) != len(data):
            raise OSError(f"short write to {Path(run) / LOG} (disk full?)")
    finally:
        os.close(fd)


def truncate_log(run, step: int) -> None:
    """Keep the log lines up to `step` (a resumed run rewrites what came after its checkpoint), atomically."""
    path = Path(run) / LOG
    if step <= 0:
        atomic_write_text(path, "")
    elif path.is_file():
        atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in read_log(run) if row["step"] <= step))


def nan_validation_steps(rows: list[dict]) -> list[int]:
    """The logged steps whose validation score is NaN."""
    return [r["step"] for r in rows if "val" in r and math.isnan(r["val"].get("score", 0.0))]


def selected_step(run, which: str = "best") -> int:
    """The training step of a run's checkpoint: the one selected on val (best.pt) or the last one. It is the budget
    of the baseline's linear probe, so that it trains as many steps as the HP probe it is compared with."""
    metrics = read_metrics(run)
    if which == "best" and metrics is not None and metrics.get("best", {}).get("step") is not None:
        return int(metrics["best"]["step"])
    step = checkpoint_step(run)
    if step is not None:
        return step
    rows = read_log(run)
    return max(1, rows[-1]["step"]) if rows else 200


def finished(out: Path, cfg: HPConfig, total: int) -> bool | None:
    """True: `out` holds this config, trained to the end; False: this config, unfinished; None: empty or another
    config."""
    saved = out / CONFIG
    if not saved.is_file() or config_changes(HPConfig.load(saved), cfg):
        return None
    return (out / METRICS).is_file() and checkpoint_step(out) == total

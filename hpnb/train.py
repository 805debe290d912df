"""Training HP (paper §3, spec §2–§5): the loop, its data sources, checkpoints with exact resume, logs and figures.

    run = hpnb.train.train(hpnb.config.get_config("toy"), out="runs/toy")
    python -m hpnb train --preset toy [key=value ...] [--resume]

Runs go to `runs/<name>/` (the layout and its readers: `hpnb.runs`): config.json, log.jsonl, checkpoint.pt (resume),
best.pt (best on val by the sum of cluster/linear Acc and mIoU, as the official code), metrics.json, loss.png.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from hpnb.config import HPConfig
from hpnb.features import extract_features
from hpnb.heads import ema_update
from hpnb.losses import LossConfig, draw_negative_mask, hp_loss, lambda_schedule
from hpnb.model import HPModel
from hpnb.positives import attention_to_lhp, build_reference_pools, pool_image_indices, pool_patches, pools_from_patches
from hpnb.runs import (
    BEST,
    CHECKPOINT,
    CONFIG,
    LAST_GOOD,
    METRICS,
    RunWarning,
    append_log,
    check_run_folder,
    dataset_for,
    finished,
    load_checkpoint,
    load_run,
    nan_validation_steps,
    read_log,
    run_steps,
    save_state,
    truncate_log,
)
from hpnb.utils import (
    HpnbError,
    atomic_write,
    atomic_write_text,
    autocast,
    device_generator,
    on_accelerator,
    pick_device,
    progress_bar,
    seed_everything,
    use_amp,
)

HELD_OUT_DRAWS = 8  # draws of the reference pools and of R behind each label-free validation (their mean selects)

build_dataset = dataset_for  # the configured dataset split (hpnb.runs.dataset_for), under its former name


# ----------------------------------------------------------------------------------------------------------
# Data: the frozen backbone's outputs, from the cache or computed online
# ----------------------------------------------------------------------------------------------------------


class AugmentedView(torch.utils.data.Dataset):
    """A dataset's images through one fixed photometric augmentation per image (cache mode's augmented view)."""

    def __init__(self, base, view: int, seed: int, jitter_after_normalise: bool = True):
        self.base, self.view, self.seed, self.jitter = base, view, seed, jitter_after_normalise
        self.split, self.root = getattr(base, "split", ""), getattr(base, "root", None)
        self.cache_name = f"{getattr(base, 'cache_name', type(base).__name__)}-aug"
        self.cache_extra = (
            f"{getattr(base, 'cache_extra', '')} view={view} seed={seed} jitter_after_normalise={self.jitter}"
        )

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        from hpnb.data import photometric_augment

        item = dict(self.base[i])
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.view * 100_003 + i)
        item["image"] = photometric_augment(item["image"], gen, self.jitter)
        return item


class CachedSource:
    """Training batches from cached features: clean features, precomputed LHP weights, one of K augmented views."""

    def __init__(self, cfg: HPConfig, backbone, dataset, progress: bool = True):
        self.train = extract_features(backbone, dataset, progress=progress, precision=cfg.feature_precision)
        if self.train.attn is None:
            raise HpnbError("cached training features lack attention; delete the cache file and extract again")
        self.aug = [
            extract_features(
                backbone,
                AugmentedView(dataset, v, cfg.seed, cfg.jitter_after_normalise),
                attention=False,
                progress=progress,
                precision=cfg.feature_precision,
            ).feats
            for v in range(max(cfg.aug_views, 1))
        ]
        # LHP weights depend only on the frozen attention: computed once (spec §2.7)
        parts = [
            attention_to_lhp(self.train.attn[i : i + 64], self.train.grid, cfg.form, cfg.sigma)
            for i in range(0, len(self.train), 64)
        ]
        self.lhp_w = torch.cat([p[0] for p in parts])
        self.lhp_d = torch.cat([p[1] for p in parts])
        self.train.attn = None  # not needed any more: free the memory
        self.n = len(self.train)

    def plan(self, batches: list[torch.Tensor]) -> None:
        """Nothing to prefetch: the cached features are in memory."""

    def batch(self, idx: torch.Tensor, gen: torch.Generator, device) -> dict:
        view = int(torch.randint(len(self.aug), (1,), generator=gen))
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731  (the one device boundary of a batch)
        return {
            "feats": move(self.train.feats[idx]).float(),
            "feats_aug": move(self.aug[view][idx]).float(),
            "lhp": (move(self.lhp_w[idx]), move(self.lhp_d[idx])),
            "labels": move(self.train.labels[idx]),
        }

    def pool_features(self, idx: torch.Tensor, device) -> torch.Tensor:
        """Backbone maps (b, C, h, w) of the images `idx` on `device`."""
        return self.train.feats[idx].to(device, non_blocking=True).float()

    def pool_batches(self, idx: torch.Tensor, batch_size: int, device):
        """Backbone maps of the images `idx`, `batch_size` at a time, on `device` (reference pools)."""
        for chunk in idx.split(batch_size):
            yield self.pool_features(chunk, device)


class OnlineSource:
    """Training batches with the frozen backbone run every iteration on the clean and the augmented view.

    Images are decoded and cropped by a DataLoader (`workers` processes, pinned memory on CUDA) that follows the
    trainer's epoch order (`plan`), copied to the device once per batch without blocking, augmented there; on an
    accelerator the ViT runs in fp16 autocast, as the official code (its attention feeds LHP). Reference pools are
    read in batches of the same loader type (`pool_batches`)."""

    def __init__(self, cfg: HPConfig, backbone, dataset, device):
        self.cfg, self.backbone, self.dataset, self.n = cfg, backbone, dataset, len(dataset)
        self.device = torch.device(device)
        self.workers = loader_workers(cfg, self.device)
        self.pin = self.device.type == "cuda"
        self._planned: list[tuple[int, ...]] = []
        self._batches = None

    def _loader(self, batches: list[list[int]]):
        from torch.utils.data import DataLoader

        return DataLoader(
            self.dataset,
            batch_sampler=batches,
            num_workers=self.workers,
            pin_memory=self.pin,
            prefetch_factor=2 if self.workers else None,
            generator=torch.Generator().manual_seed(0),  # its base seed: never drawn from the global RNG (dropout)
        )

    def plan(self, batches: list[torch.Tensor]) -> None:
        """The index batches the trainer will ask for next, in order: the loader starts reading them now."""
        lists = [b.tolist() for b in batches]
        self._planned = [tuple(b) for b in lists]
        self._batches = iter(self._loader(lists)) if lists else None

    def _items(self, idx: torch.Tensor) -> dict:
        """The collated items of `idx`: the next planned batch when it is that one, else read directly."""
        if self._planned and self._planned[0] == tuple(idx.tolist()):
            self._planned.pop(0)
            return next(self._batches)
        from torch.utils.data import default_collate

        return default_collate([self.dataset[int(i)] for i in idx])

    def _forward(self, images: torch.Tensor, attention: bool):
        with autocast(self.device, enabled=on_accelerator(self.device), dtype=torch.float16):
            return self.backbone(images, attention=attention)

    def batch(self, idx: torch.Tensor, gen: torch.Generator, device) -> dict:
        from hpnb.data import photometric_augment

        items = self._items(idx)
        images = items["image"].to(device, non_blocking=True)
        out = self._forward(images, True)
        aug = photometric_augment(images, gen, self.cfg.jitter_after_normalise)  # parameters from `gen`, pixels here
        feats_aug = self._forward(aug, False).feats
        lhp = attention_to_lhp(out.attn.mean(1), tuple(out.feats.shape[-2:]), self.cfg.form, self.cfg.sigma)
        labels = items["label"].to(device, non_blocking=True)
        return {"feats": out.feats.float(), "feats_aug": feats_aug.float(), "lhp": lhp, "labels": labels}

    def pool_features(self, idx: torch.Tensor, device) -> torch.Tensor:
        """Backbone maps (b, C, h, w) of the images `idx` on `device` (one batch, read directly)."""
        return next(self.pool_batches(idx, len(idx), device))

    def pool_batches(self, idx: torch.Tensor, batch_size: int, device):
        """Backbone maps of the images `idx` for a reference pool, read `batch_size` at a time by the loader."""
        for items in self._loader([c.tolist() for c in idx.split(batch_size)]):
            yield self._forward(items["image"].to(device, non_blocking=True), False).feats.float()


def loader_workers(cfg: HPConfig, device: torch.device) -> int:
    """DataLoader processes of the online source: `cfg.workers`, or by default none on the CPU (the trainer's cores
    run the ViT) and up to 8 beside an accelerator."""
    if cfg.workers is not None:
        return cfg.workers
    return min(8, os.cpu_count() or 1) if on_accelerator(device) else 0


# ----------------------------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """Where the run is and what it reached."""

    out: Path
    model: HPModel
    best: dict
    last: dict
    steps: int


def loss_config(cfg: HPConfig) -> LossConfig:
    """The loss settings of a run config."""
    return LossConfig(
        form=cfg.form,
        tau=cfg.tau,
        rho=cfg.rho,
        alpha=cfg.alpha,
        use_sp=cfg.use_sp,
        use_lhp=cfg.use_lhp,
        symmetric=cfg.symmetric,
        use_reg=cfg.use_reg,
        objective=cfg.objective,
        propagation=cfg.propagation,
        chunk_images=cfg.chunk_images,
    )


def run_classes(cfg: HPConfig, dataset) -> list[str]:
    """The class names of a run: the dataset's, or "cluster 0".."cluster K-1" for an unlabelled folder."""
    if dataset.classes:
        if cfg.n_clusters not in (None, len(dataset.classes)):
            raise HpnbError(
                f"n_clusters={cfg.n_clusters}, but the labelled dataset has {len(dataset.classes)} classes; HP learns one "
                "cluster per class. Leave n_clusters out (n_clusters=none), or train without the labels."
            )
        return list(dataset.classes)
    if cfg.n_clusters is None:
        raise HpnbError(
            f"the images under {getattr(dataset, 'root', '?')} have no labels, so HP needs the number of clusters to "
            "learn; n_clusters is not set. Add e.g. n_clusters=8 (python -m hpnb train --preset folder "
            "data_root=PATH n_clusters=8)."
        )
    from hpnb.data.folder import check_n_clusters

    check_n_clusters(cfg.n_clusters)  # 2..255, a message for each other case (the folder dataset checked it too)
    return [f"cluster {k}" for k in range(cfg.n_clusters)]


def check_sizes(cfg: HPConfig, n_train: int, root=None) -> None:
    """Enough training images for one batch and for a reference pool of M distinct images (spec §2.2)."""
    where = f" under {root}" if root is not None and cfg.dataset == "folder" else ""
    held = " (the held-out tenth of a folder is not counted)" if cfg.dataset == "folder" else ""
    fix = f"Add images, or lower both: batch_size={min(cfg.batch_size, max(1, n_train))} pool_size={max(1, n_train)}."
    if n_train < cfg.batch_size:
        raise HpnbError(
            f"the training set{where} has {n_train} images{held}, fewer than batch_size={cfg.batch_size}"
            + (
                f" (and pool_size M={cfg.pool_size} needs at least M training images)"
                if cfg.pool_size > n_train
                else ""
            )
            + f". {fix}"
        )
    if cfg.pool_size > n_train:
        raise HpnbError(
            f"pool_size M={cfg.pool_size} needs at least M training images, found {n_train}{where}{held}; "
            f"lower pool_size. {fix}"
        )


class Trainer:
    """One HP run: builds the data source, the model and optimisers, then `fit()`s with checkpoints.

    The run folder is checked first (`hpnb.runs.check_run_folder`): a folder of another config is refused, and with
    `resume` the saved config must match in everything but `hpnb.runs.RESUME_FREE`."""

    def __init__(self, cfg: HPConfig, out: str | Path, backbone=None, progress: bool = True, resume: bool = False):
        from hpnb.backbones import load_backbone

        self.cfg, self.out, self.progress, self.resume_requested = cfg, Path(out), progress, resume
        check_run_folder(self.out, cfg, resume=resume)  # before anything is loaded or written
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = pick_device(cfg.device)
        seed_everything(cfg.seed)
        self.backbone = backbone or load_backbone(cfg.backbone, weights=cfg.backbone_weights, device=self.device)
        train_set = build_dataset(cfg, cfg.train_split, cfg.res, cfg.n_train)
        self.labelled = bool(train_set.classes)  # False: a folder of your own images without labels
        self.classes = run_classes(cfg, train_set)
        self.n_classes = len(self.classes)
        check_sizes(cfg, len(train_set), getattr(train_set, "root", None))
        if cfg.backbone_mode == "cache":
            self.source = CachedSource(cfg, self.backbone, train_set, progress)
        elif cfg.backbone_mode == "online":
            self.source = OnlineSource(cfg, self.backbone, train_set, self.device)
        else:
            raise HpnbError(f"backbone_mode must be 'cache' or 'online', found {cfg.backbone_mode!r}")
        self.val = extract_features(
            self.backbone,
            build_dataset(cfg, cfg.val_split, cfg.val_res, cfg.n_val),
            attention=not self.labelled,  # without labels the held-out HP loss selects the checkpoint: LHP needs it
            progress=progress,
            precision=cfg.feature_precision,
        )
        seed_everything(cfg.seed)  # here, so the init does not depend on whether features came from the cache
        self.model = HPModel(self.backbone.embed_dim, cfg.dim, self.n_classes, cfg.dropout, cfg.form).to(self.device)
        self.model.train()
        h = self.model.heads
        self.opt = torch.optim.AdamW(h.seg.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.opt_proj = torch.optim.Adam(h.proj.parameters(), lr=cfg.proj_lr)
        self.opt_linear = torch.optim.Adam(self.model.linear_probe.parameters(), lr=cfg.linear_lr)
        self.opt_cluster = torch.optim.Adam(self.model.cluster_probe.parameters(), lr=cfg.cluster_lr)
        self.gen = torch.Generator().manual_seed(cfg.seed)  # the loop's CPU draws (orders, pools, augmentation)
        # R's Bernoulli(ρ) mask, (N, B·N) per iteration, is drawn where it is used: on an accelerator from a generator
        # there (no ~150 MB host copy per step at the paper's shapes); on the CPU from `gen`, as before
        self.dev_gen = device_generator(self.device, cfg.seed * 1_000_003 + 17) if on_accelerator(self.device) else None
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = cfg.tf32  # the heads and the loss's logits (positives stay exact)
            torch.backends.cudnn.allow_tf32 = cfg.tf32
        self.iters_per_epoch = self.source.n // cfg.batch_size
        self.total = cfg.epochs * self.iters_per_epoch
        if cfg.max_iters is not None:
            self.total = min(self.total, cfg.max_iters)
        if self.total < 1:
            raise HpnbError(f"nothing to train: epochs={cfg.epochs} × {self.iters_per_epoch} iterations per epoch")
        self.step, self.q_ag, self.q_sp = 0, None, None
        self.best = {"score": -math.inf}
        cfg.save(self.out / CONFIG)

    # -- pools --------------------------------------------------------------------------------------------
    def build_pools(self, task_agnostic: bool) -> None:
        """Q_ag (once) and/or Q_sp (renewed) from M random training images, the net in train mode (spec §2.2)."""
        idx = pool_image_indices(self.source.n, self.cfg.pool_size, self.gen)  # M distinct images
        batches = self.source.pool_batches(idx, self.cfg.batch_size, self.device)
        q_ag, q_sp = build_reference_pools(
            batches, self.model.heads, self.cfg.pool_size, self.gen, task_specific=self.cfg.use_sp
        )
        if task_agnostic:
            self.q_ag = q_ag
        self.q_sp = q_sp

    # -- one iteration ------------------------------------------------------------------------------------
    def train_step(self, idx: torch.Tensor, lam: float) -> dict:
        cfg, model = self.cfg, self.model
        batch = self.source.batch(idx, self.gen, self.device)
        # one autocast (bf16) around the heads and the probes' losses; what leaves it is cast to fp32 on purpose: the
        # HP loss runs in fp32 (its positive masks and criteria in exact fp32 even under TF32, hpnb.utils.exact_fp32)
        with autocast(self.device, enabled=use_amp(cfg.amp, self.device)):
            inputs, codes = model.loss_inputs(
                batch["feats"],
                batch["feats_aug"],
                batch["lhp"],
                self.q_ag,
                self.q_sp if cfg.use_sp else None,
                need_mix=cfg.use_lhp and cfg.propagation == "gradient",
            )
            linear_loss, cluster_loss = model.probe_losses(codes, batch["labels"])
        inputs, linear_loss, cluster_loss = inputs.float(), linear_loss.float(), cluster_loss.float()
        ema_update(model.heads.ema, model.heads.seg, cfg.ema_m)  # after S' was used, with S before this step
        b, n = inputs.z.shape[:2]
        if self.dev_gen is not None:
            neg = draw_negative_mask(n, b * n, cfg.rho, self.dev_gen, self.device)
        else:
            neg = torch.rand(n, b * n, generator=self.gen) < cfg.rho
        parts = hp_loss(inputs, loss_config(cfg), lam=lam, neg_mask=neg, generator=self.gen)
        if not torch.isfinite(parts.total):
            path = self.save(LAST_GOOD)
            raise HpnbError(
                f"the loss became {float(parts.total)} at step {self.step}; the last good weights are in "
                f"{path}. Lower lr (now {cfg.lr}) or tau, or check the input features."
            )
        for opt in (self.opt, self.opt_proj, self.opt_linear, self.opt_cluster):
            opt.zero_grad(set_to_none=True)
        (parts.total + linear_loss + cluster_loss).backward()
        torch.nn.utils.clip_grad_norm_(model.heads.seg.parameters(), cfg.clip)
        for opt in (self.opt, self.opt_proj, self.opt_linear, self.opt_cluster):
            opt.step()
        log = parts.as_dict()
        log.update(lam=lam, linear_probe=float(linear_loss.detach()), cluster_probe=float(cluster_loss.detach()))
        return log

    # -- validation / model selection ---------------------------------------------------------------------
    def validate(self) -> dict:
        """Validation scores and the model-selection `score` (higher is better): the official sum of cluster and
        linear Acc and mIoU with labels, minus the held-out HP loss without them (`held_out_loss`)."""
        from hpnb.evaluate import evaluate, model_predictor

        if not self.labelled:
            losses = self.held_out_losses()
            loss = sum(losses) / len(losses)
            return {
                "held_out_loss": round(loss, 4),
                "held_out_loss_std": round(float(np.std(losses, ddof=1)), 4),
                "held_out_draws": [round(v, 4) for v in losses],  # draw k is the same at every validation
                "score": -loss,
            }
        result = evaluate(model_predictor(self.model), self.val, self.n_classes)
        self.model.train()
        table = result.table()
        table["score"] = sum(v for head in ("cluster", "linear") for v in table[head].values())
        return table

    @torch.no_grad()
    def held_out_losses(self) -> list[float]:
        """The label-free selection criterion, once per draw: the HP loss (Eq. 11 at λ = 1) on the held-out images,
        heads in eval mode (no dropout), the clean features as their own augmented view. What is left random is drawn
        `HELD_OUT_DRAWS` times, the same draws at every validation so that two steps are compared on the same ones:
        the reference pools (M training images, one patch each; Q_sp through the current momentum head) and ρ's mask R
        of negatives. Each entry is a mean over batches of `batch_size` held-out images; their spread says how much
        one draw moves the loss."""
        cfg, val = self.cfg, self.val
        if getattr(self, "_val_lhp", None) is None:  # LHP weights of the held-out images, from frozen attention
            parts = [
                attention_to_lhp(val.attn[i : i + 64], val.grid, cfg.form, cfg.sigma) for i in range(0, len(val), 64)
            ]
            self._val_lhp = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        if getattr(self, "_val_pools", None) is None:  # each draw's pool patches: the backbone is frozen, read once
            self._val_pools = []
            for k in range(HELD_OUT_DRAWS):
                gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 424_242 + k)
                idx = pool_image_indices(self.source.n, cfg.pool_size, gen)
                batches = self.source.pool_batches(idx, cfg.batch_size, self.device)
                self._val_pools.append(list(pool_patches(batches, cfg.pool_size, gen, cfg.use_sp)))
        self.model.eval()
        losses = []
        for k, patches in enumerate(self._val_pools):
            q_ag, q_sp = pools_from_patches(patches, self.model.heads)  # Q_sp through the current momentum head
            gen = device_generator(self.device, cfg.seed * 1_000_003 + 424_242 + k)  # R drawn on the codes' device
            total = 0.0
            for rows in torch.arange(len(val)).split(cfg.batch_size):
                feats = val.feats[rows].to(self.device).float()
                lhp = (self._val_lhp[0][rows].to(self.device), self._val_lhp[1][rows].to(self.device))
                inputs, _ = self.model.loss_inputs(
                    feats, feats, lhp, q_ag, q_sp, need_mix=cfg.use_lhp and cfg.propagation == "gradient"
                )
                total += float(hp_loss(inputs, loss_config(cfg), lam=1.0, generator=gen).total) * len(rows)
            losses.append(total / len(val))
        self.model.train()
        return losses

    def held_out_loss(self) -> float:
        """The mean of `held_out_losses` over the draws: the checkpoint kept without labels has the lowest."""
        losses = self.held_out_losses()
        return sum(losses) / len(losses)

    # -- checkpoints --------------------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "opt": self.opt.state_dict(),
            "opt_proj": self.opt_proj.state_dict(),
            "opt_linear": self.opt_linear.state_dict(),
            "opt_cluster": self.opt_cluster.state_dict(),
            "step": self.step,
            "q_ag": self.q_ag,
            "q_sp": self.q_sp,
            "best": json.dumps(self.best),
            "rng_torch": torch.get_rng_state(),
            "rng_gen": self.gen.get_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "rng_dev": self.dev_gen.get_state() if self.dev_gen is not None else None,
            "meta": json.dumps(
                {
                    "backbone": self.cfg.backbone,
                    "dim": self.cfg.dim,
                    "in_dim": self.model.in_dim,
                    "n_classes": self.n_classes,
                    "classes": self.classes,
                    "form": self.cfg.form,
                    "config": self.cfg.to_dict(),  # checked on resume and load (hpnb.runs.load_checkpoint)
                    **({} if self.labelled else {"labelled": False}),
                }
            ),
        }

    def save(self, name: str) -> Path:
        """Atomic save under the run folder, with the checkpoint format (`hpnb.runs.save_state`)."""
        return save_state(self.state(), self.out / name)

    def resume(self) -> bool:
        """Continue from `checkpoint.pt` exactly (weights, optimisers, pools, RNG states, step)."""
        path = self.out / CHECKPOINT
        if not path.is_file():
            return False
        state = load_checkpoint(path, self.cfg, self.model.in_dim, self.n_classes)
        self.model.load_state_dict(state["model"])
        for key, opt in (
            ("opt", self.opt),
            ("opt_proj", self.opt_proj),
            ("opt_linear", self.opt_linear),
            ("opt_cluster", self.opt_cluster),
        ):
            opt.load_state_dict(state[key])
        # the pools come back from disk on the CPU: moved to the device where the criteria use them
        to_device = lambda q: q.to(self.device) if q is not None else None  # noqa: E731
        self.step, self.q_ag, self.q_sp = state["step"], to_device(state["q_ag"]), to_device(state["q_sp"])
        self.best = json.loads(state["best"])
        torch.set_rng_state(state["rng_torch"])
        self.gen.set_state(state["rng_gen"])
        if state["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        if self.dev_gen is not None and state.get("rng_dev") is not None:
            self.dev_gen.set_state(state["rng_dev"])
        truncate_log(self.out, self.step)
        return True

    # -- the loop -----------------------------------------------------------------------------------------
    def fit(self, resume: bool | None = None, estimate: bool = False) -> TrainResult:
        """Train to the end (`resume`: from checkpoint.pt; default: as the trainer was built). A run that starts at step
        0 first removes what an earlier run of this folder left (log, checkpoints, metrics), so none of it outlives it.
        A NaN validation score is logged with a RunWarning and never selected; when every score was NaN, metrics.json's
        best has step null and a reason, and no best.pt is written. `estimate`: print, after the first
        `ESTIMATE_AFTER` steps, the time the remaining steps will take at the rate measured on those (the CLI)."""
        cfg = self.cfg
        resumed = self.resume() if (self.resume_requested if resume is None else resume) else False
        if not resumed:
            truncate_log(self.out, 0)
            for stale in (CHECKPOINT, BEST, LAST_GOOD, METRICS):
                (self.out / stale).unlink(missing_ok=True)
            self.build_pools(task_agnostic=True)  # Q_ag once, Q_sp from the initial S'
        ipe = self.iters_per_epoch
        bar = progress_bar(total=self.total, initial=self.step, desc=f"train {cfg.name}", disable=not self.progress)
        last_val, resumed_planned, first, t_first = {}, False, self.step, time.perf_counter()
        try:
            while self.step < self.total:
                epoch, i = divmod(self.step, ipe)
                order = torch.randperm(self.source.n, generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch))
                if i == 0 or not resumed_planned:  # the loader reads this epoch's batches ahead (online source)
                    self.source.plan([order[j * cfg.batch_size : (j + 1) * cfg.batch_size] for j in range(i, ipe)])
                    resumed_planned = True
                if i % cfg.renew_every == 0 and i != 0 and cfg.use_sp:
                    self.build_pools(task_agnostic=False)  # renew Q_sp (the counter restarts each epoch)
                lam = lambda_schedule(self.step, self.total, cfg.lam_warmup)
                t0 = time.perf_counter()
                log = self.train_step(order[i * cfg.batch_size : (i + 1) * cfg.batch_size], lam)
                self.step += 1
                log.update(step=self.step, epoch=epoch, seconds=round(time.perf_counter() - t0, 4))
                if estimate and self.step - first == ESTIMATE_AFTER and self.step < self.total:
                    print(time_estimate(time.perf_counter() - t_first, ESTIMATE_AFTER, self.total - self.step, cfg))
                if self.step % cfg.val_every == 0 or self.step == self.total:
                    last_val = self.validate()
                    log["val"] = last_val
                    score = last_val["score"]
                    if not math.isfinite(score):  # NaN > x is False: say so rather than skip it silently
                        warnings.warn(
                            f"the validation score at step {self.step} is {'NaN' if math.isnan(score) else score} "
                            f"({nan_parts(last_val)}): it is logged, and this step is never selected as best.pt",
                            RunWarning,
                            stacklevel=2,
                        )
                    elif score > self.best["score"]:
                        self.best = {**last_val, "step": self.step}
                        self.save(BEST)
                if self.step % cfg.log_every == 0 or "val" in log or self.step == self.total:
                    append_log(self.out, log)
                if self.step % cfg.checkpoint_every == 0 or self.step == self.total:
                    self.save(CHECKPOINT)
                bar.set_postfix({k: f"{log[k]:.3f}" for k in ("loss", "phi", "psi", "reg", "lam")})
                bar.update(1)
        except torch.cuda.OutOfMemoryError as err:
            raise HpnbError(
                f"GPU out of memory at step {self.step} (batch_size={cfg.batch_size}, "
                f"chunk_images={cfg.chunk_images}). Lower chunk_images first (memory of the loss), then "
                f"batch_size, or use backbone_mode='cache'."
            ) from err
        finally:
            bar.close()
        best = self.best
        if "step" not in best:  # no validation score was a number: no best.pt, and metrics.json says why
            rows = [r for r in read_log(self.out) if "val" in r]
            steps = nan_validation_steps(rows)
            what = "NaN" if len(steps) == len(rows) else "NaN or infinite"
            reason = f"every validation score was {what} (steps {', '.join(str(r['step']) for r in rows)})"
            best = {"step": None, "score": None, "reason": reason}
            warnings.warn(
                f"{self.out}: no checkpoint selected on val, {reason}; there is no best.pt, the last weights are in "
                f"{CHECKPOINT}",
                RunWarning,
                stacklevel=2,
            )
        atomic_write_text(self.out / METRICS, json.dumps({"best": best, "last": last_val}, indent=2))
        plot_log(self.out, alpha=cfg.alpha if cfg.use_reg else None)
        return TrainResult(out=self.out, model=self.model, best=best, last=last_val, steps=self.step)


ESTIMATE_AFTER = 3  # steps measured before the CLI says how long the rest of a run will take


def time_estimate(seconds: float, steps: int, remaining: int, cfg: HPConfig) -> str:
    """One line: the time of `remaining` steps at the rate of the first `steps` (`seconds` in all), and what it
    leaves out (validations, each a pass over the validation images, and the first steps' warm-up)."""
    rate = seconds / steps
    total = rate * remaining
    when = f"{total / 60:.0f} min" if total >= 90 else f"{total:.0f} s"
    return (
        f"time: about {when} for the remaining {remaining} steps ({rate:.2f} s a step over the first {steps} on this "
        f"machine), plus a validation every {cfg.val_every} steps; the progress bar updates this as it goes"
    )


def nan_parts(scores: dict) -> str:
    """The entries of a validation result that are not finite numbers, e.g. 'cluster miou' (or 'held_out_loss')."""
    parts = [
        f"{k} {m}" if isinstance(v, dict) else k
        for k, v in scores.items()
        if k != "score"
        for m, x in (v.items() if isinstance(v, dict) else [("", v)])
        if isinstance(x, float) and not math.isfinite(x)
    ]
    return ", ".join(parts) or "score"


def train(
    cfg: HPConfig,
    out: str | Path | None = None,
    resume: bool = False,
    backbone=None,
    progress: bool = True,
    estimate: bool = False,
) -> TrainResult:
    """Train HP with `cfg` into `out` (default runs/<cfg.name>). A folder of another config is refused; `resume`
    continues its checkpoint.pt under the same config (`hpnb.runs.check_run_folder`); `estimate` prints the time
    the run will take once its first steps are measured."""
    out = out or Path("runs") / cfg.name
    return Trainer(cfg, out, backbone=backbone, progress=progress, resume=resume).fit(estimate=estimate)


def cache_features(cfg: HPConfig, backbone) -> None:
    """Compute (or find) every cached feature a cache-mode run of `cfg` reads, without progress bars: the training
    images with attention, their augmented views and the validation images (with attention when there are no
    labels). A notebook calls it before `train_or_load`, whose output is then the same whether the cache was warm."""
    train_set = build_dataset(cfg, cfg.train_split, cfg.res, cfg.n_train)
    CachedSource(cfg, backbone, train_set, progress=False)
    labelled = bool(train_set.classes)
    val_set = build_dataset(cfg, cfg.val_split, cfg.val_res, cfg.n_val)
    extract_features(backbone, val_set, attention=not labelled, progress=False, precision=cfg.feature_precision)


class TrainedRun(NamedTuple):
    """A finished run: its config, the model of the checkpoint selected on val (eval mode) and its folder."""

    cfg: HPConfig
    model: HPModel
    out: Path


def folder_for(cfg: HPConfig, out: str | Path) -> Path:
    """`out`, or `out-<digest of cfg>` when `out` holds a run of another config (which is never written over)."""
    out = Path(out)
    if (out / CONFIG).is_file() and finished(out, cfg, run_steps(cfg)) is None:
        digest = hashlib.sha1(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
        return out.with_name(f"{out.name}-{digest}")
    return out


def train_or_load(cfg: HPConfig, out: str | Path, backbone=None, progress: bool = False) -> TrainedRun:
    """Train `cfg` into `out` unless a finished run of exactly this config is there (an interrupted one resumes);
    print one stable line either way and return the run (config, model selected on val in eval mode, folder).

    A folder that holds a run of another config is never overwritten: this config then goes to `out-<digest>`,
    a digest of the config, so a notebook that changes a parameter keeps the default run intact."""
    from hpnb.printing import pct

    out = folder_for(cfg, out)
    total = run_steps(cfg)
    state = finished(out, cfg, total)
    if not state:
        train(cfg, out=out, resume=state is False, backbone=backbone, progress=progress)
    loaded = TrainedRun(*load_run(out), out)  # an HpnbError that says why when no checkpoint was selected on val
    best = json.loads((out / METRICS).read_text())["best"]
    if "held_out_loss" in best:  # no labels: selected by the held-out HP loss (shown to the precision it is stable)
        print(f"{out.name}: {total} steps; selected at step {best['step']} by the lowest held-out HP loss")
        return loaded
    print(
        f"{out.name}: {total} steps; best on val at step {best['step']}: "
        f"cluster Acc {pct(best['cluster']['acc'] / 100)} mIoU {pct(best['cluster']['miou'] / 100)} | "
        f"linear Acc {pct(best['linear']['acc'] / 100)} mIoU {pct(best['linear']['miou'] / 100)}"
    )
    return loaded


def training_log(rows: list[dict], alpha: float | None = None, figure=None, kept_step: int | None = None):
    """Three panels of a run's log (hpnb.runs.read_log) against the iteration t: the contrastive terms with their
    running mean, λ(t) on a twin axis and its warm-up (λ = 0) shaded; the regulariser R (logged unweighted: the mean
    ‖z − z_aug‖); the validation mIoU of both heads. A dashed line across the panels, and a star on each head's curve,
    mark the checkpoint kept: `kept_step` (e.g. hpnb.runs.selected_step(run)), or by default the validation step the
    trainer selects, the first with the highest score (the official sum of cluster and linear Acc and mIoU).

    `alpha` (the weight of R) labels R's panel; `figure` draws on a given matplotlib Figure (the trainer's headless
    path) instead of a new pyplot one."""
    if not rows:
        raise HpnbError("training_log: the run has no logged steps yet (train it first: python -m hpnb train ...)")
    if figure is None:
        import matplotlib.pyplot as plt

        figure = plt.figure(figsize=(12, 3.7))
    ax, ax_reg, ax_val = figure.subplots(1, 3, gridspec_kw={"width_ratios": (1.5, 0.8, 1)})
    steps = np.array([r["step"] for r in rows])
    for key, label, colour in (("phi", "Φ (GHP, Eq. 5–6)", "tab:blue"), ("psi", "Ψ (LHP, Eq. 10)", "tab:orange")):
        ax.plot(steps, [r[key] for r in rows], color=colour, lw=1, alpha=0.6, label=label)
    total = np.array([r["loss"] for r in rows], dtype=np.float64)
    width = max(1, len(rows) // 6)
    smooth = np.convolve(total, np.ones(width) / width, mode="valid")
    ax.plot(steps[width - 1 :], smooth, color="k", lw=2.2, label=f"total $L$, mean of {width} logged steps")
    lam = [r["lam"] for r in rows]
    warm = [s for s, v in zip(steps, lam, strict=True) if v == 0]
    if warm:
        ax.axvspan(0, max(warm), color="0.9", zorder=0)
        ax.text(max(warm) / 2, 0.02, "λ = 0", transform=ax.get_xaxis_transform(), ha="center", fontsize=8.5)
    ax_lam = ax.twinx()
    ax_lam.plot(steps, lam, ":", color="0.4", lw=1.2)
    ax_lam.set_ylim(0, 1.05)
    ax_lam.set_ylabel("λ (dotted)", color="0.4")
    ax.set_xlabel("iteration t")
    ax.set_ylabel("loss")
    ax.set_title(f"Φ, Ψ per step; running mean of L {smooth[0]:.1f} → {smooth[-1]:.1f}", fontsize=10)
    ax.legend(fontsize=8.5, loc="upper right")
    ax_reg.plot(steps, [r["reg"] for r in rows], color="tab:red", lw=1)
    ax_reg.set_xlabel("iteration t")
    ax_reg.set_title("R (Eq. 11)" + (f", weight α = {alpha:g}" if alpha is not None else ""), fontsize=10)
    val = [r for r in rows if "val" in r]

    def score(v):
        return v["score"] if "score" in v else sum(v[h][m] for h in ("cluster", "linear") for m in ("acc", "miou"))

    numbers = [r for r in val if not math.isnan(score(r["val"]))]  # a NaN score is never the kept checkpoint
    if numbers and kept_step is None:  # the trainer's rule: the first validation step with the highest score
        kept_step = max(numbers, key=lambda r: score(r["val"]))["step"]
    for head, colour in (("cluster", "tab:green"), ("linear", "tab:purple")):
        if not val:
            break
        ys = [r["val"][head]["miou"] for r in val]
        ax_val.plot([r["step"] for r in val], ys, "o-", color=colour, label=f"{head} head")
        for r, y in zip(val, ys, strict=True):
            if r["step"] == kept_step:
                ax_val.plot(r["step"], y, "*", ms=14, color=colour, mec="k")
                ax_val.annotate(f"{y:.1f}", (r["step"], y), xytext=(6, -12), textcoords="offset points")
    if kept_step is not None:
        for panel in (ax, ax_reg, ax_val):
            panel.axvline(kept_step, color="k", ls="--", lw=1, alpha=0.6, zorder=0)
        ax_val.plot([], [], "k--", lw=1, alpha=0.6, label=f"kept checkpoint (step {kept_step})")
    if val or kept_step is not None:
        ax_val.legend(fontsize=8.5, loc="lower right")
    tops = [r["val"][h]["miou"] for r in val for h in ("cluster", "linear") if math.isfinite(r["val"][h]["miou"])]
    if tops:
        ax_val.set_ylim(0, 1.2 * max(tops))
    if not val:
        ax_val.text(0.5, 0.5, "no validation step logged", ha="center", va="center", transform=ax_val.transAxes)
    ax_val.set_xlim(0, max(steps) * 1.05)
    ax_val.set_xlabel("iteration t")
    ax_val.set_ylabel("val mIoU (%)")
    ax_val.set_title("validation (★ on the kept checkpoint)", fontsize=10)
    figure.tight_layout()
    return figure


def plot_log(out: str | Path, alpha: float | None = None) -> Path | None:
    """training_log of a run's log, saved as loss.png next to it (None while nothing is logged).

    Drawn on a bare matplotlib Figure (no pyplot, no backend switch), so a notebook's inline figures are untouched.
    """
    from matplotlib.figure import Figure

    # a run without labels logs the held-out loss, not scores: its validation panel stays empty
    rows = [{k: v for k, v in r.items() if k != "val" or "cluster" in v} for r in read_log(out)]
    if not rows:
        return None
    fig = training_log(rows, alpha=alpha, figure=Figure(figsize=(12, 3.3)))
    atomic_write(Path(out) / "loss.png", lambda tmp: fig.savefig(tmp, format="png", dpi=100))  # whole or not at all
    return Path(out) / "loss.png"

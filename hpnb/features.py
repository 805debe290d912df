"""Feature cache: run the frozen backbone over a dataset once, keep fp16 patch features and attention on disk.

One file per (backbone, dataset, split, resolution, transform, size, precision); reused afterwards, recomputed on
demand. Holds what later steps need without the backbone: patch features (N, C, h, w), head-averaged last-block
PRE-softmax attention scores (N, 1+hw, 1+hw) (the LHP input of spec §2.7), labels and uint8 images (figures, CRF).

Precision: on the CPU the backbone runs in float64 by default ("exact"). Its rounding error (~1e-16) is far below
the fp16 step of the cache (~1e-3), so the cached file is bit-identical on every CPU model and thread count, and so
is everything computed from it; fp32 kernels differ between CPUs (AVX2 vs AVX-512) by ~1e-5, which flips about
0.5 % of the fp16 values. On a GPU the backbone runs in fp16 autocast, the official code's precision (fast; not
bit-reproducible across GPUs): fp16 keeps 3 more mantissa bits than bf16 for the attention scores that feed LHP.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from hpnb.backbones import FrozenViT
from hpnb.data import denormalize
from hpnb.utils import HpnbError, atomic_save, autocast, cache_dir, on_accelerator

FORMAT_VERSION = 1
PRECISIONS = ("auto", "float64", "float32", "float16")


@dataclass
class FeatureSet:
    """Cached backbone outputs for one split: everything a notebook or the trainer needs without the ViT."""

    feats: torch.Tensor  # (N, C, h, w) fp16, last block after the final norm
    labels: torch.Tensor  # (N, H, W) int16, -1 = ignore
    images: torch.Tensor  # (N, H, W, 3) uint8, the un-normalised crops
    names: list[str]
    attn: torch.Tensor | None = None  # (N, 1+hw, 1+hw) fp16 head mean of pre-softmax scores, CLS first
    meta: dict = field(default_factory=dict)
    path: Path | None = None

    def __len__(self) -> int:
        return self.feats.shape[0]

    @property
    def grid(self) -> tuple[int, int]:
        """The patch grid (h, w)."""
        return tuple(self.feats.shape[-2:])

    def normalized(self, index: int | slice | None = None) -> torch.Tensor:
        """L2-normalised fp32 features (N, C, h, w) (or one slice of them)."""
        f = self.feats if index is None else self.feats[index]
        return torch.nn.functional.normalize(f.float(), dim=-3)

    def summary(self) -> str:
        """One stable line: sizes and dtypes."""
        attn = "none" if self.attn is None else f"{tuple(self.attn.shape)} {str(self.attn.dtype).split('.')[-1]}"
        return (
            f"{self.meta.get('dataset', '?')}/{self.meta.get('split', '?')}: {len(self)} images, "
            f"feats {tuple(self.feats.shape)} {str(self.feats.dtype).split('.')[-1]}, attn {attn}, "
            f"labels {tuple(self.labels.shape)}"
        )


def dataset_key(dataset: Dataset) -> dict:
    """What identifies a dataset's cached features: its class, split, root, size and transform."""
    first = dataset[0]
    fingerprint = hashlib.sha1(first["image"].numpy().tobytes() + first["label"].numpy().tobytes()).hexdigest()[:12]
    return {
        "dataset": getattr(dataset, "cache_name", type(dataset).__name__),
        "split": str(getattr(dataset, "split", "")),
        "root": str(getattr(dataset, "root", "")),
        "n": len(dataset),
        "res": list(first["image"].shape[-2:]),
        "transform": repr(getattr(dataset, "transform", None)),
        "extra": repr(getattr(dataset, "cache_extra", "")),
        "first_item": fingerprint,  # a changed generator or transform gets a new cache file
    }


def resolve_precision(precision: str, device: torch.device) -> str:
    """What the backbone runs in: "auto" is float64 on the CPU (bit-reproducible caches) and fp16 autocast on a GPU."""
    if precision not in PRECISIONS:
        raise HpnbError(f"precision must be one of {', '.join(PRECISIONS)}, found {precision!r}")
    if precision == "auto":
        return "float16" if on_accelerator(device) else "float64"
    return precision


def cache_path(backbone: FrozenViT, key: dict, attention: bool, precision: str = "float64") -> Path:
    """File name: readable prefix + hash of the full key."""
    full = {**key, "backbone": backbone.name, "attention": attention, "version": FORMAT_VERSION, "precision": precision}
    digest = hashlib.sha1(json.dumps(full, sort_keys=True).encode()).hexdigest()[:10]
    res = "x".join(map(str, key["res"]))
    return cache_dir("features") / f"{key['dataset']}_{key['split']}_{backbone.name}_{res}_{digest}.pt"


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Normalised (B, 3, H, W) -> uint8 (B, H, W, 3)."""
    return (denormalize(images.float()).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)


def _empty_error(dataset: Dataset) -> HpnbError:
    return HpnbError(
        f"dataset {type(dataset).__name__} (split {getattr(dataset, 'split', '?')!r}) is empty: "
        "expected at least one image. Check its root folder and split list."
    )


@torch.no_grad()
def compute_features(
    backbone: FrozenViT,
    dataset: Dataset,
    batch_size: int = 8,
    attention: bool = True,
    progress: bool = True,
    num_workers: int = 0,
    precision: str = "auto",
) -> FeatureSet:
    """Run the backbone over `dataset` (items with 'image', 'label', 'name') and collect fp16 outputs on CPU.

    `precision`: "auto" (float64 on the CPU, fp16 autocast on a GPU), "float64", "float32" or "float16" (module doc)."""
    if len(dataset) == 0:
        raise _empty_error(dataset)
    device = next(backbone.parameters()).device
    precision = resolve_precision(precision, device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    feats, attns, labels, images, names = [], [], [], [], []
    mixed = autocast(device, enabled=precision == "float16", dtype=torch.float16)  # the official ViT precision
    net, dtype = (copy.deepcopy(backbone).double(), torch.float64) if precision == "float64" else (backbone, None)
    for batch in tqdm(loader, desc=f"features {getattr(dataset, 'split', '')}", disable=not progress, leave=False):
        with mixed:
            out = net(batch["image"].to(device=device, dtype=dtype), attention=attention)
        feats.append(out.feats.half().cpu())
        if attention:  # head mean in the scores' own dtype, then stored as fp16 (spec §2.7 step 2)
            attns.append(out.attn.mean(dim=1).half().cpu())
        labels.append(batch["label"].to(torch.int16))
        images.append(_to_uint8(batch["image"]))
        names.extend(batch["name"])
    return FeatureSet(
        feats=torch.cat(feats),
        labels=torch.cat(labels),
        images=torch.cat(images),
        names=names,
        attn=torch.cat(attns) if attention else None,
    )


def extract_features(
    backbone: FrozenViT,
    dataset: Dataset,
    batch_size: int = 8,
    attention: bool = True,
    cache: bool = True,
    refresh: bool = False,
    progress: bool = True,
    precision: str = "auto",
) -> FeatureSet:
    """Load the cached features of `dataset` for `backbone`, computing and saving them when missing (or `refresh`).

    `precision` as in `compute_features`; the default makes CPU caches identical on every machine."""
    if len(dataset) == 0:
        raise _empty_error(dataset)
    precision = resolve_precision(precision, next(backbone.parameters()).device)
    key = dataset_key(dataset)
    path = cache_path(backbone, key, attention, precision)
    if cache and path.is_file() and not refresh:
        return load_features(path)
    fs = compute_features(
        backbone, dataset, batch_size=batch_size, attention=attention, progress=progress, precision=precision
    )
    fs.meta = {
        **key,
        "backbone": backbone.name,
        "patch_size": backbone.patch_size,
        "version": FORMAT_VERSION,
        "precision": precision,
    }
    if cache:
        save_features(fs, path)
    return fs


def save_features(fs: FeatureSet, path: Path) -> None:
    """Atomic save (`hpnb.utils.atomic_save`): an interrupted run leaves no half file behind, and two processes that
    extract the same features at once cannot write into one file."""
    blob = {
        "feats": fs.feats,
        "labels": fs.labels,
        "images": fs.images,
        "names": fs.names,
        "attn": fs.attn,
        "meta": json.dumps(fs.meta),
    }
    atomic_save(blob, path)
    fs.path = path


def load_features(path: str | Path) -> FeatureSet:
    """Read a cache file written by `save_features` (weights_only: plain tensors and strings)."""
    path = Path(path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        meta = json.loads(blob["meta"])
    except Exception as err:
        reason = str(err).strip().splitlines()[0][:120] if str(err).strip() else ""
        raise HpnbError(
            f"{path} is not a readable hpnb feature cache ({type(err).__name__}: {reason}). "
            "Delete it, or call extract_features(..., refresh=True) to recompute it."
        ) from err
    if meta.get("version") != FORMAT_VERSION:
        raise HpnbError(
            f"{path} has cache format {meta.get('version')}, expected {FORMAT_VERSION}; recompute it with refresh=True"
        )
    return FeatureSet(
        feats=blob["feats"],
        labels=blob["labels"],
        images=blob["images"],
        names=list(blob["names"]),
        attn=blob["attn"],
        meta=meta,
        path=path,
    )


def similarity_map(feats: torch.Tensor, anchor: tuple[int, int], image: int = 0) -> torch.Tensor:
    """Cosine similarity of one patch, `anchor` = (row, col) of image `image`, with every patch of every image:
    feats (B, C, h, w) -> (B, h, w). Normalise each patch once, then dot products (notebook 01, exercise 1.1)."""
    unit = torch.nn.functional.normalize(feats, dim=1)
    row, col = anchor
    return torch.einsum("c,bchw->bhw", unit[image, :, row, col], unit)

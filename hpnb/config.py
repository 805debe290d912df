"""Presets and overrides (spec §5): one flat `HPConfig`, official values for the paper's datasets, runnable ones here.

    cfg = hpnb.config.get_config("toy", epochs=2)                  # from Python
    python -m hpnb train --preset camvid-cpu tau=0.5 epochs=3        # from the command line (key=value)

Every run saves its resolved config (`config.json`) in its run folder.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from hpnb.utils import HpnbError, atomic_write_text


@dataclass
class HPConfig:
    """Everything a run needs. Names follow the paper: tau τ, rho ρ, alpha α, pool_size M, dim K, sigma σ."""

    name: str = "toy"
    # data
    dataset: str = "toy"
    data_root: str | None = None
    crop_type: str | None = None  # "five": the five-crop training set (spec §3.2)
    res: int = 224  # training crop (a multiple of the patch size)
    val_res: int = 224  # evaluation centre crop (official: 320 for patch 8)
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"  # the evaluation's default split: it must be one of the dataset's `splits`
    n_train: int | None = None  # toy world only: number of scenes
    toy_link: float = 0.0  # toy world only: share of regions in their class's own material (0 = the shipped world)
    n_val: int | None = None
    n_clusters: int | None = None  # an unlabelled "folder": the number of clusters (K of k-means) to learn
    # backbone
    backbone: str = "dinov2_vits14_imgfocus"
    backbone_weights: str | None = None
    backbone_mode: str = "cache"  # "cache": features computed once | "online": backbone every iteration
    aug_views: int = 2  # cache mode: augmented views per image, computed once
    feature_precision: str = "auto"  # cache mode: "auto" = float64 on CPU (same cache on every CPU), fp16 on a GPU
    jitter_after_normalise: bool = True  # the official (harsh) photometric augmentation
    # method
    form: str = "code"  # "code" (official implementation) | "paper" (Eq. 2-11 as printed)
    dim: int = 64  # K
    pool_size: int = 128  # M
    tau: float = 0.6
    rho: float = 0.05
    alpha: float = 0.05
    sigma: float = 28.0
    ema_m: float = 0.99
    lam_warmup: int = 20
    renew_every: int = 20  # Q_sp renewal interval (iterations within an epoch)
    dropout: float = 0.1
    use_sp: bool = True
    use_lhp: bool = True
    symmetric: bool = True
    use_reg: bool = True
    objective: str = "hp"  # "hp" | "self" (Table 4(g))
    propagation: str = "gradient"  # Table 5: "gradient" | "loss"
    chunk_images: int = 4
    # optimisation
    epochs: int = 4
    max_iters: int | None = None  # stop early (smoke runs)
    batch_size: int = 8
    lr: float = 5e-4
    weight_decay: float = 0.1
    clip: float = 10.0
    proj_lr: float = 5e-4
    linear_lr: float = 1e-3
    cluster_lr: float = 5e-3
    # bookkeeping
    val_every: int = 50
    checkpoint_every: int = 50
    log_every: int = 5
    seed: int = 0
    device: str | None = None
    amp: bool | None = None  # bf16 autocast: None = on a GPU only, true = on any device (CPU too), false = off
    tf32: bool = True  # CUDA: TF32 matmuls for the heads and the loss's logits (criteria and positives stay fp32)
    workers: int | None = None  # online mode's DataLoader processes: None = 0 on the CPU, up to 8 beside a GPU
    crf: bool = True
    crf_workers: int | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """All fields; those added later (`ADDED`) only when set, so the saved config.json of an existing run (and
        the run-folder digest `train_or_load` derives from it) is unchanged."""
        out = dataclasses.asdict(self)
        return {k: v for k, v in out.items() if not (k in ADDED and v == ADDED[k])}

    def save(self, path: str | Path) -> None:
        """Write config.json whole or not at all (`hpnb.utils.atomic_write_text`)."""
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "HPConfig":
        """Read a saved config; a damaged file, or keys this hpnb does not know, are an HpnbError that says so."""
        path = Path(path)
        try:
            values = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise HpnbError(
                f"{path} is damaged (not valid JSON: {err}). Train the run again into a new folder, or restore the file "
                "from the preset and overrides it was trained with: hpnb.config.get_config(PRESET, ...).save(PATH)."
            ) from err
        if not isinstance(values, dict):
            raise HpnbError(f"{path} should hold a JSON object of config fields, found {type(values).__name__}")
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise HpnbError(
                f"{path} has config keys this hpnb does not know: {unknown} (written by a newer hpnb?). Update hpnb "
                "(git pull, then pip install -e .), or train the run again with this one into a new folder."
            )
        return cls(**values)


FIELDS = {f.name: f for f in fields(HPConfig)}
ADDED = {
    "n_clusters": None,
    "tf32": True,
    "workers": None,
    "toy_link": 0.0,
}  # fields added after the first runs were saved, with their defaults

# Official values (spec §5). Backbone features of these sets are too large to cache: online mode.
_OFFICIAL = dict(
    backbone_mode="online",
    res=224,
    val_res=320,
    crop_type="five",
    batch_size=64,
    lr=5e-4,
    weight_decay=0.1,
    clip=10.0,
    proj_lr=5e-4,
    linear_lr=1e-3,
    cluster_lr=5e-3,
    chunk_images=4,
    # the paper scores the val lists (spec §4.2): COCO-Stuff-27 and Potsdam-3 have no test split, Cityscapes' test
    # labels are withheld
    test_split="val",
)
PRESETS: dict[str, dict] = {
    "cocostuff27": dict(
        _OFFICIAL,
        dataset="cocostuff27",
        backbone="dino_vits8",
        dim=512,
        pool_size=2048,
        tau=0.8,
        rho=0.02,
        alpha=0.05,
        ema_m=0.99,
        lam_warmup=1000,
        renew_every=100,
        epochs=3,
        val_every=100,
        checkpoint_every=500,
    ),
    "cityscapes27": dict(
        _OFFICIAL,
        dataset="cityscapes27",
        backbone="dino_vits8",
        dim=512,
        pool_size=2048,
        tau=0.6,
        rho=0.02,
        alpha=0.05,
        ema_m=0.999,
        lam_warmup=50,
        renew_every=20,
        epochs=30,
        val_every=100,
        checkpoint_every=500,
    ),
    "potsdam3": dict(
        _OFFICIAL,
        dataset="potsdam3",
        crop_type=None,
        backbone="dino_vitb8",
        dim=256,
        pool_size=1024,
        tau=0.4,
        rho=1.0,
        alpha=0.0,
        ema_m=0.999,
        lam_warmup=100,
        renew_every=20,
        epochs=10,
        val_every=50,
        checkpoint_every=500,
    ),
    # runnable here: CamVid at the paper's 28×28 grid (392 px with patch 14), features cached
    "camvid": dict(
        dataset="camvid",
        res=392,
        val_res=392,
        dim=256,
        pool_size=256,
        tau=0.6,
        rho=0.02,
        alpha=0.05,
        ema_m=0.99,
        lam_warmup=50,
        renew_every=20,
        epochs=30,
        batch_size=16,
        aug_views=4,
        val_every=50,
        checkpoint_every=100,
        val_split="val",
        test_split="test",
    ),
    # the embedded default: the toy world on 2 CPU cores
    "toy": dict(
        dataset="toy",
        res=224,
        val_res=224,
        dim=64,
        pool_size=128,
        tau=0.6,
        rho=0.05,
        alpha=0.05,
        ema_m=0.99,
        lam_warmup=20,
        renew_every=20,
        epochs=6,
        batch_size=8,
        aug_views=2,
        n_train=300,
        n_val=100,
        val_every=50,
        checkpoint_every=50,
    ),
}
# small CPU variants: same method, fewer and smaller everything, features cached
_CPU = dict(
    backbone_mode="cache",
    batch_size=4,
    dim=64,
    pool_size=64,
    epochs=1,
    val_every=25,
    checkpoint_every=25,
    aug_views=1,
    crop_type=None,
)
for _name in ("cocostuff27", "cityscapes27", "potsdam3"):
    PRESETS[f"{_name}-cpu"] = dict(PRESETS[_name], **_CPU, backbone="dinov2_vits14_imgfocus", res=224, val_res=224)
PRESETS["camvid-cpu"] = dict(
    PRESETS["camvid"],
    res=224,
    val_res=224,
    dim=64,
    pool_size=128,
    batch_size=8,
    epochs=6,
    aug_views=2,
    val_every=25,
    checkpoint_every=25,
)


def _coerce(key: str, value):
    """A CLI string (or a Python value) converted to the field's type."""
    if not isinstance(value, str):
        return value
    kind = str(FIELDS[key].type)
    if value.lower() in ("none", "null") and "None" in kind:
        return None
    if kind.startswith("bool"):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise HpnbError(f"{key} expects true/false, found {value!r}")
    for typ in (int, float):
        if kind.startswith(typ.__name__):
            try:
                return typ(value)
            except ValueError:
                raise HpnbError(f"{key} expects a number ({typ.__name__}), found {value!r}") from None
    if kind.startswith("dict"):
        return json.loads(value)
    return value


def parse_overrides(items: list[str]) -> dict:
    """['tau=0.5', 'epochs=2'] -> {'tau': 0.5, 'epochs': 2}; unknown keys list the valid ones."""
    out = {}
    for item in items:
        if "=" not in item:
            raise HpnbError(f"overrides are key=value, found {item!r} (e.g. tau=0.5)")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def get_config(preset: str = "toy", **overrides) -> HPConfig:
    """The preset's values with `overrides` applied (Python values or CLI strings)."""
    if preset not in PRESETS:
        raise HpnbError(f"Unknown preset {preset!r}. Known presets: {', '.join(PRESETS)}.")
    unknown = sorted(k for k in overrides if k not in FIELDS)
    if unknown:
        raise HpnbError(f"Unknown config key(s) {unknown}. Valid keys: {', '.join(FIELDS)}.")
    values = {**PRESETS[preset], "name": preset}
    values.update({k: _coerce(k, v) for k, v in overrides.items()})
    return HPConfig(**values)


# ----------------------------------------------------------------------------------------------------------
# Small presets that keep the official operating point (scale deviations)
# ----------------------------------------------------------------------------------------------------------

REFERENCE = "cocostuff27"
REFERENCE_ITERS = 11_600  # official COCO-Stuff run: 3 epochs × ⌊5 · 49,629 / 64⌋ five-crop iterations (spec §5)


def operating_point(values: dict, iters: int, in_dim: int = 384) -> dict:
    """The quantities a smaller run must preserve, for preset `values` trained `iters` iterations.

    negatives_per_positive = ρ·M: an anchor's criterion is its nearest of M random patches, so about NB/M of the NB
        patches of the batch clear it, against ρ·NB random negatives in the denominator;
    ema_horizon_share = 1/(1 − m) / T: how much of the run the momentum head S' lags behind S;
    warmup_share, renew_share = λ warm-up and Q_sp renewal interval as shares of the run;
    k_over_c = K / C: codes wider than the backbone features (paper: 512 > 384);
    probe_lr_steps = linear-probe learning rate × steps: how far the online probes get."""
    return {
        "negatives_per_positive": values["rho"] * values["pool_size"],
        "ema_horizon_share": 1 / (1 - values["ema_m"]) / iters,
        "warmup_share": values["lam_warmup"] / iters,
        "renew_share": values["renew_every"] / iters,
        "k_over_c": values["dim"] / in_dim,
        "probe_lr_steps": values["linear_lr"] * iters,
    }


def scaled(pool_size: int, iters: int, reference: str = REFERENCE, reference_iters: int = REFERENCE_ITERS) -> dict:
    """Overrides that put a run of `iters` iterations with a pool of `pool_size` at the reference's operating point:
    ρ·M, the EMA horizon and the warm-up and renewal shares of the run, and K. (The online probes keep the official
    learning rates: protocol (i) compares HP and the raw features at the same budget, whatever it is.)"""
    ref = PRESETS[reference]
    ratio = reference_iters / iters
    horizon = max(1.0, 1 / (1 - ref["ema_m"]) / ratio)
    return {
        "rho": round(min(1.0, ref["rho"] * ref["pool_size"] / pool_size), 3),
        "ema_m": round(1 - 1 / horizon, 3),
        "lam_warmup": max(1, round(ref["lam_warmup"] / ratio)),
        "renew_every": max(1, round(ref["renew_every"] / ratio)),
        "dim": ref["dim"],
    }


def scale_table(presets: dict[str, int], reference: str = REFERENCE, reference_iters: int = REFERENCE_ITERS) -> str:
    """Markdown table of the operating point: the reference run and each small preset ({name: its iterations})."""
    rows = [
        ("negatives per positive, ρ·M", "negatives_per_positive", "{:.1f}", "kept: ρ = 41 / M"),
        ("EMA horizon 1/(1−m), share of the run", "ema_horizon_share", "{:.2%}", "kept: m = 1 − 1/(0.86 % of T)"),
        ("λ warm-up, share of the run", "warmup_share", "{:.1%}", "kept"),
        ("Q_sp renewal interval, share of the run", "renew_share", "{:.2%}", "kept (at least every iteration)"),
        ("K / C (codes against backbone features)", "k_over_c", "{:.2f}", "kept: K = 512"),
        ("linear-probe lr × steps", "probe_lr_steps", "{:.1f}", "not kept: both protocols compare equal budgets"),
    ]
    names = [reference, *presets]
    full = {n: get_config(n).to_dict() for n in names}
    points = {reference: operating_point(full[reference], reference_iters)}
    points.update({name: operating_point(full[name], iters) for name, iters in presets.items()})
    head = "| quantity | " + " | ".join(f"{n} ({reference_iters if n == reference else presets[n]} it.)" for n in names)
    lines = [head + " | rule |", "|---|" + "---:|" * len(names) + "---|"]
    for label, key, fmt, rule in rows:
        lines.append(f"| {label} | " + " | ".join(fmt.format(points[n][key]) for n in names) + f" | {rule} |")
    values = [
        ("ρ", "rho"),
        ("M", "pool_size"),
        ("m", "ema_m"),
        ("λ warm-up", "lam_warmup"),
        ("renewal", "renew_every"),
        ("K", "dim"),
        ("batch", "batch_size"),
        ("τ", "tau"),
    ]
    for label, key in values:
        lines.append(f"| {label} | " + " | ".join(str(full[n][key]) for n in names) + " | (value) |")
    return "\n".join(lines)


# The small presets at the official operating point (docs/deviations.md lists every change and its reason).
TOY_ITERS = 6 * (300 // 8)  # 6 epochs of 300 scenes, batch 8
NOTEBOOK_ITERS = 3 * (96 // 8)  # notebooks 04-06: 3 epochs of 96 scenes, batch 8
PRESETS["toy"].update(scaled(PRESETS["toy"]["pool_size"], TOY_ITERS))
PRESETS["toy-notebook"] = dict(
    PRESETS["toy"],
    n_train=96,
    n_val=32,
    epochs=3,
    pool_size=64,
    val_every=12,
    checkpoint_every=12,
    log_every=1,
    crf=False,
    **{k: v for k, v in scaled(64, NOTEBOOK_ITERS).items()},
)
CAMVID_CPU_ITERS = 6 * (367 // 8)  # 6 epochs of CamVid's 367 training images, batch 8
PRESETS["camvid-cpu"].update(scaled(PRESETS["camvid-cpu"]["pool_size"], CAMVID_CPU_ITERS))

# Your own images (`hpnb.data.folder`): the toy preset's operating point on any folder of photos, `n_clusters` when it
# has no labels. python -m hpnb train --preset folder data_root=PATH n_clusters=K
PRESETS["folder"] = dict(
    PRESETS["toy"],
    dataset="folder",
    n_train=None,
    n_val=None,
    val_split="val",  # the held-out tenth: selects the checkpoint (the HP loss there when there are no labels)
    test_split="val",
    val_every=25,
    checkpoint_every=25,
)

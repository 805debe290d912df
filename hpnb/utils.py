"""Small shared helpers: the one device chooser, seeding, cache paths and the hpnb error type."""

from __future__ import annotations

import contextlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__version__ = "0.1.0"  # the package's version (hpnb.__version__)


class HpnbError(RuntimeError):
    """An error with a message that says what was expected, what was found and what to run next."""


DEVICE_ENV = "HPNB_DEVICE"  # e.g. HPNB_DEVICE=cpu: what `make test` sets, so a GPU machine reproduces the CPU outputs


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """Return `device` if given, else $HPNB_DEVICE when set, else CUDA when present, else CPU (the only place hpnb
    chooses). The committed notebook outputs are CPU runs: `make test` sets HPNB_DEVICE=cpu so that a machine with a
    GPU checks them too; `make lab` leaves it unset, so a student on a GPU machine runs the notebooks on the GPU."""
    if device is not None:
        return torch.device(device)
    if os.environ.get(DEVICE_ENV):
        return torch.device(os.environ[DEVICE_ENV])
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def on_accelerator(device: str | torch.device) -> bool:
    """True for any device but the CPU: CUDA, or the device harness's stand-in (`hpnb.testing`)."""
    return torch.device(device).type != "cpu"


def autocast(device: str | torch.device, enabled: bool = True, dtype: torch.dtype = torch.bfloat16):
    """The one mixed-precision context of hpnb (forward and loss together): bf16 autocast on the device's type, CUDA
    or CPU (the same code path, so CPU tests run it); the harness's stand-in device takes the CPU's autocast."""
    kind = torch.device(device).type
    return torch.autocast(kind if kind in ("cuda", "cpu") else "cpu", dtype=dtype, enabled=enabled)


@contextlib.contextmanager
def exact_fp32(device: str | torch.device):
    """Products inside run in true fp32 whatever the caller set: autocast off and no TF32 (for the similarities that
    decide hidden positives: a criterion near 0.9 rounded by bf16 moves by up to ≈ 2e-3, and positives with it)."""
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with autocast(device, enabled=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev


def use_amp(amp: bool | None, device: str | torch.device) -> bool:
    """A config's `amp`: None (auto) = on an accelerator only; True = on any device (CPU bf16 too); False = off."""
    return on_accelerator(device) if amp is None else bool(amp)


GENERATORS: dict[str, type] = {}  # device type -> generator class where torch has none (hpnb.testing registers one)


def device_generator(device: str | torch.device, seed: int) -> torch.Generator:
    """A seeded generator on `device`, for random numbers drawn where they are used (a GPU refuses a CPU generator
    for a draw on the GPU); on the device harness's stand-in accelerator, the harness's generator."""
    device = torch.device(device)
    gen = GENERATORS[device.type]() if device.type in GENERATORS else torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def repo_root() -> Path:
    """The folder that holds the `hpnb` package (the repository root for an editable install)."""
    return Path(__file__).resolve().parents[1]


def atomic_save(obj, path: Path) -> Path:
    """torch.save through a .part file of this process, then a rename: an interrupted run never leaves half a file,
    and two processes that write the same file at once (two runs sharing a cache) cannot interleave."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(path: Path, text: str) -> Path:
    """Path.write_text through a .part file and a rename (JSON, logs, reports): a reader sees the old file or the new
    one, never half of one, and a failed write (disk full) leaves no .part behind."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: Path, obj, indent: int | None = 2) -> Path:
    """json.dumps `obj` and write it atomically (see atomic_write_text)."""
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def atomic_write(path: Path, write) -> Path:
    """Call write(tmp) on a .part file of this process, then rename it to `path`; on any failure remove the .part and
    re-raise (the other atomic_* helpers and figure saves go through here)."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.part")
    try:
        write(tmp)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def cache_dir(*parts: str) -> Path:
    """Where weights and feature caches go: $HPNB_CACHE, else `<repo>/data/cache` (git-ignored)."""
    root = Path(os.environ.get("HPNB_CACHE", repo_root() / "data" / "cache"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def shared_dir() -> Path | None:
    """`../shared` beside the repository (the workplace's data and docs), or None on a user's machine."""
    path = Path(os.environ.get("HPNB_SHARED", repo_root().parent / "shared"))
    return path if path.is_dir() else None


@dataclass(frozen=True)
class Session:
    """What `hpnb.setup()` chose: the device, the seed and the number of CPU threads."""

    device: torch.device
    seed: int
    threads: int

    def __str__(self) -> str:
        return f"hpnb {__version__} | torch {torch.__version__.split('+')[0]} | device={self.device.type} | seed={self.seed}"


def setup(seed: int = 0, device: str | None = None, quiet: bool = False) -> Session:
    """Seed everything, pick the device and print a stable one-line summary (first cell of every notebook)."""
    seed_everything(seed)
    session = Session(device=pick_device(device), seed=seed, threads=torch.get_num_threads())
    if not quiet:
        print(session)
    return session


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def in_notebook() -> bool:
    """True inside a Jupyter kernel (a notebook), False in a script, a terminal or the tests."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "IPKernelApp" in shell.config


def progress_bar(**kwargs):
    """A tqdm bar (same arguments). In a notebook it is the widget bar, displayed as the widget alone (no text
    fallback), so a saved notebook's outputs are the same whether the work ran (bar) or was loaded (no bar):
    nbval compares text, never widget views. Elsewhere the terminal bar on stderr."""
    if kwargs.get("disable") or not in_notebook():
        from tqdm import tqdm

        return tqdm(**kwargs)
    from IPython.display import display
    from tqdm.notebook import tqdm as widget_tqdm

    bar = widget_tqdm(display=False, **kwargs)
    display({WIDGET_VIEW: {"model_id": bar.container.model_id, "version_major": 2, "version_minor": 0}}, raw=True)
    bar.displayed = True
    return bar

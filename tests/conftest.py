"""Shared fixtures: a tiny in-memory dataset, a random-weight backbone (fast on 2 CPU cores), no pydensecrf."""

import builtins

import pytest
import torch
from torch.utils.data import Dataset

from hpnb.backbones import load_backbone


class TinySet(Dataset):
    """n random 'images' at res×res with a two-class label (left half 0, right half 1)."""

    def __init__(self, n=3, res=56, seed=0, split="train"):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, res, res, generator=g)
        self.split, self.root, self.n = split, None, n
        self.cache_extra = f"seed={seed}"

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        label = torch.zeros(self.images.shape[-2:], dtype=torch.int64)
        label[:, label.shape[1] // 2 :] = 1
        return {"image": self.images[i], "label": label, "name": f"tiny_{i}", "index": i}


@pytest.fixture
def tiny_set():
    return TinySet()


@pytest.fixture(scope="session")
def random_backbone():
    torch.manual_seed(0)
    return load_backbone("dinov2_vits14_imgfocus", weights="random", device="cpu")


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HPNB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def no_pydensecrf(monkeypatch):
    """Make `import pydensecrf…` fail, as on a machine without the optional CRF package."""
    real_import = builtins.__import__

    def no_crf(name, *args, **kwargs):
        if name.startswith("pydensecrf"):
            raise ImportError("No module named 'pydensecrf'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_crf)

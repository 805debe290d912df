"""Shared fixtures: a tiny in-memory dataset, a random-weight backbone (fast on 2 CPU cores), no pydensecrf."""

import builtins

import pytest
import torch
from tiny_data import TinySet

from hpnb.backbones import load_backbone


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

"""A tiny in-memory dataset for the unit tests (tests/conftest.py's `tiny_set` fixture; imported by tests that build
their own). Not named conftest: the repository root has a conftest.py of its own (the notebooks' nbval extras)."""

import torch
from torch.utils.data import Dataset


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

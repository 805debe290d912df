"""The k-means baseline on features with a known answer."""

import torch

from hpnb.baseline import kmeans, kmeans_baseline
from hpnb.features import FeatureSet


def test_kmeans_finds_well_separated_directions():
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(4, 16) * 5
    x = torch.cat([c + 0.3 * torch.randn(50, 16, generator=g) for c in centres])
    cent = kmeans(x, 4, seed=1)
    found = cent.argmax(dim=1).sort().values
    assert found.tolist() == [0, 1, 2, 3]
    assert (cent.norm(dim=1) - 1).abs().max() < 1e-5


def _featureset(n=4, noise=0.2, seed=0):
    """Labels: left half class 0, right half class 1 at 16x16; features point along e0 / e1 plus noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(n, 16, 16, dtype=torch.int16)
    labels[:, :, 8:] = 1
    feats = torch.zeros(n, 8, 4, 4)
    feats[:, 0, :, :2] = 1
    feats[:, 1, :, 2:] = 1
    feats = feats + noise * torch.randn(feats.shape, generator=g)
    return FeatureSet(
        feats=feats.half(),
        labels=labels,
        images=torch.zeros(n, 16, 16, 3, dtype=torch.uint8),
        names=[str(i) for i in range(n)],
    )


def test_baseline_is_perfect_on_separable_features_and_worse_with_noise():
    clean = kmeans_baseline(_featureset(noise=0.05), _featureset(noise=0.05, seed=1), n_classes=2)
    assert clean.scores.acc == 100.0 and clean.scores.miou == 100.0
    noisy = kmeans_baseline(_featureset(noise=2.0), _featureset(noise=2.0, seed=1), n_classes=2)
    assert noisy.scores.acc < 95.0
    assert sorted(clean.mapping.tolist()) == [0, 1]

"""The probes of the two evaluation protocols: online probes trained alone (i), converged linear probe and k-means (ii)."""

import torch
import torch.nn.functional as F

from hpnb.features import FeatureSet
from hpnb.probes import fit_kmeans, fit_linear_converged, fit_online_probes, patch_targets


def _separable(n=6, dim=5, grid=4, patch=4, seed=0) -> FeatureSet:
    """Random patch features whose class (0/1) is the sign of channel 0; labels at pixel resolution."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, dim, grid, grid, generator=g)
    feats[:, 0] += 2 * torch.sign(feats[:, 0])  # a margin around 0
    labels = (feats[:, 0] > 0).long().repeat_interleave(patch, 1).repeat_interleave(patch, 2)
    images = torch.zeros(n, grid * patch, grid * patch, 3, dtype=torch.uint8)
    return FeatureSet(feats=feats.half(), labels=labels.short(), images=images, names=[str(i) for i in range(n)])


def test_patch_targets_are_pixel_shares():
    labels = torch.tensor([[[0, 0, 1, -1], [0, 1, 1, 1]]])  # one 2×4 image, two 2×2 patches
    shares = patch_targets(labels, (1, 2), n_classes=2)
    assert torch.allclose(shares[0, :, 0, 0], torch.tensor([0.75, 0.25]))
    assert torch.allclose(shares[0, :, 0, 1], torch.tensor([0.0, 1.0]))  # the ignored pixel does not count


def test_converged_linear_probe_separates_and_is_at_the_optimum():
    fs = _separable()
    probe = fit_linear_converged(fs, 2)
    assert torch.equal(probe(fs.feats.float()).argmax(1), fs.labels[:, ::4, ::4].long())  # every patch right
    # at the optimum of the regularised objective more optimisation does not lower the loss
    again = fit_linear_converged(fs, 2, max_iter=2000)
    assert torch.allclose(probe.weight, again.weight, atol=1e-3) and torch.allclose(probe.bias, again.bias, atol=1e-3)


def test_online_probes_start_from_the_official_init_and_train_for_the_given_steps():
    fs = _separable(n=8)
    _, untrained = fit_online_probes(fs, 2, steps=0, seed=3)
    torch.manual_seed(3)
    _ = torch.nn.Conv2d(5, 2, 1)  # HPModel's order of draws: the linear probe first
    assert torch.equal(untrained, torch.randn(2, 5))  # the cluster probe's N(0, 1) centroids
    linear, trained = fit_online_probes(fs, 2, steps=30, batch=4, seed=3, linear_lr=1e-2)
    assert not torch.equal(trained, untrained)
    logits = F.interpolate(linear(fs.feats.float()), size=fs.labels.shape[-2:], mode="bilinear")
    assert (logits.argmax(1) == fs.labels).float().mean() > 0.9


def test_kmeans_of_raw_features_or_of_codes():
    fs = _separable()
    centroids = fit_kmeans(fs, 2, seed=0)
    assert centroids.shape == (2, 5) and torch.allclose(centroids.norm(dim=1), torch.ones(2), atol=1e-5)
    doubled = fit_kmeans(fs, 2, codes=lambda f: torch.cat([f, f], 1).float(), seed=0)
    assert doubled.shape == (2, 10)

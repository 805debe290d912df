"""Feature cache: shapes, reuse, refresh, atomic files and clear errors."""
import pytest
import torch

from conftest import TinySet
from hpnb import HpnbError
from hpnb.features import extract_features, load_features


def test_features_have_the_documented_shapes(random_backbone, tiny_set, tmp_cache):
    fs = extract_features(random_backbone, tiny_set, batch_size=2, progress=False)
    assert fs.feats.shape == (3, 384, 4, 4) and fs.feats.dtype == torch.float16
    assert fs.attn.shape == (3, 17, 17) and fs.attn.dtype == torch.float16
    assert fs.labels.shape == (3, 56, 56) and fs.images.shape == (3, 56, 56, 3) and fs.images.dtype == torch.uint8
    assert fs.names == ["tiny_0", "tiny_1", "tiny_2"]
    direct = random_backbone(torch.stack([tiny_set[i]["image"] for i in range(3)]))
    torch.testing.assert_close(fs.feats.float(), direct.feats, atol=2e-2, rtol=1e-2)
    torch.testing.assert_close(fs.attn.float(), direct.attn.mean(1), atol=2e-2, rtol=1e-2)
    assert torch.allclose(fs.normalized().norm(dim=1), torch.ones(3, 4, 4), atol=1e-5)


def test_cache_is_reused_and_refreshed(random_backbone, tiny_set, tmp_cache, monkeypatch):
    first = extract_features(random_backbone, tiny_set, progress=False)
    assert first.path.is_file() and first.path.parent == tmp_cache / "features"
    assert not list(tmp_cache.rglob("*.part"))  # atomic write left nothing behind

    calls = []

    def fake_compute(*args, **kwargs):
        calls.append(1)
        return load_features(first.path)

    monkeypatch.setattr("hpnb.features.compute_features", fake_compute)
    again = extract_features(random_backbone, tiny_set, progress=False)  # served from disk
    assert calls == [] and torch.equal(again.feats, first.feats) and again.meta["split"] == "train"
    extract_features(random_backbone, tiny_set, progress=False, refresh=True)  # refresh really recomputes
    assert calls == [1]


def test_different_data_gets_a_different_cache_file(random_backbone, tmp_cache):
    a = extract_features(random_backbone, TinySet(seed=0), progress=False)
    b = extract_features(random_backbone, TinySet(seed=1), progress=False)
    c = extract_features(random_backbone, TinySet(seed=0), progress=False, attention=False)
    assert len({a.path, b.path, c.path}) == 3 and c.attn is None


def test_corrupt_cache_file_names_the_file(tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(HpnbError, match="broken.pt.*refresh=True"):
        load_features(bad)


def test_empty_dataset_is_a_clear_error(random_backbone, tmp_cache):
    with pytest.raises(HpnbError, match="is empty"):
        extract_features(random_backbone, TinySet(n=0), progress=False)


def test_changed_data_with_the_same_name_is_not_served_from_the_cache(random_backbone, tmp_cache):
    a = TinySet(seed=0)
    first = extract_features(random_backbone, a, progress=False)
    a.images[0] += 1.0  # same class, split, size and cache_extra, different content
    second = extract_features(random_backbone, a, progress=False)
    assert first.path != second.path
    assert not torch.equal(first.feats, second.feats)

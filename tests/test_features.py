"""Feature cache: shapes, reuse, refresh, atomic files, clear errors, the same bits on every CPU."""

from pathlib import Path

import pytest
import torch
from tiny_data import TinySet

from hpnb import HpnbError
from hpnb.data import Picked
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


def test_picked_items_have_their_own_cache_and_the_same_features(random_backbone, tmp_cache):
    full = extract_features(random_backbone, TinySet(n=5), progress=False)
    first = extract_features(random_backbone, Picked(TinySet(n=5), [0, 3]), progress=False)
    second = extract_features(random_backbone, Picked(TinySet(n=5), [0, 4]), progress=False)  # same size and first
    assert len({full.path, first.path, second.path}) == 3
    assert first.names == ["tiny_0", "tiny_3"] and second.names == ["tiny_0", "tiny_4"]
    assert torch.equal(first.feats, full.feats[[0, 3]]) and torch.equal(second.feats, full.feats[[0, 4]])
    with pytest.raises(HpnbError, match=r"expected indices in \[0, 5\).*\[5\]"):
        Picked(TinySet(n=5), [1, 5])


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


def _features_in_subprocess(tmp_path, name, precision, env):
    """Features of two toy scenes (the real offline DINOv2-S/14, 224 px) in a fresh process under `env`: fp16 tensors."""
    import os
    import subprocess
    import sys
    import textwrap

    out = tmp_path / f"{name}.pt"
    code = textwrap.dedent(f"""
        import torch
        from hpnb.backbones import load_backbone
        from hpnb.features import compute_features
        from hpnb.toyworld import ToyWorld
        bb = load_backbone("dinov2_vits14_imgfocus")
        fs = compute_features(bb, ToyWorld("val", n=2, res=224), progress=False, precision={precision!r})
        torch.save({{"feats": fs.feats, "attn": fs.attn}}, {str(out)!r})
    """)
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env={**os.environ, **env})
    return torch.load(out)


def test_float64_caches_are_bit_identical_across_cpu_instruction_sets_and_threads(tmp_path):
    """What another CPU model does to the kernels, emulated: AVX2-only vectorised ATen and MKL kernels, 1 thread
    (against the native kernels on 2 threads)."""
    other_cpu = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "OMP_NUM_THREADS": "1"}
    native, emulated = (
        _features_in_subprocess(tmp_path, f"f64_{k}", "float64", env)
        # 2 threads whatever the caller's; PASSIVE (as `make test` sets): its threads sleep at barriers instead of spinning, so beside nbval
        # (`make test`) the two processes do not spin against each other (benchmarks/omp_oversubscription.py)
        for k, env in (("native", {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"}), ("other", other_cpu))
    )
    assert torch.equal(native["feats"], emulated["feats"]) and torch.equal(native["attn"], emulated["attn"])
    if torch.backends.cpu.get_cpu_capability() == "AVX512":  # the emulation really changes the kernels here:
        f32 = [
            _features_in_subprocess(tmp_path, f"f32_{k}", "float32", env)["feats"]  # fp32 differs
            for k, env in (("native", {}), ("other", other_cpu))
        ]
        assert not torch.equal(*f32), "float32 was bit-identical too: the emulated CPU did not change the kernels"

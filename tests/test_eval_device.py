"""Evaluation, probes and prediction on an accelerator (issue 21: F2 evaluation side, F5, F10) and the baseline's
streamed training features (§4, evaluation at paper scale). The device harness (`hpnb.testing.fake_accelerator`)
stands in for a GPU: it computes on the CPU and refuses every CPU/accelerator mix and every `.numpy()` of an
accelerator tensor, as CUDA does. Each test names the finding it guards."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tiny_data import TinySet
from torch import nn

from hpnb.features import FeatureSet
from hpnb.model import HPModel
from hpnb.testing import fake_accelerator

C = 3  # classes of the tiny feature sets


def feature_set(n: int = 6, dim: int = 6, grid: int = 4, patch: int = 4, seed: int = 0) -> FeatureSet:
    """Cached-looking features (fp16, CPU) whose class is the argmax of their first C channels."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, dim, grid, grid, generator=g)
    classes = feats[:, :C].argmax(1)
    labels = classes.repeat_interleave(patch, 1).repeat_interleave(patch, 2)
    labels[:, 0, :] = -1  # some ignored pixels
    images = torch.randint(0, 256, (n, grid * patch, grid * patch, 3), generator=g, dtype=torch.uint8)
    return FeatureSet(feats=feats.half(), labels=labels.short(), images=images, names=[str(i) for i in range(n)])


def tiny_model(dim: int = 6, seed: int = 0) -> HPModel:
    torch.manual_seed(seed)
    return HPModel(dim, 8, C).eval()


class StandInBackbone(nn.Module):
    """A frozen-backbone stand-in: 8×8 patches embedded by one strided convolution into `embed_dim` channels."""

    patch_size, name = 8, "stand-in"

    def __init__(self, embed_dim: int = 6):
        super().__init__()
        torch.manual_seed(1)
        self.embed_dim = embed_dim
        self.proj = nn.Conv2d(3, embed_dim, 8, stride=8)

    def forward(self, images: torch.Tensor, attention: bool = False):
        return SimpleNamespace(feats=self.proj(images), attn=None)


def on(device, model: nn.Module) -> nn.Module:
    """A copy of `model` on `device` (the fixtures stay on the CPU)."""
    return copy.deepcopy(model).to(device)


# ---- F2: validation and evaluation feed CPU caches to accelerator heads -------------------------------------------


def test_evaluate_moves_cached_features_to_the_heads_device():
    """F2: `evaluate` of a model on the accelerator on a CPU feature cache (9b5ffc3: the CPU features met the
    accelerator heads, 'Expected all tensors to be on the same device', at the first validation of every GPU run)."""
    from hpnb.evaluate import evaluate, model_predictor

    fs, model = feature_set(), tiny_model()
    on_cpu = evaluate(model_predictor(model), fs, C, batch=4, keep=2)
    with fake_accelerator() as dev:
        result = evaluate(model_predictor(on(dev, model)), fs, C, batch=4, keep=2)
    assert result.table() == on_cpu.table()
    assert all(s.device.type == "cpu" for s in result.samples.values())  # what leaves for figures is on the CPU
    assert torch.equal(result.samples["cluster"], on_cpu.samples["cluster"])


def test_evaluate_with_the_crf_hands_numpy_arrays_to_the_crf(monkeypatch):
    """F2: the CRF branch of `evaluate` on the accelerator (9b5ffc3: `.numpy()` of accelerator tensors). The CRF is
    replaced by a stand-in that checks what it is given (CPU numpy arrays) and returns the unrefined argmax."""
    import torch.nn.functional as F

    from hpnb.evaluate import evaluate, model_predictor

    seen = []

    def crf_batch(images, log_probs, workers=None):
        out = []
        for image, logp in zip(images, log_probs, strict=True):
            assert isinstance(image, np.ndarray) and isinstance(logp, np.ndarray)
            seen.append(logp.shape)
            up = F.interpolate(torch.from_numpy(logp).float()[None], size=image.shape[:2], mode="bilinear")
            out.append(up[0].argmax(0).numpy())
        return out

    monkeypatch.setattr("hpnb.crf.crf_batch", crf_batch)
    fs, model = feature_set(), tiny_model()
    on_cpu = evaluate(model_predictor(model), fs, C, crf=True, crf_chunk=4)
    with fake_accelerator() as dev:
        result = evaluate(model_predictor(on(dev, model)), fs, C, crf=True, crf_chunk=4)
    assert set(result.scores) == {"cluster", "linear", "cluster+crf", "linear+crf"} and len(seen) == 4 * len(fs)
    assert result.table() == on_cpu.table()


def test_confusion_matrix_counts_accelerator_predictions_against_cpu_labels():
    """F2: predictions computed on the accelerator, labels read from a CPU cache (9b5ffc3: mixed in one bincount)."""
    from hpnb.metrics import SegmentationMetric, confusion_matrix

    pred = torch.tensor([[0, 1, 1], [2, 2, 0]])
    gt = torch.tensor([[0, 1, -1], [2, 1, 5]], dtype=torch.int16)
    expected = confusion_matrix(pred, gt, 3, 3)
    with fake_accelerator() as dev:
        conf = confusion_matrix(pred.to(dev), gt, 3, 3)
        metric = SegmentationMetric(3)
        metric.update(pred.to(dev), gt)
    assert conf.device.type == "cpu" and torch.equal(conf, expected) and torch.equal(metric.conf, expected)


# ---- F10: probes and prediction take the model's device -----------------------------------------------------------


def test_both_protocols_fit_their_probes_on_the_models_device(monkeypatch):
    """F10: `protocol_predictors` with a model on the accelerator fits every probe there (online probes, converged
    linear probe, k-means) and each predictor scores on it (9b5ffc3: probes fitted on the CPU, then handed CPU
    weights and features to accelerator heads)."""
    from hpnb.config import get_config
    from hpnb.evaluate import evaluate, protocol_predictors

    train, val, model = feature_set(n=8), feature_set(n=4, seed=1), tiny_model()
    cfg = get_config("toy", batch_size=4)
    monkeypatch.setattr("hpnb.probes.CONVERGED_ITERS", 5, raising=False)  # the harness runs ops in Python: keep short
    with fake_accelerator() as dev:
        predictors = protocol_predictors(on(dev, model), train, C, cfg, steps=3)
        for preds in predictors.values():
            for pred in preds.values():
                assert pred.device == dev and pred.linear.weight.device == dev
                assert pred.linear.weight.dtype == torch.float32
                result = evaluate(pred, val, C)
                assert 0 <= result.scores["cluster"].acc <= 100


def test_each_probe_fits_on_the_device_it_is_given():
    """F10: the probes' dtype follows the device they fit on (float64 on the CPU only), not the features' (always
    the CPU: 9b5ffc3 fitted on the CPU in float64 whatever the model's device)."""
    from hpnb.probes import fit_kmeans, fit_linear_converged, fit_online_probes

    fs = feature_set(n=8)
    with fake_accelerator() as dev:
        linear, centroids = fit_online_probes(fs, C, steps=4, batch=4, device=dev)
        assert linear.weight.device == dev and centroids.device == dev
        probe = fit_linear_converged(fs, C, device=dev, max_iter=5)
        assert probe.weight.device == dev and probe.weight.dtype == torch.float32
        km = fit_kmeans(fs, C, seed=0, device=dev)
        assert km.device == dev and torch.allclose(km.norm(dim=1).cpu(), torch.ones(C), atol=1e-5)
    assert fit_linear_converged(fs, C, max_iter=20).weight.device.type == "cpu"


def test_image_labels_and_the_segmenter_run_on_the_models_device(random_backbone, monkeypatch):
    """F10: one image through a backbone and heads on the accelerator, with and without the CRF (9b5ffc3: the
    backbone forced onto the CPU, the image never moved, `.numpy()` of accelerator logits)."""
    from hpnb.config import get_config
    from hpnb.evaluate import image_labels, predict
    from hpnb.predict import Segmenter

    cfg = get_config("toy", val_res=28)
    model = HPModel(random_backbone.embed_dim, 8, C).eval()
    model.classes = ["a", "b", "c"]
    image = (np.random.default_rng(0).random((30, 41, 3)) * 255).astype(np.uint8)
    on_cpu = image_labels(image, cfg, model, random_backbone)

    def dense_crf(image, log_probs):
        assert isinstance(log_probs, np.ndarray) or log_probs.device.type == "cpu"
        return torch.as_tensor(log_probs).numpy()

    monkeypatch.setattr("hpnb.crf.dense_crf", dense_crf)
    with fake_accelerator() as dev:
        backbone, heads = on(dev, random_backbone), on(dev, model)
        labels = image_labels(image, cfg, heads, backbone)
        refined = image_labels(image, cfg, heads, backbone, crf=True)
        seg = Segmenter((cfg, heads), crf=False, backbone=backbone)
        assert seg.device == dev
        by_segmenter = seg(image)
        monkeypatch.setattr("hpnb.backbones.load_backbone", lambda *a, **k: backbone)
        by_predict = predict(image, (cfg, heads), crf=False)
    assert labels.shape == (30, 41) and np.array_equal(labels, on_cpu)
    assert (
        np.array_equal(refined, on_cpu) and np.array_equal(by_segmenter, on_cpu) and np.array_equal(by_predict, on_cpu)
    )


def test_the_clusters_nearest_patches_of_a_model_on_the_device():
    """F10 follow-on: `Segmenter` now puts a run's heads on the GPU, and the folder report ranks training patches
    with them (`hpnb.report.nearest_patches`): the CPU cache is moved to the heads, the ranking done on the CPU."""
    from hpnb.report import nearest_patches

    fs, model = feature_set(n=4, grid=4, patch=8), tiny_model()
    strips, shares = nearest_patches(fs, model, n=2, size=8)
    with fake_accelerator() as dev:
        strips_dev, shares_dev = nearest_patches(fs, on(dev, model), n=2, size=8)
    assert shares_dev == shares and all(np.array_equal(a, b) for a, b in zip(strips_dev, strips, strict=True))


def write_run(out, cfg, model: HPModel, step: int = 3):
    """A run folder by hand: config, the checkpoints, the selected step (what `load_run` and the evaluation read)."""
    out.mkdir(parents=True)
    cfg.save(out / "config.json")
    meta = {"backbone": cfg.backbone, "dim": model.dim, "in_dim": model.in_dim, "n_classes": model.n_classes}
    meta.update(classes=[f"class {k}" for k in range(model.n_classes)], form="code")
    state = {"model": model.state_dict(), "step": step, "meta": json.dumps(meta)}
    for name in ("checkpoint.pt", "best.pt"):  # a finished run: the last state and the one selected on val
        torch.save(state, out / name)
    (out / "metrics.json").write_text(json.dumps({"best": {"step": step}}))
    return out


def test_evaluate_on_split_runs_on_the_device_with_a_streamed_baseline(tmp_path, tmp_cache, monkeypatch):
    """F10 and §4: `evaluate_on_split(device=...)` puts the run on the accelerator (9b5ffc3: the CPU, always), and a
    training split above `WHOLE_PATCHES` patches is streamed through the backbone for the baseline instead of
    extracted whole (9b5ffc3: ≈ 305 GB of features for COCO-Stuff-27 at 320 px)."""
    from hpnb import probes
    from hpnb.config import get_config
    from hpnb.evaluate import evaluate_on_split

    cfg = get_config("toy", n_train=8, n_val=4, res=32, val_res=32, dim=8, batch_size=4, crf=False)
    backbone = StandInBackbone(embed_dim=6)
    torch.manual_seed(0)
    run = write_run(tmp_path / "run", cfg, HPModel(6, 8, 8))
    monkeypatch.setattr("hpnb.backbones.load_backbone", lambda *a, **k: backbone)
    monkeypatch.setattr(probes, "WHOLE_PATCHES", 20, raising=False)  # 8 images × 4×4 patches: above, so streamed
    monkeypatch.setattr(probes, "CONVERGED_ITERS", 5, raising=False)
    with fake_accelerator() as dev:
        result = evaluate_on_split(run, crf=False, progress=False, device=dev)
    fitted = sorted(p.name for p in (tmp_cache / "baselines").iterdir())  # the raw features' fits, named by source
    assert len(fitted) == 2 and all("_streamed_" in name and name.endswith("_meta.pt") for name in fitted), fitted
    assert result.summary["split"] == "test" and set(result.results) == {"online", "converged"}
    for protocol in result.summary["protocols"].values():
        for row in protocol["results"].values():
            assert 0 <= row["cluster"]["acc"] <= 100 and 0 <= row["linear"]["acc"] <= 100


# ---- §4: the baseline's training features streamed, the converged probes on a bounded sample ----------------------


def test_streamed_features_are_the_cached_ones_and_train_the_same_online_probes():
    """Streaming reads what the cache holds (float64 backbone on the CPU, stored as fp16), so the online probes
    trained batch by batch on it are those trained on the cache."""
    from hpnb.features import extract_features
    from hpnb.probes import StreamedFeatures, fit_online_probes, read_batches

    backbone, data = StandInBackbone(), TinySet(n=6, res=32)
    cached = extract_features(backbone, data, attention=False, cache=False, progress=False)
    streamed = StreamedFeatures(backbone, data, workers=0)
    assert len(streamed) == 6 and streamed.grid == cached.grid and streamed.dim == cached.feats.shape[1]
    idx = torch.tensor([4, 1])
    feats, labels = next(read_batches(streamed, [idx]))
    assert feats.dtype == torch.float16 and torch.equal(feats, cached.feats[idx])
    assert torch.equal(labels.short(), cached.labels[idx])
    a, b = fit_online_probes(cached, 2, 5, batch=2, seed=1), fit_online_probes(streamed, 2, 5, batch=2, seed=1)
    assert torch.equal(a[0].weight, b[0].weight) and torch.equal(a[1], b[1])


def test_patch_sample_is_uniform_distinct_and_keeps_each_patch_with_its_class_shares():
    from hpnb.probes import MIN_PER_IMAGE, patch_sample

    fs = feature_set(n=10, grid=8)
    sample = patch_sample(fs, C, max_points=100, seed=0)
    assert len(sample) == 100 and sample.feats.dtype == torch.float16
    rows = fs.feats.permute(0, 2, 3, 1).reshape(-1, fs.feats.shape[1])
    matches = (sample.feats[:, None, :] == rows[None]).all(-1)  # every sampled row is one patch of the set
    assert (matches.sum(1) == 1).all() and len(set(matches.float().argmax(1).tolist())) == 100  # and no repeats
    labelled = sample.targets.sum(1) > 0
    classes = sample.feats[:, :C].float().argmax(1)
    assert torch.equal(sample.targets[labelled].argmax(1), classes[labelled])  # the class shares of that patch
    assert MIN_PER_IMAGE * 10 >= 100  # ten images, at least MIN_PER_IMAGE patches each: every image read


def test_above_the_bound_the_converged_probes_fit_a_sample_below_it_every_patch(monkeypatch):
    """The notebooks' training sets stay under `WHOLE_PATCHES` (every patch, the committed numbers); a larger one is
    fitted on a sample of that many patches, which still separates separable classes."""
    from hpnb import probes

    fs = feature_set(n=12, grid=4)
    whole = probes.fit_linear_converged(fs, C, max_iter=50)
    monkeypatch.setattr(probes, "WHOLE_PATCHES", 100)  # 12 × 16 = 192 patches: above
    drawn = []
    real = probes.patch_sample
    monkeypatch.setattr(probes, "patch_sample", lambda *a, **k: drawn.append(1) or real(*a, **k))
    sampled = probes.fit_linear_converged(fs, C, max_iter=50)
    assert drawn and not torch.equal(sampled.weight, whole.weight)
    grid_classes = fs.feats[:, :C].float().argmax(1)
    assert (sampled(fs.feats.float()).argmax(1) == grid_classes).float().mean() > 0.95
    centroids = probes.fit_kmeans(fs, C, seed=0)
    assert centroids.shape == (C, fs.feats.shape[1]) and len(drawn) == 2


# ---- F5: the default evaluation split of every preset exists -------------------------------------------------------


@pytest.mark.parametrize("preset", sorted(__import__("hpnb.config", fromlist=["PRESETS"]).PRESETS))
def test_every_presets_splits_exist_in_its_dataset(preset):
    """F5: the evaluation's default split (`test_split`), the validation split and the training split of every
    preset are splits its dataset has (9b5ffc3: 'test' for COCO-Stuff-27 and Potsdam-3, which have none)."""
    from hpnb.config import get_config
    from hpnb.data import DATASETS, CroppedDataset

    cfg = get_config(preset)
    splits = DATASETS[cfg.dataset].splits
    assert cfg.test_split in splits, f"{preset}: test_split {cfg.test_split!r} not in {splits}"
    assert cfg.val_split in splits, f"{preset}: val_split {cfg.val_split!r} not in {splits}"
    train_splits = CroppedDataset.splits if cfg.crop_type else splits
    assert cfg.train_split in train_splits, f"{preset}: train_split {cfg.train_split!r} not in {train_splits}"

"""The probes of the two evaluation protocols: online probes trained alone (i), converged linear probe and k-means (ii)."""

import json
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from hpnb import probes
from hpnb.baseline import kmeans
from hpnb.evaluate import fit_linear_probe, kmeans_predictor
from hpnb.features import FeatureSet
from hpnb.probes import (
    CONVERGED_ITERS,
    fit_kmeans,
    fit_linear_converged,
    fit_online_probes,
    online_batches,
    patch_targets,
)


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


# ---- the converged probes record how they stopped, and say when they stopped at a cap ----------------------------


def test_converged_linear_probe_records_convergence_and_warns_at_its_cap(capsys):
    fs = _separable()
    record = {}
    probe = fit_linear_converged(fs, 2, record=record)
    assert torch.equal(probe.weight, fit_linear_converged(fs, 2).weight)  # recording does not change the fit
    assert record["method"] == "L-BFGS" and record["converged"] and not record["stop"].endswith("cap")
    assert 0 < record["iterations"] < record["max_iter"] == CONVERGED_ITERS
    met = record["grad_max"] <= record["tolerance_grad"] or record["loss_change"] < record["tolerance_change"]
    assert met or record["step_max"] <= record["tolerance_change"]
    assert capsys.readouterr().err == ""  # converged: nothing to say
    capped = {}
    fit_linear_converged(fs, 2, max_iter=2, record=capped)
    assert not capped["converged"] and capped["stop"].endswith("cap") and capped["grad_max"] > capped["tolerance_grad"]
    err = capsys.readouterr().err
    assert err.startswith("warning: the converged linear probe of the raw features stopped at its cap of ")
    assert err.count("\n") == 1  # one line
    assert json.loads(json.dumps([record, capped])) == [record, capped]  # JSON-ready, as eval_<split>.json keeps them


def test_kmeans_records_iterations_and_the_last_change_and_warns_at_its_cap(monkeypatch, capsys):
    fs = _separable()
    record = {}
    centroids = fit_kmeans(fs, 2, seed=0, record=record)
    assert torch.equal(centroids, fit_kmeans(fs, 2, seed=0))
    assert record["method"] == "k-means" and record["converged"] and record["max_iter"] == probes.KMEANS_ITERS
    assert 1 < record["iterations"] < record["max_iter"] and record["objective_change"] <= record["tol"]
    assert record["centroid_shift"] < 1e-3  # a fixed point: the last iteration hardly moved a centroid
    x = F.normalize(torch.randn(200, 6, generator=torch.Generator().manual_seed(0)), dim=1)
    once = {}
    kmeans(x, 5, iters=1, record=once)  # the baseline's own k-means records, and never warns
    assert once["iterations"] == 1 and not once["converged"] and once["objective_change"] is None
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(probes, "KMEANS_ITERS", 2)
    capped = {}
    fit_kmeans(fs, 3, seed=0, codes=lambda f: f.float(), record=capped)  # three clusters of two classes: ~10 steps
    assert capped["iterations"] == 2 and not capped["converged"] and capped["objective_change"] > capped["tol"]
    err = capsys.readouterr().err
    assert err.startswith("warning: k-means of the codes stopped at its cap of 2 iterations unconverged (relative")
    assert err.count("\n") == 1


# ---- a batch without a labelled pixel gives no step, and no NaN -------------------------------------------------


def _with_unlabelled(fs: FeatureSet, index: int) -> FeatureSet:
    labels = fs.labels.clone()
    labels[index] = -1
    return FeatureSet(feats=fs.feats, labels=labels, images=fs.images, names=fs.names)


def _only(fs: FeatureSet, index: int) -> FeatureSet:
    sl = slice(index, index + 1)
    return FeatureSet(feats=fs.feats[sl], labels=fs.labels[sl], images=fs.images[sl], names=fs.names[sl])


def test_online_probes_skip_the_linear_step_of_a_batch_without_labels():
    """Two images, batches of one, image 1 unlabelled: the linear probe steps on image 0 only, so it ends where three
    steps on image 0 alone end (same init; the skipped steps leave its weights and Adam moments as they were), while
    the cluster probe, which reads no labels, trains on every batch."""
    fs = _with_unlabelled(_separable(n=2), 1)
    order = [int(b) for b in online_batches(2, 6, 1, seed=0)]  # three epochs: each image once in each
    assert order.count(1) == 3 and 1 in order[1:5]  # unlabelled batches in the middle of the run
    linear, centroids = fit_online_probes(fs, 2, steps=6, batch=1, seed=0, linear_lr=1e-2)
    alone, alone_centroids = fit_online_probes(_only(fs, 0), 2, steps=3, batch=1, seed=0, linear_lr=1e-2)
    assert torch.isfinite(linear.weight).all() and torch.isfinite(centroids).all()
    assert torch.equal(linear.weight, alone.weight) and torch.equal(linear.bias, alone.bias)
    assert not torch.equal(centroids, alone_centroids)  # six cluster steps against three


def test_linear_probe_skips_a_batch_without_labels():
    """The same for `fit_linear_probe` (the k-means predictor's probe): an unlabelled batch counts as a step, makes
    none. Six steps of one image are three epochs of two, so image 1 comes in the middle of the run, and image 0
    three times."""
    fs = _with_unlabelled(_separable(n=2), 1)
    probe = fit_linear_probe(fs, 2, steps=6, batch=1, seed=4, lr=1e-2)
    alone = fit_linear_probe(_only(fs, 0), 2, steps=3, batch=1, seed=4, lr=1e-2)
    assert torch.isfinite(probe.weight).all() and torch.isfinite(probe.bias).all()
    assert torch.equal(probe.weight, alone.weight) and torch.equal(probe.bias, alone.bias)


# ---- the probes draw from their own generators: the global RNG is left alone -------------------------------------


def _global_rng() -> tuple:
    return torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()


def test_probes_leave_the_global_rng_alone_and_draw_what_a_global_seed_drew():
    fs = _separable(n=6)
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    before = _global_rng()
    linear, centroids = fit_online_probes(fs, 2, steps=0, seed=7)
    probe = fit_linear_probe(fs, 2, steps=0, seed=7)
    fit_online_probes(fs, 2, steps=3, batch=2, seed=1)
    fit_linear_probe(fs, 2, steps=3, batch=2, seed=1)
    fit_kmeans(fs, 2, seed=1)
    fit_linear_converged(fs, 2, max_iter=20)
    kmeans_predictor(fs, 2, seed=1, probe_steps=2)
    after = _global_rng()
    assert torch.equal(before[0], after[0]) and np.array_equal(before[1], after[1]) and before[2] == after[2]
    torch.manual_seed(7)  # what the probes drew when they reseeded the global RNG themselves
    reference = torch.nn.Conv2d(5, 2, 1)
    assert torch.equal(linear.weight, reference.weight) and torch.equal(linear.bias, reference.bias)
    assert torch.equal(centroids, torch.randn(2, 5))
    assert torch.equal(probe.weight, reference.weight) and torch.equal(probe.bias, reference.bias)


# ---- memoised baselines are keyed on every setting of their fit --------------------------------------------------


def _split_and_model() -> tuple[FeatureSet, torch.nn.Module]:
    """A training split with a cache file name (what names its memoised baselines) and an HP model for its features."""
    from hpnb.model import HPModel

    fs = _separable(n=8)
    fs = FeatureSet(feats=fs.feats, labels=fs.labels, images=fs.images, names=fs.names, path=Path("train_split.pt"))
    torch.manual_seed(0)
    return fs, HPModel(5, 4, 2).eval()


def test_memoised_baselines_are_refitted_when_a_setting_of_their_fit_changes(tmp_cache, monkeypatch):
    from hpnb.config import get_config
    from hpnb.evaluate import protocol_predictors

    fs, model = _split_and_model()
    fits = []  # the raw features' fits (codes=None); HP's converged fits always run

    def counting(name):
        real = getattr(probes, name)

        def fit(*a, **k):
            if name == "fit_online_probes" or a[2] is None:  # protocol_predictors passes the codes third
                fits.append(name)
            return real(*a, **k)

        monkeypatch.setattr(probes, name, fit)

    for name in ("fit_online_probes", "fit_linear_converged", "fit_kmeans"):
        counting(name)

    def run(cfg=None, steps=3):
        fits.clear()
        out = protocol_predictors(model, fs, 2, cfg or get_config("toy", batch_size=4), steps)
        return sorted(fits), out

    first, out = run()
    assert first == ["fit_kmeans", "fit_linear_converged", "fit_online_probes"]
    again, memo = run()
    assert again == []  # nothing changed: every baseline read back
    for protocol in ("online", "converged"):
        a, b = out[protocol]["raw features"], memo[protocol]["raw features"]
        assert torch.equal(a.linear.weight, b.linear.weight) and torch.equal(a.centroids, b.centroids)
        assert a.convergence == b.convergence  # the fit records come back with the fit
    assert memo["converged"]["raw features"].convergence["linear"]["method"] == "L-BFGS"
    online, converged = ["fit_online_probes"], ["fit_kmeans", "fit_linear_converged"]
    assert run(steps=4)[0] == online
    for change in ({"linear_lr": 2e-3}, {"cluster_lr": 1e-2}, {"batch_size": 2}):
        assert run(get_config("toy", **{"batch_size": 4, **change}))[0] == online, change
    assert run(get_config("toy", batch_size=4, seed=1))[0] == sorted(online + converged)
    for setting, value in (("CONVERGED_ITERS", 400), ("WEIGHT_DECAY", 1e-3), ("KMEANS_PATCHES", 50)):
        with monkeypatch.context() as m:
            m.setattr(probes, setting, value)
            assert run()[0] == converged, setting
    with monkeypatch.context() as m:
        m.setattr(probes, "KMEANS_ITERS", 400)
        m.setattr(probes, "LBFGS", {**probes.LBFGS, "history_size": 10})
        assert run()[0] == converged
    with monkeypatch.context() as m:
        m.setattr(probes, "PROBE_VERSION", probes.PROBE_VERSION + 1)
        assert run()[0] == sorted(online + converged)
    assert run()[0] == []  # back to the first settings: their fits are still there


def test_a_memoised_baseline_says_again_that_it_stopped_at_its_cap(tmp_cache, monkeypatch, capsys):
    """A notebook prints the same whether its baselines were fitted or read back from the memo."""
    from hpnb.config import get_config
    from hpnb.evaluate import protocol_predictors

    fs, model = _split_and_model()
    monkeypatch.setattr(probes, "CONVERGED_ITERS", 2)
    fitted = protocol_predictors(model, fs, 2, get_config("toy", batch_size=4), 3, protocols=("converged",))
    said = capsys.readouterr().err.splitlines()
    assert [line.split(" stopped")[0] for line in said] == [
        "warning: the converged linear probe of the raw features",
        "warning: the converged linear probe of the codes",
    ]
    loaded = protocol_predictors(model, fs, 2, get_config("toy", batch_size=4), 3, protocols=("converged",))
    assert capsys.readouterr().err.splitlines() == said
    assert loaded["converged"]["raw features"].convergence == fitted["converged"]["raw features"].convergence
    assert not loaded["converged"]["raw features"].convergence["linear"]["converged"]


def test_memo_keys_name_the_split_protocol_version_and_device():
    from types import SimpleNamespace

    from hpnb.evaluate import _memo_key, baseline_settings

    cfg = SimpleNamespace(seed=0, batch_size=8, linear_lr=1e-3, cluster_lr=5e-3)
    cpu = baseline_settings(27, cfg, 100, torch.device("cpu"), sampled=False)
    gpu = baseline_settings(27, cfg, 100, torch.device("cuda"), sampled=True)
    key = _memo_key("coco_seed0", "online", cpu["online"])
    assert key.startswith(f"coco_seed0_online_v{probes.PROBE_VERSION}_") and key == _memo_key(
        "coco_seed0", "online", cpu["online"]
    )
    assert _memo_key("coco_seed0", "converged", gpu["converged"]).endswith("_cuda")
    assert gpu["converged"]["sample"] == {"whole_patches": probes.WHOLE_PATCHES, "min_per_image": probes.MIN_PER_IMAGE}
    assert _memo_key("coco_seed0", "converged", cpu["converged"]) != _memo_key(
        "coco_seed0", "converged", baseline_settings(26, cfg, 100, torch.device("cpu"), sampled=False)["converged"]
    )


# ---- eval_<split>.json keeps the records beside the protocol (ii) results -----------------------------------------


class _PatchEmbed(torch.nn.Module):
    """A backbone stand-in: 8×8 patches embedded by one strided convolution (what evaluate_on_split reads)."""

    patch_size, embed_dim, name = 8, 6, "stand-in"

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Conv2d(3, 6, 8, stride=8)

    def forward(self, images: torch.Tensor, attention: bool = False):
        return SimpleNamespace(feats=self.proj(images), attn=None)


def test_eval_json_keeps_how_each_converged_probe_stopped(tmp_path, tmp_cache, monkeypatch):
    from hpnb.config import get_config
    from hpnb.evaluate import evaluate_on_split
    from hpnb.model import HPModel

    # val_res ≠ res: the baseline's training features are extracted without attention, which the stand-in lacks
    cfg = get_config("toy", n_train=8, n_val=4, res=40, val_res=32, dim=8, batch_size=4, crf=False)
    torch.manual_seed(0)
    backbone, model = _PatchEmbed(), HPModel(6, 8, 8)
    run = tmp_path / "run"
    run.mkdir()
    cfg.save(run / "config.json")
    meta = {"backbone": cfg.backbone, "dim": 8, "in_dim": 6, "n_classes": 8, "form": "code"}
    meta["classes"] = [f"class {k}" for k in range(8)]
    torch.save({"model": model.state_dict(), "step": 3, "meta": json.dumps(meta)}, run / "checkpoint.pt")
    (run / "metrics.json").write_text(json.dumps({"best": {"step": 3}}))
    monkeypatch.setattr("hpnb.backbones.load_backbone", lambda *a, **k: backbone)
    evaluate_on_split(run, split="val", crf=False, which="last", progress=False, device="cpu")
    summary = json.loads((run / "eval_val.json").read_text())
    converged = summary["protocols"]["converged"]
    assert "convergence" not in summary["protocols"]["online"]  # the online probes train for a budget of steps
    assert set(converged["convergence"]) == set(converged["results"]) == {"HP", "raw features"}
    for method, fits in converged["convergence"].items():
        assert fits["linear"]["method"] == "L-BFGS" and fits["kmeans"]["method"] == "k-means", method
        assert fits["linear"]["max_iter"] == CONVERGED_ITERS and fits["kmeans"]["max_iter"] == probes.KMEANS_ITERS
        assert all(isinstance(f["converged"], bool) and f["iterations"] >= 1 for f in fits.values())
    for row in converged["results"].values():  # the rows the readers (hpnb.report, the CLI) iterate are unchanged
        assert set(row) == {"cluster", "linear", "empty_clusters"}

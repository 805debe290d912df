"""The GPU code paths of training on a machine without a GPU (issue 21): mixed precision as CPU bf16 autocast, and the
device harness (`hpnb.testing.fake_accelerator`: a stand-in accelerator that computes on the CPU and refuses every
CPU/accelerator mix, as CUDA does). Each test names the finding of issue 21 it guards."""

from __future__ import annotations

import os
import re

import pytest
import torch

from hpnb.testing import DeviceMixError, fake_accelerator

TINY = dict(
    n_train=8,
    n_val=4,
    res=56,
    val_res=56,
    dim=8,
    pool_size=4,
    batch_size=4,
    epochs=2,
    aug_views=1,
    val_every=2,
    checkpoint_every=1,
    log_every=1,
    lam_warmup=1,
    renew_every=1,
    rho=0.3,
    crf=False,
)


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HPNB_CACHE", str(tmp_path / "cache"))


def tiny(**kw):
    from hpnb.config import get_config

    return get_config("toy", **{**TINY, **kw})


def weights(model) -> torch.Tensor:
    return torch.cat([p.detach().cpu().flatten().float() for p in model.state_dict().values()])


# ---- the harness itself -------------------------------------------------------------------------------------------


def test_the_harness_computes_and_refuses_what_a_gpu_refuses():
    from hpnb.utils import device_generator

    with fake_accelerator() as dev:
        layer = torch.nn.Linear(3, 2).to(dev)
        x = torch.randn(4, 3).to(dev)
        y = layer(x)
        assert y.device == dev and torch.allclose(
            y.cpu(), torch.nn.functional.linear(x.cpu(), *[p.cpu() for p in layer.parameters()])
        )
        with pytest.raises(DeviceMixError, match="same device"):
            layer(torch.randn(4, 3))  # CPU input, accelerator weights
        with pytest.raises(DeviceMixError, match="generator"):
            torch.rand(3, generator=torch.Generator().manual_seed(0), device=dev)
        assert torch.rand(3, generator=device_generator(dev, 0), device=dev).device == dev
        with pytest.raises(DeviceMixError, match="generator"):
            torch.rand(3, generator=device_generator(dev, 0))  # an accelerator generator for a CPU draw
        with pytest.raises(RuntimeError, match="numpy"):
            y.detach().numpy()  # on CUDA: "can't convert cuda:0 device type tensor to numpy"
        assert x[torch.tensor([0, 2])].device == dev  # CPU index tensors are fine, as on CUDA
        assert (x.sum() + torch.tensor(1.0)).device == dev  # so are 0-d CPU tensors


# ---- F1: one autocast around forward and loss ---------------------------------------------------------------------


def test_amp_true_trains_under_bf16_autocast_on_the_cpu_with_the_probes_inside(
    tmp_path, isolated_cache, random_backbone, monkeypatch
):
    """F1: `amp=true` autocasts on any device; the probes' losses run inside the autocast (on CUDA, 9b5ffc3 ran them
    outside on bf16 codes: 'Input type (BFloat16) and bias type (float) should be the same' at iteration 1)."""
    from hpnb.model import HPModel
    from hpnb.train import train

    seen = []
    real = HPModel.probe_losses

    def spy(self, codes, labels):
        seen.append((codes.dtype, torch.is_autocast_enabled("cpu")))
        return real(self, codes, labels)

    monkeypatch.setattr(HPModel, "probe_losses", spy)
    result = train(tiny(amp=True, epochs=1), out=tmp_path / "run", backbone=random_backbone, progress=False)
    assert seen and all(s == (torch.bfloat16, True) for s in seen), seen[:2]
    assert all(torch.isfinite(p).all() for p in result.model.parameters())
    assert result.best["cluster"]["acc"] > 0


def test_amp_defaults_to_the_accelerator_only():
    from hpnb.utils import use_amp

    assert use_amp(None, "cpu") is False and use_amp(None, "cuda") is True and use_amp(None, "meta") is True
    assert use_amp(True, "cpu") is True and use_amp(False, "cuda") is False


# ---- the training loop on the stand-in accelerator: F1-F4, F8 -----------------------------------------------------


def test_training_validation_checkpoint_and_resume_on_an_accelerator(tmp_path, isolated_cache, random_backbone):
    """F2 (validation features moved to the heads' device), F3 (pools restored onto the device), F8 (R drawn on the
    device from a seeded device generator): a run on the accelerator, and the same run stopped and resumed, end with
    the same weights."""
    from hpnb.train import Trainer

    with fake_accelerator() as dev:
        cfg = tiny(device=dev.type)
        backbone = random_backbone  # the cached features come from the CPU backbone, as a cache-mode run on a GPU
        straight = Trainer(cfg, tmp_path / "a", backbone=backbone, progress=False)
        assert straight.dev_gen is not None
        result = straight.fit()
        assert next(result.model.parameters()).device == dev
        assert straight.q_ag.device == dev and "cluster" in result.best

        first = Trainer(cfg, tmp_path / "b", backbone=backbone, progress=False)
        first.total = 2  # the same run, stopped after its second step (a resume keeps the run's config)
        first.fit()
        second = Trainer(cfg, tmp_path / "b", backbone=backbone, progress=False)
        resumed = second.fit(resume=True)
        assert second.q_ag.device == dev and second.q_sp.device == dev
        assert torch.equal(weights(resumed.model), weights(result.model))


def test_online_mode_on_an_accelerator_reads_batches_through_the_loader(tmp_path, isolated_cache):
    """F8: the online source reads the trainer's planned batches through a DataLoader, moves each batch once, augments
    and runs the ViT on the device; the reference pools are read in batches."""
    from hpnb.backbones import load_backbone
    from hpnb.train import Trainer

    torch.manual_seed(0)
    with fake_accelerator() as dev:
        backbone = load_backbone("dinov2_vits14_imgfocus", weights="random", device=dev)
        trainer = Trainer(
            tiny(device=dev.type, backbone_mode="online", epochs=1), tmp_path / "run", backbone=backbone, progress=False
        )
        reads = []
        real = trainer.source._items

        def spy(idx):
            reads.append(tuple(idx.tolist()) == trainer.source._planned[0] if trainer.source._planned else False)
            return real(idx)

        trainer.source._items = spy
        result = trainer.fit()
        assert reads and all(reads)  # every training batch came from the planned loader
        assert next(result.model.parameters()).device == dev


def test_the_label_free_selection_draws_its_negatives_on_the_device(tmp_path, isolated_cache, random_backbone):
    """F4: a folder of photos without labels selects its checkpoint by the held-out HP loss; its R is drawn from a
    device generator (9b5ffc3: a CPU Generator with device='cuda')."""
    from test_folder import make_folder, tiny_folder_config

    from hpnb.train import Trainer

    root = make_folder(tmp_path / "photos", n=12)
    with fake_accelerator() as dev:
        trainer = Trainer(
            tiny_folder_config(root, device=dev.type, epochs=1),
            tmp_path / "run",
            backbone=random_backbone,
            progress=False,
        )
        trainer.build_pools(task_agnostic=True)
        first = trainer.held_out_loss()
        assert first == trainer.held_out_loss()  # the same draw at every validation
        assert trainer.validate()["held_out_loss"] == round(first, 4)


def test_negatives_on_the_cpu_are_still_drawn_from_the_loops_generator(tmp_path, isolated_cache, random_backbone):
    """The CPU path is unchanged by the device generators (the committed notebook outputs are CPU runs)."""
    from hpnb.train import Trainer

    trainer = Trainer(tiny(), tmp_path / "run", backbone=random_backbone, progress=False)
    assert trainer.dev_gen is None


def test_hpnb_device_pins_the_default_device(monkeypatch):
    from hpnb.utils import pick_device

    monkeypatch.setenv("HPNB_DEVICE", "cpu")
    assert pick_device() == torch.device("cpu")
    assert pick_device("meta") == torch.device("meta")  # an explicit device still wins
    monkeypatch.delenv("HPNB_DEVICE")
    assert pick_device().type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_make_test_pins_the_cpu_for_the_committed_outputs():
    """`make test` exports HPNB_DEVICE=cpu to every command of its recipe (nbval's kernels inherit it)."""
    makefile = open(os.path.join(os.path.dirname(__file__), "..", "Makefile")).read()
    assert re.search(r"^test: export HPNB_DEVICE\s*=\s*cpu$", makefile, re.M)
    assert not re.search(r"^lab: export HPNB_DEVICE", makefile, re.M)  # a student's JupyterLab may use the GPU


# ---- F9: the thresholds of hidden positives in exact fp32 ---------------------------------------------------------


def near_pool(n: int = 2048, m: int = 128, d: int = 384, noise: float = 0.35, seed: int = 0):
    """Unit anchors close to pool vectors (cosines ≈ 0.9, where the paper's criteria sit) and the unit pool."""
    g = torch.Generator().manual_seed(seed)
    pool = torch.nn.functional.normalize(torch.randn(m, d, generator=g), dim=1)
    pick = torch.randint(m, (n,), generator=g)
    x = torch.nn.functional.normalize(pool[pick] + noise * torch.randn(n, d, generator=g) / d**0.5, dim=1)
    return x, pool


def test_criteria_and_positive_masks_are_exact_fp32_under_bf16_autocast_and_tf32():
    """F9: under autocast the criteria (Eq. 2) and the masks (Eq. 3) are the fp32 ones. 9b5ffc3 took the criteria
    inside the bf16 autocast: thresholds near 0.9 moved by up to ≈ 2e-3, and positives across them."""
    from hpnb.positives import criteria, positive_block

    x, pool = near_pool()
    exact = criteria(x, pool)
    exact_pos = positive_block(x[:256], x, exact[:256], exact, 0)
    assert 0.85 < float(exact.mean()) < 0.95
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(criteria(x, pool), exact)
            assert torch.equal(positive_block(x[:256], x, exact[:256], exact, 0), exact_pos)
            rounded = (x @ pool.T).amax(dim=1).float()  # what a bf16 criterion would be
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    assert float((rounded - exact).abs().max()) > 1e-3  # the error the fix removes is real at these cosines


def test_exact_fp32_switches_tf32_and_autocast_off_inside_only():
    from hpnb.utils import exact_fp32

    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            with exact_fp32("cpu"):
                assert not torch.backends.cuda.matmul.allow_tf32 and not torch.is_autocast_enabled("cpu")
            assert torch.backends.cuda.matmul.allow_tf32 and torch.is_autocast_enabled("cpu")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


# ---- F3 and F8, one training step at a time (no validation) -------------------------------------------------------


def test_a_resumed_run_uses_its_pools_on_the_device(tmp_path, isolated_cache, random_backbone):
    """F3: the pools saved in checkpoint.pt come back on the CPU; resume moves them to the device (9b5ffc3 changed only
    their dtype, and the next step mixed devices in the criteria)."""
    from hpnb.runs import CHECKPOINT
    from hpnb.train import Trainer

    with fake_accelerator() as dev:
        cfg = tiny(device=dev.type)
        first = Trainer(cfg, tmp_path / "run", backbone=random_backbone, progress=False)
        first.build_pools(task_agnostic=True)
        first.train_step(torch.arange(4), lam=0.5)
        first.step = 1
        first.save(CHECKPOINT)
        second = Trainer(cfg, tmp_path / "run", backbone=random_backbone, progress=False)
        assert second.resume()
        assert second.q_ag.device == dev and second.q_sp.device == dev
        log = second.train_step(torch.arange(4, 8), lam=0.5)
        assert log["loss"] == log["loss"]  # finite, not NaN


def test_a_training_step_copies_only_its_batch_to_the_device_and_without_blocking(
    tmp_path, isolated_cache, random_backbone
):
    """F8: R's Bernoulli(ρ) mask (N, B·N) is drawn on the device (9b5ffc3 drew it on the CPU and copied it every
    iteration: 39 MB at B = 64, N = 784, from ≈ 150 MB of CPU random floats); the batch moves once, non-blocking."""
    from hpnb.train import Trainer

    moved = []
    with fake_accelerator(transfers=moved) as dev:
        trainer = Trainer(tiny(device=dev.type), tmp_path / "run", backbone=random_backbone, progress=False)
        trainer.build_pools(task_agnostic=True)
        moved.clear()
        trainer.train_step(torch.arange(4), lam=0.5)
    n = 16  # 4×4 patches at 56 px with patch 14
    assert all(t.non_blocking for t in moved), moved
    # exactly the batch: clean and augmented features, LHP weights and denominators, labels; no (N, B·N) R mask
    assert sorted(t.shape for t in moved) == sorted([(4, 384, 4, 4), (4, 384, 4, 4), (4, n, 9), (4, n), (4, 56, 56)])

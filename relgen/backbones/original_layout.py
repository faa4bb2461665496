"""Write a diffusers backbone as one checkpoint file in the original Stable Diffusion layout.

The original layout is the one of the single ``.safetensors`` / ``.ckpt`` files that model sites
distribute: the UNet under ``model.diffusion_model.`` (the ``input_blocks`` / ``middle_block`` /
``output_blocks`` numbering of the CompVis ``openaimodel.UNetModel``), the VAE under
``first_stage_model.`` (``encoder.down.N.block.M``), and the text encoders under
``cond_stage_model.`` (SD 1.x: ``transformer.`` + the transformers CLIP names; SD 2.x:
``model.`` + the OpenCLIP names) or ``conditioner.embedders.0/1.`` (SDXL, as Stability's
``generative-models``). diffusers' ``from_single_file`` reads it back; tests and benchmarks use
this writer to make checkpoints of that layout from random weights, at tiny or full size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

#: diffusers ResNet block names -> CompVis ``ResBlock`` names (UNet)
_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
#: diffusers VAE names -> CompVis ``ResnetBlock`` / ``AttnBlock`` names
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
#: transformers CLIP encoder-layer names -> OpenCLIP ``ResidualAttentionBlock`` names
_OPEN_CLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                    "self_attn.out_proj": "attn.out_proj"}


def _rename(key: str, prefixes: dict[str, str], inner: Optional[dict[str, str]] = None) -> str:
    for old, new in prefixes.items():
        if key.startswith(old):
            rest = key[len(old):]
            for a, b in (inner or {}).items():
                if rest.startswith(a + "."):
                    rest = b + rest[len(a):]
                    break
            return new + rest
    raise KeyError(f"no original-layout name for '{key}'")


def unet_to_original(state: dict, config) -> dict:
    """A diffusers ``UNet2DConditionModel`` state dict in the CompVis UNet numbering.

    Each resolution level of ``input_blocks`` holds ``layers_per_block`` (ResBlock, attention)
    pairs and then one downsampler; ``output_blocks`` hold ``layers_per_block + 1`` pairs with the
    upsampler appended to the level's last block (after its attention, where it has one)."""
    per = config["layers_per_block"]
    down, up = list(config["down_block_types"]), list(config["up_block_types"])
    resnets, others = {}, {
        "time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
        "add_embedding.linear_1.": "label_emb.0.0.", "add_embedding.linear_2.": "label_emb.0.2.",
        "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2.",
        "mid_block.attentions.0.": "middle_block.1.",
    }
    resnets["mid_block.resnets.0."], resnets["mid_block.resnets.1."] = "middle_block.0.", "middle_block.2."
    for i in range(len(down)):
        for j in range(per):
            n = 1 + i * (per + 1) + j
            resnets[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{n}.0."
            others[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{n}.1."
        if i < len(down) - 1:
            others[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{1 + i * (per + 1) + per}.0.op."
    for i, kind in enumerate(up):
        for j in range(per + 1):
            n = i * (per + 1) + j
            resnets[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{n}.0."
            others[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{n}.1."
        if i < len(up) - 1:
            slot = 2 if kind.startswith("CrossAttn") else 1
            others[f"up_blocks.{i}.upsamplers.0."] = f"output_blocks.{i * (per + 1) + per}.{slot}."
    out = {}
    for key, value in state.items():
        if any(key.startswith(p) for p in resnets):
            new = _rename(key, resnets, _UNET_RESNET)
        else:
            new = _rename(key, others)
        out["model.diffusion_model." + new] = value
    return out


def vae_to_original(state: dict, config) -> dict:
    """A diffusers ``AutoencoderKL`` state dict in the CompVis autoencoder names (the decoder's
    ``up`` levels are numbered from the lowest resolution; attention projections are 1×1 convs)."""
    levels = len(config["block_out_channels"])
    prefixes = {}
    for part in ("encoder", "decoder"):
        prefixes[f"{part}.mid_block.resnets.0."] = f"{part}.mid.block_1."
        prefixes[f"{part}.mid_block.resnets.1."] = f"{part}.mid.block_2."
        prefixes[f"{part}.mid_block.attentions.0."] = f"{part}.mid.attn_1."
        prefixes[f"{part}.conv_norm_out."] = f"{part}.norm_out."
        prefixes[f"{part}.conv_in."] = f"{part}.conv_in."
        prefixes[f"{part}.conv_out."] = f"{part}.conv_out."
    for i in range(levels):
        for j in range(config["layers_per_block"] + 1):
            prefixes[f"encoder.down_blocks.{i}.resnets.{j}."] = f"encoder.down.{i}.block.{j}."
            prefixes[f"decoder.up_blocks.{i}.resnets.{j}."] = f"decoder.up.{levels - 1 - i}.block.{j}."
        prefixes[f"encoder.down_blocks.{i}.downsamplers.0.conv."] = f"encoder.down.{i}.downsample.conv."
        prefixes[f"decoder.up_blocks.{i}.upsamplers.0.conv."] = f"decoder.up.{levels - 1 - i}.upsample.conv."
    prefixes["quant_conv."], prefixes["post_quant_conv."] = "quant_conv.", "post_quant_conv."
    out = {}
    for key, value in state.items():
        if ".mid_block.attentions." in key:
            new = _rename(key, prefixes, _VAE_ATTN)
            if value.ndim == 2:  # Linear in diffusers, 1x1 Conv2d in the original
                value = value[:, :, None, None]
        else:
            new = _rename(key, prefixes, _VAE_RESNET)
        out["first_stage_model." + new] = value
    return out


def _text_keys(state: dict) -> dict:
    """transformers CLIP text-model keys without the ``text_model.`` wrapper (present or not)."""
    return {k[len("text_model."):] if k.startswith("text_model.") else k: v for k, v in state.items()}


def clip_to_original(state: dict, prefix: str) -> dict:
    """OpenAI CLIP-L as SD 1.x (``cond_stage_model.transformer.``) and SDXL
    (``conditioner.embedders.0.transformer.``) store it: the transformers names under
    ``text_model.``, with the ``position_ids`` buffer the released files carry."""
    out = {f"{prefix}text_model.{k}": v for k, v in _text_keys(state).items()}
    positions = out[f"{prefix}text_model.embeddings.position_embedding.weight"].shape[0]
    out[f"{prefix}text_model.embeddings.position_ids"] = torch.arange(positions)[None]
    return out


def open_clip_to_original(state: dict, prefix: str) -> dict:
    """An OpenCLIP text tower (SD 2.x ``cond_stage_model.model.``, SDXL's bigG under
    ``conditioner.embedders.1.model.``): fused ``in_proj`` q/k/v, ``resblocks``, and the
    projection stored as ``x @ text_projection`` (the transpose of the Linear weight)."""
    text = _text_keys(state)
    out = {
        "token_embedding.weight": text.pop("embeddings.token_embedding.weight"),
        "positional_embedding": text.pop("embeddings.position_embedding.weight"),
        "ln_final.weight": text.pop("final_layer_norm.weight"),
        "ln_final.bias": text.pop("final_layer_norm.bias"),
    }
    if "text_projection.weight" in text:
        out["text_projection"] = text.pop("text_projection.weight").T.contiguous()
    layers = sorted({int(k.split(".")[2]) for k in text if k.startswith("encoder.layers.")})
    for n in layers:
        src, dst = f"encoder.layers.{n}.", f"transformer.resblocks.{n}."
        for kind in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat([text.pop(f"{src}self_attn.{p}_proj.{kind}")
                                                          for p in ("q", "k", "v")])
        for key in [k for k in text if k.startswith(src)]:
            out[dst + _rename(key[len(src):], {"": ""}, _OPEN_CLIP_LAYER)] = text.pop(key)
    text.pop("embeddings.position_ids", None)
    if text:
        raise KeyError(f"no OpenCLIP name for {sorted(text)[:3]}")
    return {prefix + k: v for k, v in out.items()}


def original_state_dict(architecture: str, unet, vae, text_encoders: list) -> dict:
    """The whole backbone in the original layout of ``architecture`` (``sd1``, ``sd2``, ``sdxl``)."""
    state = unet_to_original(unet.state_dict(), unet.config)
    state.update(vae_to_original(vae.state_dict(), vae.config))
    if architecture == "sd1":
        state.update(clip_to_original(text_encoders[0].state_dict(), "cond_stage_model.transformer."))
    elif architecture == "sd2":
        state.update(open_clip_to_original(text_encoders[0].state_dict(), "cond_stage_model.model."))
    elif architecture == "sdxl":
        state.update(clip_to_original(text_encoders[0].state_dict(), "conditioner.embedders.0.transformer."))
        state.update(open_clip_to_original(text_encoders[1].state_dict(), "conditioner.embedders.1.model."))
    else:
        raise ValueError(f"unknown architecture {architecture!r} (sd1, sd2, sdxl)")
    return state


def save_original_checkpoint(path, architecture: str, unet, vae, text_encoders: list,
                             v_pred_marker: bool = False, metadata: Optional[dict] = None,
                             dtype: Optional[torch.dtype] = None) -> Path:
    """Write the backbone as ``path`` (``.safetensors``, or a ``.ckpt`` zip holding
    ``{"state_dict": ...}`` as the released CompVis/Stability files do).

    ``v_pred_marker`` adds the empty ``v_pred`` tensor that v-prediction files from model sites
    carry; ``metadata`` goes into the safetensors header (e.g. ``modelspec.prediction_type``)."""
    path = Path(path)
    state = original_state_dict(architecture, unet, vae, text_encoders)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    if v_pred_marker:
        state["v_pred"] = torch.zeros(0)
    state = {k: v.detach().contiguous() for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(tmp), metadata=metadata)
    elif path.suffix == ".ckpt":
        torch.save({"state_dict": state, "global_step": 0}, tmp)
    else:
        raise ValueError(f"{path}: write .safetensors or .ckpt")
    tmp.replace(path)
    return path

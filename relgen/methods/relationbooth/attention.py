"""Masked parallel cross-attention of MS-Diffusion, as diffusers attention processors.

Cross-attention layers receive ``encoder_hidden_states = [text tokens, image tokens]`` where the
image tokens are laid out as ``[num_dummy_tokens dummy tokens, tokens_per_entity tokens of entity 1,
tokens_per_entity tokens of entity 2, ...]``. The processor attends to text and image tokens with
separate keys/values and adds the results::

    out = to_out(Attn(Q, K_text, V_text) + scale * Attn_img(Q, K_ip, V_ip))

Boxes, passed through ``cross_attention_kwargs={"boxes": ...}``, restrict which image tokens a
query may see: a query inside entity ``j``'s box sees only entity ``j``'s tokens, a query outside
every box sees only the dummy tokens and receives no image contribution.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn


class TextAttentionStore:
    """Collects per-layer text cross-attention maps of a token span.

    When :attr:`active` is True, every :class:`MaskedImageAttnProcessor` holding this store whose
    query count is at most :attr:`max_query_tokens` computes its text attention explicitly and
    records the map of the ``phrase_idxes`` span under its layer name. Maps keep their autograd
    graph so a loss on them trains the attention projections.

    Args:
        max_query_tokens: Only layers with at most this many queries record (None: all layers).
    """

    def __init__(self, max_query_tokens: int | None = None) -> None:
        self.max_query_tokens = max_query_tokens
        self.active = False
        self.maps: dict[str, torch.Tensor] = {}

    def reset(self) -> None:
        """Forget every recorded map."""
        self.maps = {}

    def wants(self, num_queries: int) -> bool:
        """Whether a layer with ``num_queries`` queries should record now."""
        if not self.active:
            return False
        return self.max_query_tokens is None or num_queries <= self.max_query_tokens

    def record(self, name: str, attention_map: torch.Tensor) -> None:
        """Store one layer's map of shape ``(B, side, side)``; a later call for the same layer replaces it."""
        self.maps[name] = attention_map

    def values(self) -> list[torch.Tensor]:
        """The recorded maps, in recording order."""
        return list(self.maps.values())


def _per_image(value: torch.Tensor | None, batch: int, name: str) -> torch.Tensor | None:
    """Repeat a per-prompt ``value`` (``[B / k, ...]``) to the layer's batch of ``B`` images.

    diffusers' pipelines repeat each prompt's embeddings ``num_images_per_prompt`` times in a row
    (negative prompts first under classifier-free guidance); DreamRelation's released pipeline
    repeats its boxes the same way (``repeat_interleave`` over the batch).
    """
    if value is None or value.shape[0] == batch:
        return value
    if value.shape[0] == 0 or batch % value.shape[0]:
        raise ValueError(f"cross_attention_kwargs['{name}'] has {value.shape[0]} rows for a batch of {batch} "
                         "images; give one row per prompt (negative prompts first) or per image")
    return value.repeat_interleave(batch // value.shape[0], dim=0)


def box_region_masks(boxes: torch.Tensor, side: int) -> torch.Tensor:
    """Rasterise normalised boxes onto a ``side x side`` query grid.

    Box ``[x0, y0, x1, y1]`` covers columns ``floor(x0*side) .. ceil(x1*side) - 1`` and rows
    ``floor(y0*side) .. ceil(y1*side) - 1``, as MS-Diffusion's released attention mask does.

    Args:
        boxes: Normalised ``xyxy`` boxes, shape ``[B, n, 4]``.
        side: Grid side length.

    Returns:
        Bool tensor ``[B, n, side*side]``, flattened row-major (index ``row * side + col``).
    """
    boxes = boxes.float()
    # MS-Diffusion attention_processor.py: floor on the start, ceil on the (exclusive) end
    start = torch.floor(boxes[..., 0:2] * side)
    end = torch.ceil(boxes[..., 2:4] * side)
    idx = torch.arange(side, device=boxes.device, dtype=boxes.dtype)
    in_x = (idx >= start[..., 0:1]) & (idx < end[..., 0:1])  # [B, n, side] over columns
    in_y = (idx >= start[..., 1:2]) & (idx < end[..., 1:2])  # [B, n, side] over rows
    region = in_y[..., :, None] & in_x[..., None, :]  # [B, n, rows, cols]
    return region.flatten(-2)


def image_attention_bias(
    boxes: torch.Tensor,
    num_queries: int,
    num_dummy_tokens: int,
    tokens_per_entity: int,
    mask_bias: float = -10000.0,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Additive attention bias routing each query to its entity's image tokens.

    Args:
        boxes: Normalised ``xyxy`` boxes, shape ``[B, n, 4]``.
        num_queries: Number of queries ``HW``; must be a perfect square.
        num_dummy_tokens: Number of leading dummy image tokens.
        tokens_per_entity: Image tokens per entity.
        mask_bias: Value added to disallowed logits.
        dtype: Dtype of the returned bias.

    Returns:
        ``(bias, foreground)``: ``bias`` of shape ``[B, HW, num_dummy_tokens + n*tokens_per_entity]``
        (0 where allowed, ``mask_bias`` elsewhere) and bool ``foreground`` ``[B, HW]`` (query inside
        at least one box).
    """
    side = math.isqrt(num_queries)
    if side * side != num_queries:
        raise ValueError(f"box masks need a square query grid, got {num_queries} queries")
    region = box_region_masks(boxes, side)  # [B, n, HW]
    foreground = region.any(dim=1)  # [B, HW]
    # MS-Diffusion attention_processor.py: box j -> entity j's tokens; no box -> dummy tokens only
    entity_allowed = region.transpose(1, 2).repeat_interleave(tokens_per_entity, dim=-1)  # [B, HW, n*tpe]
    dummy_allowed = (~foreground)[..., None].expand(-1, -1, num_dummy_tokens)
    allowed = torch.cat((dummy_allowed, entity_allowed), dim=-1)
    bias = torch.zeros(allowed.shape, dtype=dtype, device=boxes.device).masked_fill(~allowed, mask_bias)
    return bias, foreground


class SelfAttnProcessor(AttnProcessor2_0):
    """diffusers' ``AttnProcessor2_0`` that also accepts (and ignores) ``boxes`` and ``phrase_idxes``.

    diffusers' ``Attention.forward`` logs a warning for every ``cross_attention_kwargs`` key that
    the processor's ``__call__`` does not name, and the transformer blocks pass the same kwargs to
    self-attention; naming the keys here keeps those calls quiet.
    """

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        phrase_idxes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


class MaskedImageAttnProcessor(nn.Module):
    """Text attention plus box-masked image attention for one cross-attention layer.

    Args:
        hidden_size: Output width of the layer's ``to_k``/``to_v`` (heads * head_dim).
        cross_attention_dim: Width of the encoder hidden states.
        scale: Image-attention weight ``gamma``.
        text_tokens: Number of leading text tokens in ``encoder_hidden_states``.
        num_dummy_tokens: Number of dummy image tokens before the entity tokens.
        tokens_per_entity: Image tokens per entity.
        mask_bias: Additive logit bias of disallowed (query, image token) pairs.
        attention_store: Optional :class:`TextAttentionStore` for predicate attention maps.
        layer_name: Key under which this layer records into ``attention_store``.
    """

    def __init__(
        self,
        hidden_size: int,
        cross_attention_dim: int,
        scale: float = 1.0,
        text_tokens: int = 77,
        num_dummy_tokens: int = 4,
        tokens_per_entity: int = 16,
        mask_bias: float = -10000.0,
        attention_store: TextAttentionStore | None = None,
        layer_name: str = "",
    ) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.cross_attention_dim = cross_attention_dim
        self.scale = scale
        self.text_tokens = text_tokens
        self.num_dummy_tokens = num_dummy_tokens
        self.tokens_per_entity = tokens_per_entity
        self.mask_bias = mask_bias
        self.attention_store = attention_store
        self.layer_name = layer_name
        # as MS-Diffusion's MaskedIPAttnProcessor2_0: bias-free image key/value projections
        self.to_k_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self.to_v_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)

    def _text_attention_with_map(
        self,
        attn: Attention,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None,
        phrase_idxes: torch.Tensor,
    ) -> torch.Tensor:
        """Explicit softmax attention that also records the span's map; tensors are ``[B, h, L, d]``."""
        b, heads, num_q, _ = query.shape
        logits = (query @ key.transpose(-2, -1)) * attn.scale
        if mask is not None:
            logits = logits + mask
        probs = logits.float().softmax(dim=-1).to(query.dtype)  # [B, h, Q, T]
        span = phrase_idxes.reshape(-1, 2).to(query.device)
        if span.shape[0] != b:
            raise ValueError(f"phrase_idxes has {span.shape[0]} rows for a batch of {b}")
        token = torch.arange(probs.shape[-1], device=query.device)
        in_span = (token >= span[:, 0:1]) & (token < span[:, 1:2])  # [B, T]
        count = in_span.sum(dim=-1).clamp(min=1).to(probs.dtype)
        # MS-Diffusion get_text_attention_maps: mean over heads and span tokens; empty span -> zeros
        summed = (probs.mean(dim=1) * in_span[:, None, :].to(probs.dtype)).sum(dim=-1)  # [B, Q]
        side = math.isqrt(num_q)
        if side * side == num_q:
            self.attention_store.record(self.layer_name, (summed / count[:, None]).view(b, side, side))
        return probs @ value

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        phrase_idxes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the layer.

        Args:
            attn: The diffusers ``Attention`` module this processor belongs to.
            hidden_states: Queries, ``[B, HW, C]`` (or ``[B, C, H, W]``).
            encoder_hidden_states: ``[B, text_tokens + num_image_tokens, cross_attention_dim]``.
            attention_mask: Optional encoder attention mask over the whole encoder sequence.
            temb: Time embedding for spatial-norm layers.
            boxes: Optional normalised ``xyxy`` boxes ``[B, n, 4]``; None disables box masking. A
                batch of ``B / k`` rows is repeated ``k`` times row by row, as a pipeline called
                with ``num_images_per_prompt=k`` repeats each prompt's embeddings.
            phrase_idxes: Optional token span ``[B, 2]`` (or ``[B, 1, 2]``), ``[start, end)``, whose
                text attention is recorded when the attention store is active.

        Returns:
            Tensor shaped like ``hidden_states``.
        """
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, num_queries, _ = hidden_states.shape
        boxes = _per_image(boxes, batch, "boxes")
        phrase_idxes = _per_image(phrase_idxes, batch, "phrase_idxes")

        if encoder_hidden_states is None:
            # used as self-attention: every token is a "text" token, there are no image tokens
            encoder_hidden_states = hidden_states
            text_len = encoder_hidden_states.shape[1]
        else:
            text_len = self.text_tokens
        full_len = encoder_hidden_states.shape[1]
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, full_len, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        # MS-Diffusion attention_processor.py: split at text_tokens into text and image tokens
        text_states = encoder_hidden_states[:, :text_len]
        image_states = encoder_hidden_states[:, text_len:]
        text_mask = image_mask = None
        if attention_mask is not None:
            text_mask = attention_mask[..., :text_len]
            image_mask = attention_mask[..., text_len:] if attention_mask.shape[-1] == full_len else None
        if attn.norm_cross:
            text_states = attn.norm_encoder_hidden_states(text_states)

        query = attn.to_q(hidden_states)
        key = attn.to_k(text_states)
        value = attn.to_v(text_states)
        head_dim = key.shape[-1] // attn.heads

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, -1, attn.heads, head_dim).transpose(1, 2)

        query, key, value = split(query), split(key), split(value)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        store = self.attention_store
        if phrase_idxes is not None and store is not None and store.wants(num_queries):
            out = self._text_attention_with_map(attn, query, key, value, text_mask, phrase_idxes)
        else:
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=text_mask, dropout_p=0.0)

        if image_states.shape[1] > 0:
            ip_key = split(self.to_k_ip(image_states))
            ip_value = split(self.to_v_ip(image_states))
            foreground = None
            if boxes is not None:
                expected = self.num_dummy_tokens + boxes.shape[1] * self.tokens_per_entity
                if image_states.shape[1] != expected:
                    raise ValueError(
                        f"{image_states.shape[1]} image tokens do not match {boxes.shape[1]} boxes "
                        f"({self.num_dummy_tokens} dummy + {self.tokens_per_entity} per entity = {expected})"
                    )
                bias, foreground = image_attention_bias(
                    boxes.to(query.device),
                    num_queries,
                    self.num_dummy_tokens,
                    self.tokens_per_entity,
                    self.mask_bias,
                    query.dtype,
                )
                bias = bias[:, None]  # broadcast over heads
                image_mask = bias if image_mask is None else image_mask + bias
            ip_out = F.scaled_dot_product_attention(query, ip_key, ip_value, attn_mask=image_mask, dropout_p=0.0)
            if foreground is not None:
                # MS-Diffusion: image-attention probabilities of background queries are zeroed,
                # i.e. a query outside every box gets no image contribution
                ip_out = ip_out * foreground[:, None, :, None].to(ip_out.dtype)
            # MS-Diffusion MaskedIPAttnProcessor2_0: out = text attention + scale * image attention
            out = out + self.scale * ip_out

        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def _is_cross_attention(attn: nn.Module) -> bool:
    return bool(getattr(attn, "is_cross_attention", False))


def install_image_attention(
    unet: nn.Module,
    gamma: float,
    num_tokens_per_entity: int = 16,
    text_tokens: int = 77,
    store: TextAttentionStore | None = None,
    num_dummy_tokens: int = 4,
    mask_bias: float = -10000.0,
    init_from_text: bool = True,
) -> dict[str, nn.Module | AttnProcessor2_0]:
    """Put :class:`MaskedImageAttnProcessor` on every cross-attention layer of a UNet.

    Self-attention layers get :class:`SelfAttnProcessor` (diffusers' ``AttnProcessor2_0``). Call
    this before adding peft LoRA: the processor calls ``attn.to_q``/``to_k``/``to_v``/``to_out``, so
    LoRA wrapped around those modules afterwards applies to both branches, while
    ``processor.to_k_ip``/``to_v_ip`` are not matched by ``attn2.to_k``-style targets.

    Args:
        unet: A diffusers ``UNet2DConditionModel``.
        gamma: Image-attention weight.
        num_tokens_per_entity: Image tokens per entity.
        text_tokens: Number of leading text tokens.
        store: Optional text-attention store shared by all cross-attention processors.
        num_dummy_tokens: Number of dummy image tokens.
        mask_bias: Additive logit bias of disallowed pairs.
        init_from_text: Copy each layer's ``to_k``/``to_v`` weights into ``to_k_ip``/``to_v_ip``
            (MS-Diffusion's training initialisation; real adapter weights overwrite them).

    Returns:
        Every processor, keyed by name in ``unet.attn_processors`` order (the index order of an
        ``ms_adapter`` state dict). Cross-attention entries are :class:`MaskedImageAttnProcessor`.
    """
    processors: dict[str, nn.Module | AttnProcessor2_0] = {}
    for name in unet.attn_processors:
        attn = unet.get_submodule(name[: -len(".processor")])
        if not _is_cross_attention(attn):
            processors[name] = SelfAttnProcessor()
            continue
        to_k_weight = attn.to_k.weight
        proc = MaskedImageAttnProcessor(
            hidden_size=to_k_weight.shape[0],
            cross_attention_dim=to_k_weight.shape[1],
            scale=gamma,
            text_tokens=text_tokens,
            num_dummy_tokens=num_dummy_tokens,
            tokens_per_entity=num_tokens_per_entity,
            mask_bias=mask_bias,
            attention_store=store,
            layer_name=name,
        ).to(device=to_k_weight.device, dtype=to_k_weight.dtype)
        if init_from_text:
            # MS-Diffusion tutorial_train_sdxl.py: to_k_ip / to_v_ip start from the text to_k / to_v
            with torch.no_grad():
                proc.to_k_ip.weight.copy_(attn.to_k.weight)
                proc.to_v_ip.weight.copy_(attn.to_v.weight)
        processors[name] = proc
    unet.set_attn_processor(dict(processors))
    return processors


def image_attention_processors(unet: nn.Module) -> dict[str, MaskedImageAttnProcessor]:
    """The installed :class:`MaskedImageAttnProcessor` instances of a UNet, in ``attn_processors`` order."""
    return {n: p for n, p in unet.attn_processors.items() if isinstance(p, MaskedImageAttnProcessor)}


def set_image_attention_scale(target: nn.Module | dict, gamma: float) -> None:
    """Set the image-attention weight of every masked processor.

    Args:
        target: A UNet with installed processors, or a dict of processors.
        gamma: New image-attention weight.
    """
    procs = target.values() if isinstance(target, dict) else image_attention_processors(target).values()
    for proc in procs:
        if isinstance(proc, MaskedImageAttnProcessor):
            proc.scale = gamma

"""MS-Diffusion's grounding resampler as a plain torch module.

The resampler turns the CLIP image tokens of one reference image into ``num_queries`` tokens in
the UNet's cross-attention space. Its queries ("grounding tokens") are built from the entity's
phrase embedding and a Fourier embedding of the entity's box, so each entity's tokens know where
the entity should be drawn.

State-dict layout (the keys of the ``image_proj`` entry of MS-Diffusion's ``ms_adapter.bin``,
grounding mode; ``{i}`` runs over ``range(depth)``)::

    grounding_latents                      (1, num_queries, dim)    learnable queries for dropped grounding
    latent_proj.0.weight / .bias           (2*G, G)                 G = phrase_embeddings_dim + 8*fourier_freqs
    latent_proj.2.weight / .bias           (num_queries*dim, 2*G)
    latent_norm.weight / .bias             (dim,)
    proj_in.weight / .bias                 (dim, embedding_dim)
    layers.{i}.0.norm1.weight / .bias      (dim,)                   LayerNorm on the image features
    layers.{i}.0.norm2.weight / .bias      (dim,)                   LayerNorm on the latents
    layers.{i}.0.to_q.weight               (heads*dim_head, dim)
    layers.{i}.0.to_kv.weight              (2*heads*dim_head, dim)  k rows first, then v rows
    layers.{i}.0.to_out.weight             (dim, heads*dim_head)
    layers.{i}.1.0.weight / .bias          (dim,)                   feed-forward LayerNorm
    layers.{i}.1.1.weight                  (ff_mult*dim, dim)
    layers.{i}.1.3.weight                  (dim, ff_mult*dim)
    attention_norm.weight / .bias          (dim,)
    proj_out.weight / .bias                (output_dim, dim)
    norm_out.weight / .bias                (output_dim,)

The Fourier frequencies are a non-persistent buffer, so they do not appear in the state dict.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

# The sizes MS-Diffusion ships for SDXL with a CLIP ViT-bigG-14 image encoder.
OFFICIAL_SDXL = dict(
    dim=1280,
    depth=4,
    dim_head=64,
    heads=20,
    num_queries=16,
    embedding_dim=1664,
    output_dim=2048,
    ff_mult=4,
    phrase_embeddings_dim=768,
)


@dataclass
class ResamplerConfig:
    """Constructor arguments of :class:`GroundingResampler`.

    Attributes:
        dim: Width of the latents inside the resampler.
        depth: Number of (attention, feed-forward) blocks.
        dim_head: Width of one attention head.
        heads: Number of attention heads.
        num_queries: Number of output tokens per reference image.
        embedding_dim: Width of the incoming image tokens (CLIP hidden size).
        output_dim: Width of the output tokens (UNet cross-attention width).
        ff_mult: Hidden-width multiplier of the feed-forward blocks.
        phrase_embeddings_dim: Width of the entity phrase embedding (CLIP-L pooled output).
        fourier_freqs: Number of Fourier frequencies per box coordinate.
        fourier_temperature: Base of the geometric frequency ladder.
    """

    dim: int
    depth: int
    dim_head: int
    heads: int
    num_queries: int
    embedding_dim: int
    output_dim: int
    ff_mult: int = 4
    phrase_embeddings_dim: int = 768
    fourier_freqs: int = 8
    fourier_temperature: float = 100.0


def fourier_box_embedding(boxes: torch.Tensor, num_freqs: int = 8, temperature: float = 100.0) -> torch.Tensor:
    """Embed boxes with sines and cosines of geometrically spaced frequencies.

    Args:
        boxes: Normalised ``xyxy`` boxes, shape ``[N, 4]``.
        num_freqs: Number of frequencies ``F``; frequency ``k`` is ``temperature ** (k / F)``.
        temperature: Base of the frequency ladder.

    Returns:
        Tensor of shape ``[N, F * 2 * 4]`` ordered as (frequency, sin/cos, coordinate).
    """
    # as MS-Diffusion's released FourierEmbedder: temperature**(k/F), no 2*pi factor
    freqs = temperature ** (torch.arange(num_freqs, device=boxes.device, dtype=torch.float32) / num_freqs)
    angles = boxes.float()[:, None, :] * freqs[None, :, None]  # [N, F, 4]
    emb = torch.stack((angles.sin(), angles.cos()), dim=2)  # [N, F, 2, 4]
    return emb.reshape(boxes.shape[0], -1).to(boxes.dtype)


class PerceiverAttention(nn.Module):
    """Latents attend to the concatenation of image features and latents.

    Args:
        dim: Width of features and latents.
        dim_head: Width of one head.
        heads: Number of heads.
    """

    def __init__(self, dim: int, dim_head: int, heads: int) -> None:
        super().__init__()
        self.dim_head = dim_head
        self.heads = heads
        inner = dim_head * heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.dim_head).transpose(1, 2)

    def forward(self, features: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """Attend from the latents.

        Args:
            features: Image features, shape ``[B, T, dim]``.
            latents: Queries, shape ``[B, Q, dim]``.

        Returns:
            The attention output (without residual), shape ``[B, Q, dim]``.
        """
        features = self.norm1(features)
        latents = self.norm2(latents)
        b, q_len, _ = latents.shape
        q = self._split_heads(self.to_q(latents))
        # as MS-Diffusion's released PerceiverAttention: keys/values over [features, latents]
        k, v = self.to_kv(torch.cat((features, latents), dim=1)).chunk(2, dim=-1)
        k, v = self._split_heads(k), self._split_heads(v)
        # q and k each scaled by dim_head**-0.25, softmax in fp32 (MS-Diffusion's PerceiverAttention)
        s = self.dim_head ** -0.25
        weights = (q * s) @ (k * s).transpose(-2, -1)
        weights = torch.softmax(weights.float(), dim=-1).to(weights.dtype)
        out = (weights @ v).transpose(1, 2).reshape(b, q_len, -1)
        return self.to_out(out)


def feed_forward(dim: int, mult: int) -> nn.Sequential:
    """LayerNorm -> Linear -> GELU -> Linear, both linears bias-free (MS-Diffusion's FeedForward).

    Args:
        dim: Input and output width.
        mult: Hidden-width multiplier.

    Returns:
        The block; indices 0, 1 and 3 hold the parameters.
    """
    inner = int(dim * mult)
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, inner, bias=False),
        nn.GELU(),
        nn.Linear(inner, dim, bias=False),
    )


class GroundingResampler(nn.Module):
    """MS-Diffusion's grounding resampler (``latent_init_mode="grounding"``).

    Args:
        dim: Width of the latents.
        depth: Number of (attention, feed-forward) blocks.
        dim_head: Width of one attention head.
        heads: Number of attention heads.
        num_queries: Output tokens per reference image.
        embedding_dim: Width of the incoming image tokens.
        output_dim: Width of the output tokens.
        ff_mult: Feed-forward hidden-width multiplier.
        phrase_embeddings_dim: Width of the phrase embedding.
        fourier_freqs: Fourier frequencies per box coordinate.
        fourier_temperature: Base of the Fourier frequency ladder.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        dim_head: int,
        heads: int,
        num_queries: int,
        embedding_dim: int,
        output_dim: int,
        ff_mult: int = 4,
        phrase_embeddings_dim: int = 768,
        fourier_freqs: int = 8,
        fourier_temperature: float = 100.0,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.num_queries = num_queries
        self.fourier_freqs = fourier_freqs
        self.fourier_temperature = fourier_temperature
        grounding_dim = phrase_embeddings_dim + fourier_freqs * 2 * 4  # sin/cos x 4 box coordinates
        # as MS-Diffusion's released Resampler: MLP hidden width is twice the grounding input width
        self.latent_proj = nn.Sequential(
            nn.Linear(grounding_dim, 2 * grounding_dim),
            nn.GELU(),
            nn.Linear(2 * grounding_dim, num_queries * dim),
        )
        self.latent_norm = nn.LayerNorm(dim)
        self.grounding_latents = nn.Parameter(torch.randn(1, num_queries, dim) / dim**0.5)
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, dim_head, heads), feed_forward(dim, ff_mult)])
            for _ in range(depth)
        )
        self.attention_norm = nn.LayerNorm(dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)

    @classmethod
    def from_config(cls, config: ResamplerConfig) -> "GroundingResampler":
        """Build from a :class:`ResamplerConfig`."""
        return cls(**asdict(config))

    def grounding_queries(
        self,
        phrase_embeds: torch.Tensor,
        boxes: torch.Tensor,
        drop_grounding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Build the initial latents from phrase and box.

        Args:
            phrase_embeds: Phrase embeddings, shape ``[N, phrase_embeddings_dim]``.
            boxes: Normalised ``xyxy`` boxes, shape ``[N, 4]``.
            drop_grounding: Optional bool mask ``[N]`` (tensor or sequence); True rows use
                ``grounding_latents`` instead.

        Returns:
            Latents of shape ``[N, num_queries, dim]``.
        """
        fourier = fourier_box_embedding(boxes.to(phrase_embeds.dtype), self.fourier_freqs, self.fourier_temperature)
        # as MS-Diffusion's released Resampler: [phrase, fourier(box)] -> MLP -> reshape -> LayerNorm
        latents = self.latent_proj(torch.cat((phrase_embeds, fourier), dim=-1))
        latents = self.latent_norm(latents.view(-1, self.num_queries, self.dim))
        if drop_grounding is not None:
            drop = torch.as_tensor(drop_grounding, device=latents.device).to(torch.bool).view(-1, 1, 1)
            latents = torch.where(drop, self.grounding_latents.to(latents.dtype), latents)
        return latents

    def forward(
        self,
        image_features: torch.Tensor,
        phrase_embeds: torch.Tensor,
        boxes: torch.Tensor,
        drop_grounding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Resample image tokens into grounded entity tokens.

        Args:
            image_features: CLIP tokens of each reference image, shape ``[B*n, T, embedding_dim]``
                (any ``T``; there is no positional embedding).
            phrase_embeds: Phrase embedding of each entity, shape ``[B*n, phrase_embeddings_dim]``.
            boxes: Normalised ``xyxy`` box of each entity, shape ``[B*n, 4]``.
            drop_grounding: Optional bool ``[B*n]``; True rows use the learnable ``grounding_latents``.

        Returns:
            Tokens of shape ``[B*n, num_queries, output_dim]``.
        """
        latents = self.grounding_queries(phrase_embeds, boxes, drop_grounding)
        x = self.proj_in(image_features)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        # as MS-Diffusion's released Resampler: LayerNorm -> proj_out -> LayerNorm
        return self.norm_out(self.proj_out(self.attention_norm(latents)))

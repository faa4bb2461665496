"""The image-prompt branch of RelationBooth: MS-Diffusion's grounded image tokens.

Per reference image: CLIP penultimate hidden states (optionally followed by CLIPSelf local
tokens) go through the grounding resampler, whose queries come from the entity's phrase
embedding and box. The UNet's conditioning is ``[text tokens, dummy tokens, entity 1 tokens,
entity 2 tokens, ...]``; every cross-attention layer gets a masked parallel image attention
(:mod:`relgen.methods.relationbooth.attention`).

:class:`BranchSpec` holds every size needed to rebuild the branch (it is exported as JSON);
:func:`build_branch` assembles it on a loaded backbone; :class:`ImageBranch` turns reference
images, phrases and boxes into image tokens.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from relgen.errors import ConfigError, RelgenError
from relgen.methods.relationbooth.attention import (
    MaskedImageAttnProcessor,
    TextAttentionStore,
    install_image_attention,
)
from relgen.methods.relationbooth.convert import MSAdapterWeights, load_clipself_checkpoint, load_ms_adapter
from relgen.methods.relationbooth.local_tokens import global_tokens, image_local_tokens
from relgen.methods.relationbooth.resampler import GroundingResampler, ResamplerConfig

log = logging.getLogger("relgen")

TINY_ENCODER_SOURCE = "tiny-random"


@dataclass
class BranchSpec:
    """Everything needed to rebuild an image branch (JSON-serialisable).

    Attributes:
        resampler: :class:`ResamplerConfig` fields.
        num_dummy_tokens: dummy image tokens prepended to the entity tokens.
        text_tokens: text tokens before the image tokens (the tokenizer's length, 77).
        scale: image-attention weight gamma.
        mask_bias: additive logit bias of disallowed (query, image token) pairs.
        image_encoder: hub id or folder of the CLIP vision model, or ``"tiny-random"``.
        image_encoder_config: the CLIPVisionConfig of a tiny random encoder (else empty).
        clipself_checkpoint: CLIPSelf checkpoint of the local encoder (None: the image encoder).
        image_size: global-token input side (224 for ViT-bigG-14).
        local_image_size: local-token input side (896 released).
        local_grid: local tokens per image = local_grid².
        reference_resize: references are first resized to this square (DreamRelation: 512).
        clip_mean, clip_std: CLIP pixel normalisation.
        seed: seed of the random parts.
    """

    resampler: dict
    num_dummy_tokens: int
    text_tokens: int
    scale: float
    mask_bias: float
    image_encoder: str
    image_encoder_config: dict = field(default_factory=dict)
    clipself_checkpoint: Optional[str] = None
    image_size: int = 224
    local_image_size: int = 896
    local_grid: int = 4
    reference_resize: int = 512
    clip_mean: list = field(default_factory=list)
    clip_std: list = field(default_factory=list)
    seed: int = 0

    @property
    def tokens_per_entity(self) -> int:
        return int(self.resampler["num_queries"])

    @property
    def cross_attention_dim(self) -> int:
        return int(self.resampler["output_dim"])

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "BranchSpec":
        return cls(**data)


# ------------------------------------------------------------------------------------------
# encoders


def tiny_clip_vision_config(tiny) -> dict:
    """CLIPVisionConfig kwargs of the tiny random image encoder (``tiny``: TinyBranchConfig)."""
    return dict(hidden_size=tiny.hidden_size, intermediate_size=tiny.intermediate_size,
                num_hidden_layers=tiny.num_layers, num_attention_heads=tiny.num_heads,
                image_size=tiny.image_size, patch_size=tiny.patch_size, projection_dim=tiny.projection_dim,
                hidden_act="gelu")


def load_image_encoder(source: str, config: Optional[dict] = None, seed: int = 0):
    """A transformers ``CLIPVisionModelWithProjection`` in eval mode with frozen weights.

    Args:
        source: hub id or local folder, or ``"tiny-random"`` to build one from ``config``.
        config: CLIPVisionConfig kwargs for ``"tiny-random"``.
        seed: seed of the random weights.
    """
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    if source == TINY_ENCODER_SOURCE:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = CLIPVisionModelWithProjection(CLIPVisionConfig(**(config or {})))
    else:
        import transformers

        transformers.utils.logging.disable_progress_bar()
        try:
            model = CLIPVisionModelWithProjection.from_pretrained(source)
        except Exception as exc:  # noqa: BLE001 - missing weights, no network, bad folder
            raise RelgenError(
                f"method.image_encoder: could not load '{source}' as a CLIP vision model "
                f"({type(exc).__name__}); download it where there is network access or point "
                "method.image_encoder= at a local folder") from exc
    return model.eval().requires_grad_(False)


def load_local_encoder(image_encoder, checkpoint: str):
    """A copy of ``image_encoder``'s architecture holding a CLIPSelf checkpoint's vision weights."""
    from transformers import CLIPVisionModelWithProjection

    state = load_clipself_checkpoint(checkpoint)
    model = CLIPVisionModelWithProjection(copy.deepcopy(image_encoder.config))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids") and not k.startswith("visual_projection")]
    if missing or unexpected:
        first = (missing or unexpected)[0]
        raise RelgenError(f"{checkpoint}: CLIPSelf weights do not fit the image encoder's architecture "
                          f"({'missing' if missing else 'unexpected'} key '{first}'); use the checkpoint "
                          "trained from method.image_encoder")
    return model.eval().requires_grad_(False)


def pooled_width(encoder) -> int:
    """Width of a CLIP text encoder's pooled output (``text_embeds`` for the projection model)."""
    if hasattr(encoder, "text_projection"):
        return int(encoder.config.projection_dim)
    return int(encoder.config.hidden_size)


@torch.no_grad()
def phrase_embeddings(tokenizer, encoder, phrases: Sequence[str]) -> torch.Tensor:
    """Pooled output of each entity phrase, ``[N, D_pool]``.

    MS-Diffusion / DreamRelation: the first text encoder's ``pooler_output`` of the phrase padded
    to the tokenizer's length.
    """
    ids = tokenizer(list(phrases), padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    device = next(encoder.parameters()).device
    out = encoder(ids.to(device))
    pooled = getattr(out, "pooler_output", None)
    if pooled is None:
        pooled = out.text_embeds
    return pooled.float()


# ------------------------------------------------------------------------------------------
# the branch


class ImageBranch(nn.Module):
    """Image encoder(s), grounding resampler and dummy tokens; frozen.

    Args:
        spec: the branch sizes.
        image_encoder: CLIP vision model for the global tokens.
        resampler: grounding resampler.
        dummy_tokens: ``[1, num_dummy_tokens, C]``.
        local_encoder: CLIPSelf-distilled vision model (None: ``image_encoder``).
        adapter: MS-Diffusion image key/value weights to load when installed on a UNet
            (None: MS-Diffusion's initialisation from the text key/value weights).
    """

    def __init__(self, spec: BranchSpec, image_encoder, resampler: GroundingResampler,
                 dummy_tokens: torch.Tensor, local_encoder=None,
                 adapter: Optional[MSAdapterWeights] = None, adapter_source: str = "") -> None:
        super().__init__()
        self.spec = spec
        self.image_encoder = image_encoder
        self.local_encoder = local_encoder
        self.resampler = resampler
        self.dummy_tokens = nn.Parameter(dummy_tokens.detach().clone(), requires_grad=False)
        self.adapter = adapter
        self.adapter_source = adapter_source
        self.requires_grad_(False)
        self.eval()

    @property
    def device(self) -> torch.device:
        return self.dummy_tokens.device

    def cast_encoders(self, dtype: torch.dtype) -> None:
        """Run the frozen CLIP encoders in ``dtype`` (the backbone's); the resampler stays float32."""
        for encoder in (self.image_encoder, self.local_encoder):
            if encoder is not None:
                encoder.to(dtype)

    # -- pixels -------------------------------------------------------------------------------
    def preprocess(self, paths: Sequence[str | Path], size: int) -> torch.Tensor:
        """Reference images as CLIP pixels ``[N, 3, size, size]``.

        DreamRelation: resize to 512x512, then CLIPImageProcessor (bicubic resize, centre crop,
        CLIP mean/std); on a square image the crop is a no-op.
        """
        from PIL import Image

        from relgen.data.images import open_rgb

        mean = torch.tensor(self.spec.clip_mean).view(3, 1, 1)
        std = torch.tensor(self.spec.clip_std).view(3, 1, 1)
        out = []
        for path in paths:
            image = open_rgb(path)
            r = self.spec.reference_resize
            if r and image.size != (r, r):
                image = image.resize((r, r), Image.Resampling.BICUBIC)
            if image.size != (size, size):
                image = image.resize((size, size), Image.Resampling.BICUBIC)
            pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
            out.append((pixels - mean) / std)
        return torch.stack(out)

    # -- features -----------------------------------------------------------------------------
    @torch.no_grad()
    def image_features(self, paths: Sequence[str | Path], local: bool) -> torch.Tensor:
        """CLIP tokens of each reference image, ``[N, T (+ grid²), D]``.

        Global: penultimate hidden states at ``image_size``. Local (when ``local``): CLIPSelf
        tokens of the image at ``local_image_size``, one per grid cell, from that same image,
        appended after the global tokens (DreamRelation's ImageEncoder).
        """
        enc = self.image_encoder
        dtype = next(enc.parameters()).dtype
        pixels = self.preprocess(paths, self.spec.image_size).to(self.device, dtype)
        feats = global_tokens(enc, pixels).float()
        if local:
            local_enc = self.local_encoder if self.local_encoder is not None else enc
            ldtype = next(local_enc.parameters()).dtype
            lpx = self.preprocess(paths, self.spec.local_image_size).to(self.device, ldtype)
            feats = torch.cat([feats, image_local_tokens(local_enc, lpx, self.spec.local_grid).float()], dim=1)
        return feats

    def entity_tokens(self, features: torch.Tensor, phrases: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Grounded tokens of each entity, ``[N, tokens_per_entity, C]``.

        Args:
            features: ``[N, T, D]`` CLIP tokens of each entity's reference image.
            phrases: ``[N, D_pool]`` phrase embeddings.
            boxes: ``[N, 4]`` normalised xyxy boxes where each entity should be.
        """
        dtype = self.dummy_tokens.dtype
        return self.resampler(features.to(self.device, dtype), phrases.to(self.device, dtype),
                              boxes.to(self.device, dtype))

    def image_tokens(self, features: torch.Tensor, phrases: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """UNet image tokens of one sample: ``[1, num_dummy + n * tokens_per_entity, C]``.

        MS-Diffusion: the dummy tokens, then each entity's tokens in image order.
        """
        tokens = self.entity_tokens(features, phrases, boxes).reshape(1, -1, self.spec.cross_attention_dim)
        return torch.cat([self.dummy_tokens, tokens], dim=1)

    # -- UNet ---------------------------------------------------------------------------------
    def install(self, unet, store: Optional[TextAttentionStore] = None) -> dict:
        """Put the masked image-attention processors on ``unet`` and load their weights.

        Returns the processors in ``unet.attn_processors`` order. Their image key/value weights
        are frozen.
        """
        spec = self.spec
        procs = install_image_attention(unet, gamma=spec.scale, num_tokens_per_entity=spec.tokens_per_entity,
                                        text_tokens=spec.text_tokens, store=store,
                                        num_dummy_tokens=spec.num_dummy_tokens, mask_bias=spec.mask_bias,
                                        init_from_text=True)
        if self.adapter is not None:
            self.adapter.load_processors(procs, source=self.adapter_source or "ms_adapter")
        for proc in procs.values():
            if isinstance(proc, nn.Module):
                proc.requires_grad_(False)
        add_box_batch_hook(unet)
        return procs

    def adapter_state_dict(self, unet) -> dict[str, torch.Tensor]:
        """Flat MS-Diffusion-layout tensors: ``image_proj.*``, ``ms_adapter.{i}.*``, ``dummy_image_tokens``.

        ``i`` indexes ``unet.attn_processors`` (self-attention processors have no weights), so
        :func:`relgen.methods.relationbooth.convert.load_ms_adapter` reads the file back.
        """
        out = {f"image_proj.{k}": v.detach().cpu().contiguous() for k, v in self.resampler.state_dict().items()}
        for i, proc in enumerate(unet.attn_processors.values()):
            if isinstance(proc, MaskedImageAttnProcessor):
                out[f"ms_adapter.{i}.to_k_ip.weight"] = proc.to_k_ip.weight.detach().cpu().contiguous()
                out[f"ms_adapter.{i}.to_v_ip.weight"] = proc.to_v_ip.weight.detach().cpu().contiguous()
        out["dummy_image_tokens"] = self.dummy_tokens.detach().cpu().contiguous()
        return out


def add_box_batch_hook(unet) -> None:
    """Let ``boxes`` made for a CFG-doubled batch also serve a pipeline run without CFG.

    Generation inputs carry boxes for ``[negative, positive]`` (diffusers' order); when the
    pipeline skips classifier-free guidance the UNet sees only the positive prompts, so the
    positive half of the boxes is used.
    """
    if getattr(unet, "_relgen_box_hook", False):
        return

    def hook(module, args, kwargs):
        cak = kwargs.get("cross_attention_kwargs")
        if not cak or cak.get("boxes") is None:
            return None
        sample = args[0] if args else kwargs.get("sample")
        boxes = cak["boxes"]
        if sample is None or boxes.shape[0] != 2 * sample.shape[0]:
            return None
        kwargs = dict(kwargs)
        kwargs["cross_attention_kwargs"] = {**cak, "boxes": boxes[sample.shape[0]:]}
        return args, kwargs

    unet.register_forward_pre_hook(hook, with_kwargs=True)
    unet._relgen_box_hook = True


def build_branch(cfg, backbone) -> ImageBranch:
    """Assemble the image branch for ``backbone`` from a RelationBoothConfig.

    Sizes: the resampler's output width is the UNet's cross-attention width, its phrase width
    the first text encoder's pooled width and its input width the image encoder's hidden size;
    its inner sizes are ``resampler_*`` (``tiny.resampler_*`` on tiny backbones and with the
    random tiny image encoder).
    """
    tiny = bool(backbone.cfg.tiny)
    if cfg.image_encoder:
        source, enc_config = str(cfg.image_encoder), {}
    else:
        if not tiny:
            log.warning("method.image_encoder is not set: using a random tiny CLIP vision model; set "
                        "method.image_encoder=laion/CLIP-ViT-bigG-14-laion2B-39B-b160k for real results")
        source, enc_config = TINY_ENCODER_SOURCE, tiny_clip_vision_config(cfg.tiny)
    image_encoder = load_image_encoder(source, enc_config, cfg.branch_seed)
    local_encoder = None
    if cfg.clipself_checkpoint:
        local_encoder = load_local_encoder(image_encoder, str(cfg.clipself_checkpoint))

    # the small sizes go with tiny backbones and with the random tiny encoder
    sizes = cfg.tiny if tiny or source == TINY_ENCODER_SOURCE else cfg
    image_size = int(image_encoder.config.image_size)
    resampler_cfg = ResamplerConfig(
        dim=sizes.resampler_dim, depth=sizes.resampler_depth, dim_head=sizes.resampler_dim_head,
        heads=sizes.resampler_heads, num_queries=cfg.tokens_per_entity,
        embedding_dim=int(image_encoder.config.hidden_size), output_dim=backbone.cond_width,
        ff_mult=sizes.resampler_ff_mult, phrase_embeddings_dim=pooled_width(backbone.slots[0].encoder),
        fourier_freqs=cfg.fourier_freqs, fourier_temperature=cfg.fourier_temperature)
    spec = BranchSpec(
        resampler=asdict(resampler_cfg), num_dummy_tokens=cfg.num_dummy_tokens,
        text_tokens=int(backbone.slots[0].tokenizer.model_max_length), scale=float(cfg.scale),
        mask_bias=float(cfg.mask_bias), image_encoder=source, image_encoder_config=enc_config,
        clipself_checkpoint=str(cfg.clipself_checkpoint) if cfg.clipself_checkpoint else None,
        image_size=image_size, local_image_size=int(cfg.local_image_size or 4 * image_size),
        local_grid=cfg.local_grid, reference_resize=cfg.reference_resize, clip_mean=list(cfg.clip_mean),
        clip_std=list(cfg.clip_std), seed=cfg.branch_seed)
    check_spec(spec, image_encoder)
    branch = branch_from_spec(spec, image_encoder, local_encoder)
    if cfg.ms_adapter:
        path = Path(str(cfg.ms_adapter)).expanduser()
        if not path.is_file():
            raise ConfigError(f"method.ms_adapter: {path} does not exist; point it at MS-Diffusion's ms_adapter.bin")
        load_adapter_into(branch, load_ms_adapter(path, list(backbone.unet.attn_processors)), str(path))
    branch.to(backbone.device)
    branch.cast_encoders(backbone.dtype)
    return branch


def check_spec(spec: BranchSpec, image_encoder) -> None:
    patch = int(image_encoder.config.patch_size)
    cells = spec.local_image_size // patch
    if spec.local_image_size % patch or cells % spec.local_grid:
        raise ConfigError(f"method.local_image_size={spec.local_image_size} must be a multiple of the patch size "
                          f"{patch} giving a feature grid divisible by method.local_grid={spec.local_grid} "
                          f"(e.g. {4 * spec.image_size})")


def branch_from_spec(spec: BranchSpec, image_encoder, local_encoder=None) -> ImageBranch:
    """A randomly initialised (seeded) branch of ``spec``'s sizes around the given encoders."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        resampler = GroundingResampler.from_config(ResamplerConfig(**spec.resampler))
        dummy = torch.randn(1, spec.num_dummy_tokens, spec.cross_attention_dim)
    return ImageBranch(spec, image_encoder, resampler, dummy, local_encoder)


def load_adapter_into(branch: ImageBranch, weights: MSAdapterWeights, source: str) -> None:
    """Load an MS-Diffusion adapter's resampler and dummy tokens now, its processors at install."""
    try:
        branch.resampler.load_state_dict(weights.resampler, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise RelgenError(f"{source}: resampler weights do not fit this branch ({first}); the official "
                          "adapter needs the SDXL sizes and the ViT-bigG-14 image encoder") from exc
    dummy = weights.dummy_image_tokens
    if tuple(dummy.shape) != tuple(branch.dummy_tokens.shape):
        raise RelgenError(f"{source}: dummy_image_tokens has shape {tuple(dummy.shape)}, expected "
                          f"{tuple(branch.dummy_tokens.shape)}")
    with torch.no_grad():
        branch.dummy_tokens.copy_(dummy)
    branch.adapter = weights
    branch.adapter_source = source

"""The Backbone: everything on which Stable Diffusion 1.5, 2.x and SDXL differ.

Methods never branch on a backbone's name; they ask the backbone: how to tokenize, where the
EOT row is, how to encode text, what the training target is, how to call the UNet, how to
build a pipeline from the loaded modules.

One class serves all families: SD 1.x/2.x have one CLIP text encoder whose last hidden state
is the conditioning; SDXL has two, whose penultimate hidden states are concatenated, plus a
pooled embedding and size/crop "time ids".
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from relgen.config import BackboneConfig
from relgen.errors import ConfigError

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
           "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}

# diffusers scheduler classes by the short names used in configs
_SCHEDULERS = {
    "pndm": "PNDMScheduler",
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
}


def torch_dtype(name: str) -> torch.dtype:
    try:
        return _DTYPES[name]
    except KeyError:
        raise ConfigError(f"backbone dtype '{name}' is not one of {sorted(_DTYPES)}") from None


def first_eos(ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """(B,) index of the first EOS token of each row of ``ids`` (the EOT position). The pad token
    is not assumed to be EOS: SD 2.x and SDXL's second tokenizer pad with "!"."""
    # argmax returns the first maximal index: the first EOS
    return (ids == eos_id).int().argmax(dim=1)


@dataclass
class TextCond:
    """Text conditioning for a batch.

    Attributes:
        hidden: (B, L, D) the UNet's ``encoder_hidden_states``.
        pooled: (B, D_pool) SDXL's pooled embedding (``text_embeds``); None for SD 1.x/2.x.
        eot: (B,) position of the first EOT token of each prompt.
    """

    hidden: torch.Tensor
    pooled: Optional[torch.Tensor] = None
    eot: Optional[torch.Tensor] = None

    def index(self, idx) -> "TextCond":
        return TextCond(self.hidden[idx], None if self.pooled is None else self.pooled[idx],
                        None if self.eot is None else self.eot[idx])

    @staticmethod
    def cat(conds: list["TextCond"]) -> "TextCond":
        pooled = None if conds[0].pooled is None else torch.cat([c.pooled for c in conds])
        eot = None if conds[0].eot is None else torch.cat([c.eot for c in conds])
        return TextCond(torch.cat([c.hidden for c in conds]), pooled, eot)


@dataclass
class TextEncoderSlot:
    """One tokenizer/encoder pair. ``width`` is the token-embedding width."""

    tokenizer: Any
    encoder: Any
    key: str  # community format key: clip_l / clip_g (SDXL), or "text_encoder"

    @property
    def width(self) -> int:
        return self.encoder.get_input_embeddings().weight.shape[1]

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def eos_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def bos_id(self) -> int:
        return self.tokenizer.bos_token_id


@dataclass
class Backbone:
    """A loaded Stable Diffusion backbone (see module docstring)."""

    cfg: BackboneConfig
    slots: list[TextEncoderSlot]
    unet: Any
    vae: Any
    noise_scheduler: Any  # DDPMScheduler: forward process and training target
    scheduler_config: dict  # the checkpoint's inference scheduler config
    identity: str  # what the weights are (for cache keys and run metadata)
    cache_dir: Optional[str] = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    # ------------------------------------------------------------------ facts
    @property
    def family(self) -> str:
        return self.cfg.family

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def resolution(self) -> int:
        return self.cfg.resolution

    @property
    def prediction_type(self) -> str:
        return self.noise_scheduler.config.prediction_type

    @property
    def num_train_timesteps(self) -> int:
        return self.noise_scheduler.config.num_train_timesteps

    @property
    def cond_width(self) -> int:
        """Width of the UNet's cross-attention conditioning (768, 1024 or 2048 real size)."""
        return self.unet.config.cross_attention_dim

    @property
    def dtype(self) -> torch.dtype:
        return torch_dtype(self.cfg.dtype)

    def to(self, device: torch.device) -> "Backbone":
        self.device = torch.device(device)
        for slot in self.slots:
            slot.encoder.to(self.device)
        self.unet.to(self.device)
        self.vae.to(self.device)
        return self

    # ------------------------------------------------------------------ text
    def tokenize(self, prompts: list[str], warn: bool = True) -> list[torch.Tensor]:
        """Token ids per text encoder, padded to each tokenizer's max length.

        A prompt longer than the limit is cut, with a warning saying what was dropped.
        """
        out = []
        for i, slot in enumerate(self.slots):
            tok = slot.tokenizer
            if warn and i == 0:
                warn_if_truncated(tok, prompts, stacklevel=3)
            ids = tok(prompts, padding="max_length", max_length=tok.model_max_length,
                      truncation=True, return_tensors="pt").input_ids
            out.append(ids.to(self.device))
        return out

    def eot_positions(self, ids: torch.Tensor, slot: int = 0) -> torch.Tensor:
        """(B,) index of the first EOS token; explicit ids, since SD 2.x pads with "!"."""
        return first_eos(ids, self.slots[slot].eos_id)

    def encode_text(self, ids: list[torch.Tensor]) -> TextCond:
        """Conditioning from token ids (one tensor per encoder); gradients pass through.

        SD 1.x/2.x: the encoder's last hidden state (SD 2's converted OpenCLIP encoder already
        stops at the penultimate layer). SDXL: penultimate hidden states of both encoders
        concatenated, and the second encoder's projected pooled output, as diffusers'
        StableDiffusionXLPipeline.encode_prompt does.
        """
        eot = self.eot_positions(ids[0])
        if self.family == "sd":
            hidden = self.slots[0].encoder(ids[0])[0]
            return TextCond(hidden, None, eot)
        states, pooled = [], None
        for slot, slot_ids in zip(self.slots, ids):
            out = slot.encoder(slot_ids, output_hidden_states=True)
            states.append(out.hidden_states[-2])
            pooled = out[0]  # the last encoder's text_embeds
        return TextCond(torch.cat(states, dim=-1), pooled, eot)

    def encode_prompts(self, prompts: list[str]) -> TextCond:
        return self.encode_text(self.tokenize(prompts))

    def input_embedding_rows(self, ids: list[torch.Tensor]) -> list[torch.Tensor]:
        """Raw input token-embedding rows per encoder, (B, L, width_i)."""
        return [slot.encoder.get_input_embeddings()(slot_ids) for slot, slot_ids in zip(self.slots, ids)]

    def time_ids(self, batch: int, height: int, width: int) -> torch.Tensor:
        """SDXL micro-conditioning: (original H, W, crop top, left, target H, W)."""
        ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32)
        return ids.repeat(batch, 1).to(self.device)

    # ------------------------------------------------------------------ unet
    def unet_forward(self, noisy: torch.Tensor, t: torch.Tensor, cond: TextCond,
                     encoder_hidden_states: Optional[torch.Tensor] = None,
                     cross_attention_kwargs: Optional[dict] = None) -> torch.Tensor:
        """Call the UNet with the family's extra arguments.

        ``encoder_hidden_states`` replaces ``cond.hidden`` (e.g. text tokens followed by image
        tokens); SDXL's ``added_cond_kwargs`` are built from ``cond.pooled`` and the latent size.
        """
        ehs = cond.hidden if encoder_hidden_states is None else encoder_hidden_states
        kwargs = {}
        if self.family == "sdxl":
            h, w = noisy.shape[-2] * self.vae_scale, noisy.shape[-1] * self.vae_scale
            kwargs["added_cond_kwargs"] = {"text_embeds": cond.pooled.to(noisy.dtype),
                                           "time_ids": self.time_ids(noisy.shape[0], h, w).to(noisy.dtype)}
        return self.unet(noisy, t, ehs.to(noisy.dtype), cross_attention_kwargs=cross_attention_kwargs,
                         return_dict=False, **kwargs)[0]

    # ------------------------------------------------------------------ latents
    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def encode_latent_dist(self, pixels: torch.Tensor) -> torch.Tensor:
        """VAE posterior parameters (B, 2C, h, w) of images in [-1, 1]; cached by callers."""
        pixels = pixels.to(self.device, self.vae.dtype)
        return self.vae.encode(pixels).latent_dist.parameters.float()

    def sample_latents(self, dist_params: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        """Draw scaled latents from cached posterior parameters (as ``latent_dist.sample()``)."""
        mean, logvar = dist_params.chunk(2, dim=1)
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        eps = torch.randn(mean.shape, generator=generator, device=generator.device if generator else None)
        latents = mean + std * eps.to(mean.device)
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return (latents - shift) * self.vae.config.scaling_factor

    # ------------------------------------------------------------------ diffusion
    def add_noise(self, latents, noise, t):
        return self.noise_scheduler.add_noise(latents, noise, t)

    def training_target(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Epsilon or v, from the checkpoint's scheduler config (v = √ᾱ·ε − √(1−ᾱ)·x0)."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "v_prediction":
            return self.noise_scheduler.get_velocity(latents, noise, t)
        raise ConfigError(f"backbone {self.name}: prediction_type '{self.prediction_type}' "
                          "is not supported for training (epsilon or v_prediction)")

    def pred_x0(self, model_out: torch.Tensor, noisy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x̂0 from a model output: (x_t − √(1−ᾱ)·ε̂)/√ᾱ for epsilon, √ᾱ·x_t − √(1−ᾱ)·v̂ for v."""
        alphas = self.noise_scheduler.alphas_cumprod.to(noisy.device, torch.float32)[t]
        a = alphas.sqrt().view(-1, *[1] * (noisy.dim() - 1))
        s = (1 - alphas).sqrt().view(-1, *[1] * (noisy.dim() - 1))
        if self.prediction_type == "epsilon":
            return (noisy - s * model_out) / a
        if self.prediction_type == "v_prediction":
            return a * noisy - s * model_out
        raise ConfigError(f"backbone {self.name}: cannot form x0 for '{self.prediction_type}'")

    # ------------------------------------------------------------------ tokens
    def add_placeholder_tokens(self, tokens: list[str], initializer: Optional[str] = None) -> list[list[int]]:
        """Add tokens to every tokenizer/encoder pair; rows start as the initializer's row.

        Returns the new ids per encoder. The initializer must be a single token in every
        tokenizer; a token already in a vocabulary is refused.
        """
        all_ids = []
        for slot in self.slots:
            tok, enc = slot.tokenizer, slot.encoder
            for token in tokens:
                reason = placeholder_conflict(tok, token)
                if reason:
                    raise ConfigError(f"placeholder token '{token}' {reason} in the {slot.key} tokenizer, so "
                                      "training it would change an existing word; choose a new string "
                                      "(e.g. '<R1>')")
            init_id = None
            if initializer is not None:
                init_ids = tok.encode(initializer, add_special_tokens=False)
                if len(init_ids) != 1:
                    raise ConfigError(f"initializer '{initializer}' is {len(init_ids)} tokens in the "
                                      f"{slot.key} tokenizer; it must be a single token (e.g. 'and')")
                init_id = init_ids[0]
            added = tok.add_tokens(tokens)
            if added != len(tokens):
                raise ConfigError(f"could not add all of {tokens} to the {slot.key} tokenizer")
            ids = tok.convert_tokens_to_ids(tokens)
            if max(ids) >= enc.get_input_embeddings().weight.shape[0]:
                enc.resize_token_embeddings(len(tok))
            fix_eos_token_id(enc, tok)
            if init_id is not None:
                with torch.no_grad():
                    weight = enc.get_input_embeddings().weight
                    for i in ids:
                        weight[i] = weight[init_id].clone()
            all_ids.append(ids)
        return all_ids

    # ------------------------------------------------------------------ pipelines
    def inference_scheduler(self, name: Optional[str] = None):
        import diffusers

        name = name or self.cfg.inference_scheduler
        if name not in _SCHEDULERS:
            raise ConfigError(f"scheduler '{name}' is not one of {sorted(_SCHEDULERS)}")
        cls = getattr(diffusers, _SCHEDULERS[name])
        config = dict(self.scheduler_config)
        config["prediction_type"] = self.prediction_type
        return cls.from_config(config)

    def pipeline(self, scheduler: Optional[str] = None):
        """A diffusers pipeline that shares this backbone's loaded modules (no copies)."""
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        sched = self.inference_scheduler(scheduler)
        if self.family == "sd":
            pipe = StableDiffusionPipeline(vae=self.vae, text_encoder=self.slots[0].encoder,
                                           tokenizer=self.slots[0].tokenizer, unet=self.unet,
                                           scheduler=sched, safety_checker=None,
                                           feature_extractor=None, requires_safety_checker=False)
        else:
            pipe = StableDiffusionXLPipeline(vae=self.vae, text_encoder=self.slots[0].encoder,
                                             text_encoder_2=self.slots[1].encoder,
                                             tokenizer=self.slots[0].tokenizer,
                                             tokenizer_2=self.slots[1].tokenizer, unet=self.unet,
                                             scheduler=sched)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def freeze(self) -> None:
        for slot in self.slots:
            slot.encoder.requires_grad_(False)
            slot.encoder.eval()
        self.unet.requires_grad_(False)
        self.vae.requires_grad_(False)
        self.unet.eval()
        self.vae.eval()


def fix_eos_token_id(encoder, tokenizer) -> None:
    """Make CLIP pool the EOS row even when added tokens have larger ids than EOS.

    Published SD/SDXL text-encoder configs carry the legacy ``eos_token_id == 2``, with which
    transformers pools at ``argmax(input_ids)`` — an added token, not EOS.
    """
    encoder.config.eos_token_id = tokenizer.eos_token_id
    for module in (encoder, getattr(encoder, "text_model", None)):
        if module is not None and hasattr(module, "eos_token_id"):
            module.eos_token_id = tokenizer.eos_token_id


def cache_root(cache_dir: Optional[str] = None) -> Path:
    root = cache_dir or os.environ.get("RELGEN_CACHE") or os.path.join(Path.home(), ".cache", "relgen")
    return Path(root).expanduser()


def placeholder_conflict(tokenizer, token: str) -> Optional[str]:
    """Why ``token`` is not new to ``tokenizer`` (``None`` when it is).

    A string is new only if the tokenizer, as it is, neither holds it as a token nor reads it
    as one existing token: CLIP reads ``and`` as the word token ``and</w>``, and an added token
    ``and`` would then also capture every "and" inside other words ("band", "android").
    """
    vocab = tokenizer.get_vocab()
    if token in vocab:
        return "is already a token"
    pieces = tokenizer.tokenize(token)
    unk = getattr(tokenizer, "unk_token", None)
    if len(pieces) == 1 and pieces[0] != unk and pieces[0] in vocab:
        return f"already reads as the existing token '{pieces[0]}'"
    # An added token is matched in the raw text before BPE, also inside words: 'ing' would split
    # "string" into "str" + 'ing'. So it must not be a piece of any token the tokenizer can produce
    # (compared as CLIP's tokenizer normalises text: lower case, '</w>' marking a word's end).
    needle = token.lower()
    inside = [t for t in vocab if needle in t.lower().replace("</w>", "")]
    if inside:
        example = min(inside, key=lambda t: (len(t), t))
        more = f" (and {len(inside) - 1} more)" if len(inside) > 1 else ""
        return f"is a piece of the existing token '{example}'{more} and would be captured inside those words"
    return None


def warn_if_truncated(tokenizer, prompts: list[str], stacklevel: int = 2) -> None:
    """Warn, per prompt longer than the tokenizer's limit, with what is kept and dropped."""
    full = tokenizer(list(prompts), padding=False, truncation=False).input_ids
    limit = tokenizer.model_max_length
    for prompt, ids in zip(prompts, full):
        if len(ids) > limit:
            kept = tokenizer.decode(ids[1:limit - 1])
            warnings.warn(f"prompt is longer than {limit} tokens and was cut after: '{kept}' (dropped "
                          f"{len(ids) - limit} tokens): '{prompt}'", stacklevel=stacklevel)

"""ReVersion: relation inversion with a steering contrastive loss.

ReVersion learns one relation token ``<R>`` from a few exemplar images that share a relation.
It is textual inversion (the token's input-embedding row is the only trained tensor) with two
additions: a *relation-steering contrastive loss* on the token-embedding table that pulls
``<R>`` towards prepositions and away from the captions' content words (ReVersion Eq. 5), and
*relation-focal importance sampling* of timesteps that favours high-noise steps (Eq. 6; the
shared ``relation_focal`` sampler of the training loop).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Optional

import torch

from relgen.errors import ConfigError, RelgenError
from relgen.methods.reversion.artifact import ReVersionArtifact, normalize_prompt  # noqa: F401 (re-exported)
from relgen.methods.reversion.config import ReVersionConfig
from relgen.methods.reversion.importer import OFFICIAL_EMBEDS_FILE, import_official_embeds, official_exporter
from relgen.methods.reversion.losses import gather_steering_rows, steering_loss
from relgen.methods.reversion.words import excluded_token_ids, sample_positive_words, special_token_ids
from relgen.methods.textual_inversion.method import EMBEDS_ROLE, LEGACY_EMBEDS_FILE, TextualInversion, TokenArtifact
from relgen.names import exported_file
from relgen.plugin import StepContext, StepOutput

NO_NEGATIVES_WARNING = (
    "reversion: the batch's captions contain no content words (every token is a stop word, a "
    "preposition, a special token or the relation token), so the steering loss has no negatives; "
    "training continues with the denoising loss only for such batches. Add object words to the "
    "captions in text.json (e.g. 'cat {} stone')."
)


class ReVersion(TextualInversion):
    """ReVersion's relation token ``<R>``, trained with denoising + steering losses.

    The loss of a micro-batch is ``denoise_loss_weight * L_denoise + steer_loss_weight *
    L_steer``. ``L_denoise`` is the textual-inversion denoising MSE against the backbone's
    target (epsilon or v). ``L_steer`` is ReVersion Eq. 5 on rows of the *input token-embedding
    table*: the anchor is the trainable ``<R>`` row (so the gradient reaches only that row), the
    positives are the tokens of ``num_positives`` prepositions drawn per sample without
    replacement, and the negatives are the caption tokens that are neither stop words,
    prepositions, BOS/EOS/pad nor ``<R>``, pooled over the batch.

    Backbones with several text encoders (SDXL) train one ``<R>`` row per encoder; the
    steering loss is computed in each encoder's embedding space with that encoder's tokenizer
    and rows, and the per-encoder losses are averaged.

    A batch whose captions leave no negatives triggers one warning per run; such batches
    train with the denoising loss only.

    Ablations (config): ``timestep_sampler=uniform`` turns importance sampling off;
    ``steer_loss_weight=0`` turns steering off (the steering loss is still logged).
    """

    config_class = ReVersionConfig
    denoising_terms = ("loss_denoise",)  # the steering loss is never loss-weighted
    official_format = "ReVersion's learned_embeds.bin ({\"<R>\": tensor (768,)}, SD 1.5)"

    @classmethod
    def check_config(cls, cfg) -> list[str]:
        check_steering(cfg.method)
        return super().check_config(cfg)

    @classmethod
    def import_official(cls, cfg, file: Path, words: dict):
        return official_exporter(cfg, file)

    def __init__(self, cfg: ReVersionConfig, backbone, data) -> None:
        check_relation_token(backbone, cfg.placeholder_token, cfg.initializer_token)
        check_steering(cfg)
        super().__init__(cfg, backbone, data)
        # Per encoder: ids never used as negatives (stop words, prepositions, BOS/EOS/pad, <R>)
        # and the special ids dropped from the positive sentences.
        self.excluded_ids = []
        self.special_ids = []
        for slot, token_ids in zip(backbone.slots, self.embeds.token_ids):
            excluded = excluded_token_ids(slot.tokenizer, extra_ids=token_ids)
            special = special_token_ids(slot.tokenizer)
            self.excluded_ids.append(torch.tensor(sorted(excluded), dtype=torch.long, device=backbone.device))
            self.special_ids.append(torch.tensor(sorted(special), dtype=torch.long, device=backbone.device))
        self._warned_no_negatives = False

    @property
    def steering(self) -> bool:
        """Whether the steering loss is computed (added to the loss only with a non-zero weight)."""
        return self.cfg.num_positives > 0

    # -- training ---------------------------------------------------------------------------
    def next_batch(self, generator: torch.Generator) -> dict[str, Any]:
        """The textual-inversion batch plus one positive sentence per sample.

        Returns:
            ``{"index": LongTensor[B], "captions": list[str], "positives": list[str]}``; each
            positive sentence is ``num_positives`` distinct prepositions joined by spaces.
        """
        batch = super().next_batch(generator)
        if self.steering:
            # as ReVersion's released dataset: a fresh draw without replacement for every sample
            batch["positives"] = [" ".join(sample_positive_words(self.cfg.num_positives, generator))
                                  for _ in batch["captions"]]
        return batch

    def steering_loss(self, batch: dict[str, Any], caption_ids: list[torch.Tensor]) -> Optional[torch.Tensor]:
        """ReVersion Eq. 5 averaged over the text encoders, or None when there are no negatives.

        Args:
            batch: A batch from :meth:`next_batch` (needs ``"positives"``).
            caption_ids: Caption token ids per encoder, each ``(B, L)``.

        Returns:
            A scalar tensor whose gradient reaches only the ``<R>`` rows, or None when some
            encoder finds no negative token in the batch's captions.
        """
        bb = self.backbone
        positive_ids = bb.tokenize(batch["positives"], warn=False)
        losses = []
        with torch.autocast(device_type=bb.device.type, enabled=False):  # fp32, as the released code
            for i, slot in enumerate(bb.slots):
                weight = slot.encoder.get_input_embeddings().weight  # (V, D_i)
                positives, negatives = gather_steering_rows(weight, positive_ids[i], caption_ids[i],
                                                            self.excluded_ids[i], self.special_ids[i])
                if negatives.shape[0] == 0:
                    return None
                anchor = self.embeds.rows[i][0]  # the trainable <R> row, (D_i,)
                losses.append(steering_loss(anchor, positives, negatives, self.cfg.temperature))  # ReVersion Eq. 5
        # ReVersion has one text encoder; with several (SDXL) the per-encoder losses are averaged
        return torch.stack(losses).mean()

    def training_step(self, batch: dict[str, Any], ctx: StepContext) -> StepOutput:
        cfg = self.cfg
        denoise, caption_ids = self.denoising_loss(batch, ctx)
        loss = cfg.denoise_loss_weight * denoise
        logs = {"loss_denoise": float(denoise.detach())}
        if self.steering:
            with torch.set_grad_enabled(torch.is_grad_enabled() and cfg.steer_loss_weight != 0):
                steer = self.steering_loss(batch, caption_ids)
            if steer is None:
                if not self._warned_no_negatives:
                    warnings.warn(NO_NEGATIVES_WARNING, stacklevel=2)
                    self._warned_no_negatives = True
                logs["loss_steer"] = 0.0
            else:
                if cfg.steer_loss_weight != 0:
                    # as ReVersion's released train.py: weighted sum of the denoising and steering losses
                    loss = loss + cfg.steer_loss_weight * steer
                logs["loss_steer"] = float(steer.detach())
        return StepOutput(loss, logs)

    # -- artifacts --------------------------------------------------------------------------
    @classmethod
    def load_artifact(cls, export_dir: Path, meta: Optional[dict] = None) -> "ReVersionArtifact":
        """Read a run's export folder, or ReVersion's official ``learned_embeds.bin``.

        Args:
            export_dir: An export folder (its file is the one ``relgen.json`` records, e.g.
                ``reversion-R.safetensors``; ``learned_embeds.safetensors`` in exports that record
                no names); an official experiment folder holding ``learned_embeds.bin``; or the
                path of either file.
            meta: The export's ``relgen.json`` contents (may be empty for official files).

        Returns:
            The ``<R>`` rows, applicable to a diffusers pipeline.
        """
        meta = dict(meta or {})
        mcfg = dict(meta.get("method_config") or {})
        lowercase = bool(mcfg.get("lowercase_prompts", True))
        path = Path(export_dir).expanduser()
        if path.is_dir():
            exported = exported_file(path, meta, EMBEDS_ROLE, LEGACY_EMBEDS_FILE)
            if exported.is_file():
                path = exported
            elif (path / OFFICIAL_EMBEDS_FILE).is_file():
                path = path / OFFICIAL_EMBEDS_FILE
            else:
                raise RelgenError(f"{path}: holds neither {exported.name} (a relgen export) nor "
                                  f"{OFFICIAL_EMBEDS_FILE} (ReVersion's official format)")
        if path.suffix == ".safetensors":
            meta.setdefault("method", cls.name)
            mcfg.setdefault("placeholder_token", ReVersionConfig.placeholder_token)
            meta["method_config"] = mcfg
            art = TokenArtifact.from_file(path, meta)
            loaded = ReVersionArtifact(art.token, art.rows, art.prompts, art.method, lowercase)
            loaded.source = path
            return loaded
        return import_official_embeds(path, lowercase_prompts=lowercase)

    def live_artifact(self) -> "ReVersionArtifact":
        self.embeds.write_into_encoders()
        return ReVersionArtifact(self.token, self.embeds.named_rows(), self.sample_prompts(), self.name,
                                 self.cfg.lowercase_prompts)


def check_steering(cfg: ReVersionConfig) -> None:
    """The steering loss's temperature is > 0 and it has positives (checked before anything loads)."""
    if cfg.temperature <= 0:
        raise ConfigError(f"method.temperature={cfg.temperature} must be > 0 (ReVersion uses 0.07)")
    if cfg.steer_loss_weight != 0 and cfg.num_positives < 1:
        raise ConfigError(f"method.num_positives={cfg.num_positives} leaves the steering loss without "
                          "positives; set method.num_positives>=1 (ReVersion uses 4) or "
                          "method.steer_loss_weight=0")


def check_relation_token(backbone, token: str, initializer: Optional[str]) -> None:
    """Refuse a relation token already in a vocabulary and a multi-token initializer.

    Raises:
        ConfigError: naming ``method.placeholder_token`` or ``method.initializer_token``.
    """
    from relgen.backbones.base import placeholder_conflict

    for slot in backbone.slots:
        tok = slot.tokenizer
        reason = placeholder_conflict(tok, token)
        if reason:
            raise ConfigError(f"method.placeholder_token='{token}' {reason} of the backbone's "
                              f"{slot.key} tokenizer, so training it would change an existing word; "
                              "choose a new string, e.g. method.placeholder_token='<R1>'")
        if initializer is not None:
            pieces = tok.tokenize(initializer)
            if len(pieces) != 1:
                raise ConfigError(f"method.initializer_token='{initializer}' is {len(pieces)} tokens "
                                  f"{pieces} in the {slot.key} tokenizer; ReVersion needs a single token, "
                                  "e.g. method.initializer_token=and")

"""Textual inversion: learn a placeholder token's embedding row in every text encoder.

The reference plugin (and the baseline of ReVersion and RRNet). Captions come from a
ReVersion-layout dataset: each image has caption templates whose ``{}`` is filled with the
placeholder token. Loss: the denoising MSE against the backbone's target (epsilon or v).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from relgen.errors import RelgenError
from relgen.methods.reversion.words import load_benchmark_scenarios
from relgen.methods.textual_inversion.config import TextualInversionConfig
from relgen.methods.textual_inversion.embeddings import PlaceholderEmbeddings
from relgen.card import export_ref, generation_kwargs, program
from relgen.names import export_file_name, exported_file, recorded_name
from relgen.plugin import Artifact, Method, StepContext, StepOutput

EMBEDS_ROLE = "embeddings"  # the file's role in relgen.json's "files"
# The fixed name of exports written before the file names carried the token (read, never written).
LEGACY_EMBEDS_FILE = "learned_embeds.safetensors"


def embeds_file_name(method: str, token: str) -> str:
    """``<method>-<token>.safetensors``, the token made portable: ``reversion-R.safetensors`` for ``<R>``."""
    return export_file_name(method, token, fallback="token")


class TextualInversion(Method):
    config_class = TextualInversionConfig
    dataset_formats = ("reversion",)
    requires = frozenset({"images", "captions"})

    def __init__(self, cfg: TextualInversionConfig, backbone, data) -> None:
        super().__init__(cfg, backbone, data)
        from relgen.data.latents import latent_dists

        self.token = cfg.placeholder_token
        self.embeds = PlaceholderEmbeddings(backbone, [self.token], cfg.initializer_token)
        self.embeds.attach()
        self.resolution = cfg.resolution or backbone.resolution
        self.items = list(data.items)
        check_templates_fit(backbone, self.items, self.token, self.embeds.token_ids)
        # Exemplar latents are encoded once (and cached on disk); the step only samples them.
        self.latent_dists = latent_dists(backbone, [it.image for it in self.items], self.resolution)

    # -- training ---------------------------------------------------------------------------
    def trainable_parameters(self) -> list[dict]:
        return [{"params": list(self.embeds.rows)}]

    def next_batch(self, generator: torch.Generator) -> dict[str, Any]:
        n = self.cfg.batch_size
        idx = torch.randint(0, len(self.items), (n,), generator=generator)
        captions = []
        for i in idx.tolist():
            templates = self.items[i].templates
            j = int(torch.randint(0, len(templates), (1,), generator=generator))
            captions.append(templates[j].format(self.token))  # one random template per sample
        return {"index": idx, "captions": captions}

    def denoising_loss(self, batch: dict[str, Any], ctx: StepContext):
        """Returns (loss, token ids per encoder) for the batch's captions."""
        bb = self.backbone
        gen = ctx.generator
        latents = bb.sample_latents(self.latent_dists[batch["index"]], gen).to(bb.device)
        noise = ctx.draw_noise(latents)
        t = ctx.sample_timesteps(latents.shape[0], gen).to(bb.device)
        noisy = bb.add_noise(latents, noise.input, t)
        ids = bb.tokenize(batch["captions"])
        cond = bb.encode_text(ids)
        pred = bb.unet_forward(noisy.to(bb.unet.dtype), t, cond)
        target = bb.training_target(latents, noise.noise, t)
        return ctx.denoising_loss(pred, target, t), ids

    def training_step(self, batch: dict[str, Any], ctx: StepContext) -> StepOutput:
        loss, _ = self.denoising_loss(batch, ctx)
        return StepOutput(loss, {})

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {f"rows.{k}": v for k, v in self.embeds.named_rows().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for key, rows in zip(self.embeds.keys, self.embeds.rows):
                rows.copy_(state[f"rows.{key}"])

    # -- artifacts --------------------------------------------------------------------------
    def export(self, out_dir: Path) -> dict[str, Path]:
        """``<method>-<token>.safetensors`` (``textual_inversion-R.safetensors`` for ``<R>``)."""
        self.embeds.write_into_encoders()
        path = Path(out_dir) / embeds_file_name(self.name, self.token)
        return {EMBEDS_ROLE: save_token_embeddings(path, self.token, self.embeds.named_rows())}

    @classmethod
    def card_usage(cls, meta: dict) -> tuple[str, list[str]]:
        mcfg = meta.get("method_config") or {}
        token = mcfg.get("placeholder_token", "<R>")
        name = recorded_name(meta, EMBEDS_ROLE, LEGACY_EMBEDS_FILE) or LEGACY_EMBEDS_FILE
        path = export_ref(meta, name)
        if (meta.get("backbone") or {}).get("family") == "sdxl":
            imports = ["from safetensors.torch import load_file"]
            body = [f"rows = load_file(\"{path}\")  # clip_l and clip_g rows",
                    f"pipe.load_textual_inversion(rows[\"clip_l\"], token=\"{token}\", text_encoder=pipe.text_encoder, "
                    "tokenizer=pipe.tokenizer)",
                    f"pipe.load_textual_inversion(rows[\"clip_g\"], token=\"{token}\", text_encoder=pipe.text_encoder_2, "
                    "tokenizer=pipe.tokenizer_2)",
                    "# pool at EOS, not at the new token (SDXL's encoder configs carry the legacy eos_token_id 2)",
                    "for enc, tok in ((pipe.text_encoder, pipe.tokenizer), (pipe.text_encoder_2, pipe.tokenizer_2)):",
                    "    enc.config.eos_token_id = tok.eos_token_id",
                    "    getattr(enc, \"text_model\", enc).eos_token_id = tok.eos_token_id  # read there"]
        else:
            imports, body = [], [f"pipe.load_textual_inversion(\"{path}\", token=\"{token}\")"]
        prompt = (mcfg.get("sample_prompts") or [f"a cat {token} a stone"])[0]
        body.append(f"image = pipe({prompt!r}, {generation_kwargs(meta)}).images[0]")
        return (f"{program(meta, body, imports)}\n\n"
                f"`{token}` is the learnt token: write it in a prompt where the relation goes.",
                ["The backbone's own weights; only the learnt token's embedding rows are here.",
                 "ReVersion lower-cases prompts except the token at generation; plain diffusers does not."])

    @classmethod
    def load_artifact(cls, export_dir: Path, meta: dict) -> "TokenArtifact":
        return TokenArtifact.from_file(exported_file(export_dir, meta, EMBEDS_ROLE, LEGACY_EMBEDS_FILE), meta)

    def live_artifact(self) -> "TokenArtifact":
        self.embeds.write_into_encoders()
        return TokenArtifact(self.token, self.embeds.named_rows(), self.sample_prompts(), self.name)

    def sample_prompts(self) -> list[str]:
        if self.cfg.sample_prompts:
            return list(self.cfg.sample_prompts)
        prompts = []
        for item in self.items[: self.cfg.num_sample_prompts]:
            prompts.append(item.templates[0].format(self.token))
        return prompts


# ------------------------------------------------------------------------------------------
# Export format: diffusers' textual-inversion file. SD 1.x/2.x: {token: (D,)} (one key, as
# diffusers' textual_inversion.py writes). SDXL: {"clip_l": (n, 768), "clip_g": (n, 1280)},
# the community format whose parts load with load_textual_inversion(..., text_encoder=...).
# diffusers' load_textual_inversion reads a safetensors file with one tensor per token from its
# path whatever the file's name, so the name can say what it holds (reversion-R.safetensors).


def save_token_embeddings(path: Path, token: str, rows: dict[str, torch.Tensor]) -> Path:
    from safetensors.torch import save_file

    if set(rows) == {"text_encoder"}:
        tensors = {token: rows["text_encoder"][0].contiguous()}
    else:
        tensors = {key: value.contiguous() for key, value in rows.items()}
    save_file(tensors, str(path), metadata={"placeholder_token": token, "format": "relgen-ti"})
    return path


class TokenArtifact(Artifact):
    """Learned rows for one placeholder token, per text encoder key."""

    def __init__(self, token: str, rows: dict[str, torch.Tensor], prompts: list[str], method: str) -> None:
        self.token = token
        self.rows = rows
        self.prompts = prompts
        self.method = method
        self.source: Optional[Path] = None  # the file the rows were read from, named in errors

    @classmethod
    def from_file(cls, path: Path, meta: dict) -> "TokenArtifact":
        from relgen.tensorfile import read_safetensors

        tensors, metadata = read_safetensors(path, "exported embeddings")
        token = metadata.get("placeholder_token") or meta["method_config"]["placeholder_token"]
        if set(tensors) <= {"clip_l", "clip_g"}:
            rows = {k: v.reshape(-1, v.shape[-1]) for k, v in tensors.items()}
        else:
            (name, value), = tensors.items()
            token = name
            rows = {"text_encoder": value.reshape(1, -1)}
        artifact = cls(token, rows, list(meta.get("method_config", {}).get("sample_prompts") or []), meta["method"])
        artifact.source = path
        return artifact

    def apply(self, pipe) -> None:
        """Add the token to the pipeline's tokenizer(s) and write its rows (idempotent)."""
        from relgen.backbones.base import fix_eos_token_id

        pairs = [("text_encoder", pipe.tokenizer, pipe.text_encoder)]
        if getattr(pipe, "text_encoder_2", None) is not None:
            pairs = [("clip_l", pipe.tokenizer, pipe.text_encoder),
                     ("clip_g", pipe.tokenizer_2, pipe.text_encoder_2)]
        for key, tok, enc in pairs:
            where = f"{self.source}: " if self.source is not None else ""
            if key not in self.rows:
                raise RelgenError(f"{where}the artifact has rows for {sorted(self.rows)} but the pipeline needs "
                                  f"'{key}'; it was trained on another backbone family")
            row = self.rows[key][0]
            width = enc.get_input_embeddings().weight.shape[1]
            if row.shape[0] != width:
                raise RelgenError(f"{where}token {self.token}: learned row is {row.shape[0]}-wide but the pipeline's "
                                  f"{key} embeds {width}-wide; use a pipeline of the backbone it was trained on")
            if self.token not in tok.get_vocab():
                from relgen.backbones.base import placeholder_conflict

                reason = placeholder_conflict(tok, self.token)
                if reason:  # training refuses such a token: it would change an existing word
                    raise RelgenError(f"{where}token '{self.token}' {reason} of the pipeline's {key} tokenizer; "
                                      "training refuses such a token because it would change existing words")
                tok.add_tokens([self.token])
            tid = tok.convert_tokens_to_ids(self.token)
            if tid >= enc.get_input_embeddings().weight.shape[0]:
                enc.resize_token_embeddings(len(tok))
            fix_eos_token_id(enc, tok)
            with torch.no_grad():
                weight = enc.get_input_embeddings().weight
                weight[tid] = row.to(weight.device, weight.dtype)

    def sample_prompts(self) -> list[str]:
        return self.prompts

    def benchmark_prompts(self) -> dict[str, list[str]]:
        """ReVersion's benchmark (10 relations x 100 "subject {} object" scenarios), on which
        token methods are compared."""
        return load_benchmark_scenarios()


def check_templates_fit(backbone, items, token: str, token_ids: list[list[int]]) -> None:
    """Refuse a caption template whose placeholder falls past a tokenizer's length limit.

    The text encoders read the first ``model_max_length`` tokens (BOS, 75 tokens, EOS for CLIP):
    a placeholder beyond them is cut off, receives no gradient and cannot be learned.

    Raises:
        DataError: naming the image and the template.
    """
    from relgen.errors import DataError

    seen: set[str] = set()
    for item in items:
        for template in item.templates:
            if template in seen:
                continue
            seen.add(template)
            caption = template.format(token)
            for slot, ids in zip(backbone.slots, token_ids):
                tok = slot.tokenizer
                full = tok(caption, padding=False, truncation=False).input_ids
                last = tok.model_max_length - 1  # the EOS slot after truncation
                where = [i for i, t in enumerate(full) if t in ids]
                if where and min(where) >= last:
                    raise DataError(f"{item.image.parent / 'text.json'}: template {template!r} of {item.image.name} "
                                    f"puts {token} at token {min(where)}, past "
                                    f"the {slot.key} tokenizer's limit of {tok.model_max_length} tokens, so it "
                                    "would be cut off and never learned; shorten the template or move {} earlier")

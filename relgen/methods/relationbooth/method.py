"""RelationBooth (released as DreamRelation): a rank-4 LoRA on the UNet's cross-attention,
trained on top of MS-Diffusion's grounded image-prompt branch.

Per training item (DreamRelation's layout): a relation ("motion") image with one mask and 17
keypoints per entity, one reference ("concept") image per entity with its keypoints, a prompt
and its predicate words. The UNet is conditioned on ``[77 text tokens, 4 dummy tokens, 16
tokens per entity]`` with box-masked parallel image attention (gamma 0.6); only the LoRA on
``attn2.to_q/k/v/out.0`` trains. Loss (DreamRelation train.py)::

    L = MSE(pred, target) + 0.1 * KML * [t <= 333] + 0.001 * L_cal

KML compares the predicted x0 at the target keypoints with the reference latents at the
reference keypoints; L_cal pulls the predicate tokens' text attention onto the entities.

Caching: every frozen input is computed once at setup — prompt embeddings, phrase embeddings,
CLIP features, the resampler's image tokens, the reference latents and the target latents.
DreamRelation's random resize-crop moves the target image, masks, keypoints and boxes, so it
cannot be applied to a cached latent; instead ``num_crops`` crops per item are drawn once at
setup with a seeded generator, each crop's VAE posterior (and its boxes, masks, keypoints and
image tokens) is cached, and every step picks one crop with the run's generator. Identical
crops are stored once: on square images (the released data are 1024² squares) the released
transform is the identity, so one posterior per item is all there is.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from relgen.card import export_json, export_ref, generation_kwargs, load_run_line, program
from relgen.backbones.base import TextCond
from relgen.errors import ConfigError, DataError
from relgen.methods.relationbooth.artifact import (
    BRANCH_ROLE,
    DEFAULT_RELATION_NAME,
    ENCODER_DIR,
    ENCODER_ROLE,
    KOHYA_ROLE,
    LEGACY_BRANCH_FILE,
    LEGACY_KOHYA_FILE,
    LEGACY_LORA_FILE,
    LORA_ROLE,
    SPEC_FILE,
    SPEC_ROLE,
    RelationBoothArtifact,
    export_names,
)
from relgen.methods.relationbooth.attention import TextAttentionStore
from relgen.methods.relationbooth.branch import TINY_ENCODER_SOURCE, build_branch, phrase_embeddings
from relgen.methods.relationbooth.checks import check_config, check_values
from relgen.methods.relationbooth.config import RelationBoothConfig
from relgen.methods.relationbooth.importer import official_exporter
from relgen.methods.relationbooth.losses import keypoint_matching_loss, predicate_calibration_loss
from relgen.names import recorded_name
from relgen.plugin import Method, StepContext, StepOutput

log = logging.getLogger("relgen")

LORA_ADAPTER = "default"
CROP_POLICY = "relationbooth-resize-crop-v1"


@dataclass
class PreparedItem:
    """One training item with every frozen input cached.

    Attributes:
        id, prompt, entities, concept_images: from the dataset.
        span: ``(start, end)`` token span of the predicate in the first tokenizer's ids (``(0, 0)``
            when the calibration loss is off).
        pooled: ``[D_pool]`` SDXL pooled prompt embedding (None for SD 1.x/2.x).
        phrase_embeds: ``[n, D_phrase]``.
        features: ``[n, T, D]`` CLIP tokens of the references (global, plus local if trained with them).
        ref_dists: ``[n, 2C, h, w]`` VAE posteriors of the references.
        ref_keypoints: ``[n, 17, 2]`` keypoints on the references.
        crop_dists: ``[k, 2C, h, w]`` VAE posteriors of the k cached crops of the target image.
        crop_masks: ``[k, n, h, w]`` entity masks on the latent grid.
        crop_keypoints: ``[k, n, 17, 2]`` target keypoints after each crop.
        crop_boxes: ``[k, n, 4]`` boxes of the cropped masks on the latent grid.
        crop_ehs: ``[k, L_text + T_img, C]`` UNet conditioning: text tokens then image tokens.
    """

    id: str
    prompt: str
    entities: list[str]
    concept_images: list[Path]
    span: tuple[int, int]
    pooled: Optional[torch.Tensor]
    phrase_embeds: torch.Tensor
    features: torch.Tensor
    ref_dists: torch.Tensor
    ref_keypoints: torch.Tensor
    crop_dists: torch.Tensor
    crop_masks: torch.Tensor
    crop_keypoints: torch.Tensor
    crop_boxes: torch.Tensor
    crop_ehs: torch.Tensor

    @property
    def num_crops(self) -> int:
        return int(self.crop_dists.shape[0])


class RelationBooth(Method):
    config_class = RelationBoothConfig
    dataset_formats = ("dreamrelation",)
    # the predicate is needed by the calibration loss only: see calibration_plan()
    requires = frozenset({"keypoints", "masks", "references"})
    denoising_terms = ("diff",)  # the keypoint and calibration losses are never loss-weighted
    official_format = ("MS-Diffusion's ms_adapter.bin (the image branch alone), or DreamRelation's LoRA "
                       ".safetensors with method.ms_adapter=<ms_adapter.bin>; method.image_encoder= and "
                       "method.clipself_checkpoint= name the CLIP encoders (default: the released ones); "
                       "method.relation_name= names the exported files (relationbooth-<name>-lora.safetensors)")

    @classmethod
    def check_config(cls, cfg) -> list[str]:
        return check_config(cfg)

    @classmethod
    def import_official(cls, cfg, file: Path, words: dict):
        return official_exporter(cfg, file)

    @classmethod
    def check_data(cls, cfg: RelationBoothConfig, data: list) -> None:
        """Checks that need the data but no weights: says once whether the calibration loss is on."""
        on, reason = calibration_plan(cfg, data)
        if on or cfg.calibration is False:
            log.info("relationbooth: predicate calibration loss %s (%s)", "on" if on else "off", reason)
        else:
            log.warning("relationbooth: predicate calibration loss off: %s", reason)

    def __init__(self, cfg: RelationBoothConfig, backbone, data) -> None:
        super().__init__(cfg, backbone, data)
        check_values(cfg)  # validate() ran them already; direct construction needs them too
        self.resolution = int(cfg.resolution or backbone.resolution)
        if self.resolution % backbone.vae_scale:
            raise ConfigError(f"method.resolution={self.resolution} must be a multiple of {backbone.vae_scale}")
        self.latent_side = self.resolution // backbone.vae_scale
        raw_items = list(data)
        if not raw_items:
            raise DataError("the dataset has no items")
        counts = {len(it.entities) for it in raw_items}
        if cfg.batch_size > 1 and len(counts) > 1:
            raise ConfigError(f"method.batch_size={cfg.batch_size} needs every item to have the same number of "
                              f"entities (found {sorted(counts)}); use method.batch_size=1")

        self.calibration, _ = calibration_plan(cfg, raw_items)  # said by check_data before loading
        # image branch + masked attention, then the LoRA around attn2's projections
        self.branch = build_branch(cfg, backbone)
        self.cal_max_queries = self._calibration_max_queries()
        self.cal_side = None if self.cal_max_queries is None else math.isqrt(self.cal_max_queries)
        self.store = TextAttentionStore(max_query_tokens=self.cal_max_queries)
        self.store.active = self.cal_side is not None  # layers record only when given phrase_idxes
        self.processors = self.branch.install(backbone.unet, store=self.store)
        self.lora_params = add_lora(backbone.unet, cfg)

        self.items = prepare_items(raw_items, backbone, self.branch, cfg, self.resolution, spans=self.calibration)
        self.kp_max_timestep = (backbone.num_train_timesteps if cfg.kp_max_timestep is None
                                else int(cfg.kp_max_timestep))

    # -- setup helpers ------------------------------------------------------------------------
    def _calibration_max_queries(self) -> Optional[int]:
        """Most queries a layer may have to record predicate attention; None when the loss is off."""
        cfg = self.cfg
        if not self.calibration or cfg.cal_weight == 0:
            return None
        limit = calibration_query_limit(cfg, self.latent_side)
        sides = cross_attention_sides(self.backbone.unet, self.latent_side)
        if not any(s * s <= limit for s in sides.values()):
            log.warning("relationbooth: predicate calibration loss off: no cross-attention layer has at most %d "
                        "queries (method.cal_layer_rule=%s; latent side %d; layer sides %s); adjust "
                        "method.cal_max_queries or method.cal_max_side_fraction", limit, cfg.cal_layer_rule,
                        self.latent_side, sorted(set(sides.values())))
            return None
        return limit

    # -- training -----------------------------------------------------------------------------
    def trainable_parameters(self) -> list[dict]:
        return [{"params": list(self.lora_params.values())}]

    def next_batch(self, generator: torch.Generator) -> dict[str, Any]:
        idx = torch.randint(0, len(self.items), (self.cfg.batch_size,), generator=generator).tolist()
        crops = [int(torch.randint(0, self.items[i].num_crops, (1,), generator=generator)) for i in idx]
        return {"index": idx, "crop": crops}

    def compute_losses(self, batch: dict[str, Any], ctx: StepContext) -> dict[str, torch.Tensor]:
        """Every tensor of one micro-batch's loss (``loss``, ``diff``, ``kml``, ``cal``, ``t``, ``x0``, ...)."""
        bb, gen = self.backbone, ctx.generator
        items = [self.items[i] for i in batch["index"]]
        crops = batch["crop"]
        b, n = len(items), len(items[0].entities)
        dev = bb.device

        latents = bb.sample_latents(torch.stack([it.crop_dists[c] for it, c in zip(items, crops)]), gen).to(dev)
        ref_dists = torch.cat([it.ref_dists for it in items])
        refs = bb.sample_latents(ref_dists, gen).to(dev).view(b, n, *latents.shape[1:])
        noise = ctx.draw_noise(latents)
        t = ctx.sample_timesteps(b, gen).to(dev)
        noisy = bb.add_noise(latents, noise.input, t)

        ehs = torch.stack([it.crop_ehs[c] for it, c in zip(items, crops)]).to(dev)
        pooled = None if items[0].pooled is None else torch.stack([it.pooled for it in items]).to(dev)
        boxes = torch.stack([it.crop_boxes[c] for it, c in zip(items, crops)]).to(dev)
        cak = {"boxes": boxes}
        if self.cal_side is not None:
            # the predicate span makes the selected layers record their text attention; the store
            # stays active so a gradient-checkpointing recomputation takes the same path
            cak["phrase_idxes"] = torch.tensor([it.span for it in items], dtype=torch.long, device=dev)
        self.store.reset()
        pred = bb.unet_forward(noisy.to(bb.unet.dtype), t, TextCond(ehs, pooled), cross_attention_kwargs=cak)
        target = bb.training_target(latents, noise.noise, t)
        diff = ctx.denoising_loss(pred, target, t)

        # DreamRelation train.py: x0 from the scheduler, keypoints read on x0 and on the reference latents
        x0 = bb.pred_x0(pred.float(), noisy.float(), t)
        kps = torch.stack([it.crop_keypoints[c] for it, c in zip(items, crops)]).to(dev)
        ref_kps = torch.stack([it.ref_keypoints for it in items]).to(dev)
        kml = keypoint_matching_loss(x0, refs, kps, ref_kps, t, self.kp_max_timestep)

        maps = self.store.values()
        if maps:
            masks = torch.stack([it.crop_masks[c] for it, c in zip(items, crops)]).to(dev)
            cal = predicate_calibration_loss(maps, masks)
        else:
            cal = torch.zeros((), device=dev)
        # DreamRelation train.py: L = L_diff + w_kp * KML + w_cal * L_cal
        loss = diff + self.cfg.kp_weight * kml + self.cfg.cal_weight * cal
        return {"loss": loss, "diff": diff, "kml": kml, "cal": cal, "t": t, "x0": x0, "refs": refs,
                "keypoints": kps, "ref_keypoints": ref_kps, "pred": pred}

    def training_step(self, batch: dict[str, Any], ctx: StepContext) -> StepOutput:
        out = self.compute_losses(batch, ctx)
        logs = {"diff": out["diff"].item(), "kml": out["kml"].item()}
        if self.cal_side is not None:
            logs["cal"] = out["cal"].item()
        return StepOutput(out["loss"], logs)

    # -- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {f"lora.{k}": v.detach().clone() for k, v in self.lora_params.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for k, p in self.lora_params.items():
                p.copy_(state[f"lora.{k}"])

    # -- artifacts ----------------------------------------------------------------------------
    def relation_name(self) -> str:
        """What the exported files are named after: ``method.relation_name``, else the predicate
        every item shares (``hugging``; words joined by ``_``), else ``relation``."""
        if self.cfg.relation_name:
            return self.cfg.relation_name
        predicates = {tuple(item.predicate) if item.predicate else None for item in self.data}
        if len(predicates) == 1 and None not in predicates:
            return "_".join(predicates.pop())
        return DEFAULT_RELATION_NAME

    def export(self, out_dir: Path) -> dict[str, Path]:
        """``relationbooth-<relation>-lora.safetensors``, ``...-image-branch.safetensors``,
        ``image_branch.json`` (and ``...-lora-kohya.safetensors``, ``image_encoder/``)."""
        import json

        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        unet = self.backbone.unet
        names = export_names(self.relation_name(), self.name)
        files = {LORA_ROLE: save_lora(unet, out_dir, sdxl=len(self.backbone.slots) > 1, weight_name=names[LORA_ROLE])}
        if self.cfg.export_kohya:
            files[KOHYA_ROLE] = save_kohya_lora(unet, out_dir / names[KOHYA_ROLE])
        files[BRANCH_ROLE] = out_dir / names[BRANCH_ROLE]
        save_file(self.branch.adapter_state_dict(unet), str(files[BRANCH_ROLE]), metadata={"format": "ms_adapter"})
        if self.branch.spec.image_encoder == TINY_ENCODER_SOURCE:
            self.branch.image_encoder.save_pretrained(out_dir / ENCODER_DIR, safe_serialization=True)
            files[ENCODER_ROLE] = out_dir / ENCODER_DIR
        info = {"branch": self.branch.spec.to_json(), "generation": self.generation_defaults(),
                "lora": {"file": names[LORA_ROLE], "rank": self.cfg.rank, "alpha": self.cfg.lora_alpha,
                         "targets": list(self.cfg.lora_targets)},
                "samples": self.samples()}
        files[SPEC_ROLE] = out_dir / SPEC_FILE
        files[SPEC_ROLE].write_text(json.dumps(info, indent=2))
        return files

    @classmethod
    def card_usage(cls, meta: dict) -> tuple[str, list[str]]:
        lora = recorded_name(meta, LORA_ROLE, LEGACY_LORA_FILE)
        branch = recorded_name(meta, BRANCH_ROLE, LEGACY_BRANCH_FILE) or LEGACY_BRANCH_FILE
        kohya = recorded_name(meta, KOHYA_ROLE, LEGACY_KOHYA_FILE)
        samples = export_json(meta, SPEC_FILE).get("samples") or [{}]
        prompt = samples[0].get("prompt") or "a cat is hugging a dog"
        whole = program(meta, [
            load_run_line(meta),
            "run.apply(pipe)  # the image branch and the LoRA",
            "# images=[...], phrases=[...]: your own reference per entity (default: the training item of the prompt)",
            f"inputs = run.pipeline_inputs(pipe, [{prompt!r}])",
            f"image = pipe(**inputs, {generation_kwargs(meta)}).images[0]"], imports=["import relgen"])
        text = f"The whole model (image branch and LoRA), through relgen:\n\n{whole}"
        if lora:
            alone = program(meta, [
                f"pipe.load_lora_weights(\"{export_ref(meta)}\", weight_name=\"{lora}\")  # the relation LoRA",
                f"image = pipe({prompt!r}, {generation_kwargs(meta)}).images[0]"])
            text += ("\n\nThe LoRA alone, in plain diffusers (without its image branch: see below):\n\n" + alone)
        limits = ["The backbone's own weights."]
        if lora:
            limits.append(f"`{lora}` alone is not the whole model: it was trained on top of the image-prompt "
                          f"branch (`{branch}`, MS-Diffusion's layout), without which it does not reproduce "
                          "the samples; `relgen.load` installs both.")
        else:
            limits.append(f"No relation LoRA: this is MS-Diffusion's image branch (`{branch}`) alone.")
        limits.append(f"The CLIP image encoder, unless it is the folder `{ENCODER_DIR}/` here: `{SPEC_FILE}` "
                      "names it.")
        if kohya:
            limits.append(f"`{kohya}` is the same LoRA in kohya's key layout (lora_unet_..., alpha per module) "
                          "for kohya sd-scripts and the WebUIs.")
        return text, limits

    @classmethod
    def load_artifact(cls, export_dir: Path, meta: dict) -> RelationBoothArtifact:
        return RelationBoothArtifact.from_export(Path(export_dir), meta)

    def live_artifact(self) -> RelationBoothArtifact:
        return RelationBoothArtifact(self.branch, self.generation_defaults(), self.samples(),
                                     live_unet=self.backbone.unet)

    def generation_defaults(self) -> dict:
        """What generation uses unless told otherwise (written to the export's ``image_branch.json``).

        ``local_tokens_inference`` is resolved here: unset, the local tokens are on exactly when a
        CLIPSelf checkpoint is loaded (DreamRelation inference.py); ``local_token_encoder`` names
        where they come from (``clipself``, ``image_encoder`` for the plain-encoder variant, or None).
        """
        cfg = self.cfg
        local = cfg.local_tokens_inference
        if local is None:
            local = cfg.clipself_checkpoint is not None
        source = None
        if local:
            source = "clipself" if self.branch.local_encoder is not None else "image_encoder"
        return {"negative_prompt": cfg.negative_prompt, "default_box_y": list(cfg.default_box_y),
                "local_tokens_inference": bool(local), "local_token_encoder": source}

    def samples(self) -> list[dict]:
        """The first items' prompts with their references and (uncropped) target boxes."""
        out = []
        for raw in self.data[: max(1, self.cfg.num_sample_prompts)]:
            out.append({"prompt": raw.prompt, "images": [str(p) for p in raw.concept_images],
                        "phrases": list(raw.entities), "boxes": [list(map(float, b)) for b in raw.boxes]})
        return out

    def sample_prompts(self) -> list[str]:
        if self.cfg.sample_prompts:
            return list(self.cfg.sample_prompts)
        return [s["prompt"] for s in self.samples()]


# ------------------------------------------------------------------------------------------
# config checks, LoRA


def add_lora(unet, cfg: RelationBoothConfig) -> dict[str, torch.nn.Parameter]:
    """peft LoRA on the configured attn2 projections (DreamRelation train.py); returns its parameters."""
    from peft import LoraConfig

    lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.lora_alpha, init_lora_weights=cfg.lora_init,
                      target_modules=list(cfg.lora_targets))
    with torch.random.fork_rng(devices=[unet.device] if unet.device.type == "cuda" else []):
        torch.manual_seed(cfg.lora_seed)
        unet.add_adapter(lora, adapter_name=LORA_ADAPTER)
    params = {n: p for n, p in unet.named_parameters() if "lora_" in n}
    if not params:
        raise ConfigError(f"method.lora_targets={list(cfg.lora_targets)} matched no UNet module")
    for p in params.values():
        p.requires_grad_(True)
    return params


def save_lora(unet, out_dir: Path, sdxl: bool, weight_name: str) -> Path:
    """Write ``out_dir/weight_name`` (diffusers format, with the adapter's metadata).

    diffusers' ``load_lora_weights(out_dir, weight_name=weight_name)`` reads it under any name
    (without ``weight_name`` it looks for ``pytorch_lora_weights.safetensors`` only).
    """
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet, adapter_name=LORA_ADAPTER))
    # sets (target_modules) are written sorted so that the same weights give the same bytes
    metadata = {k: sorted(v) if isinstance(v, set) else v for k, v in unet.peft_config[LORA_ADAPTER].to_dict().items()}
    pipeline_cls = StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline
    pipeline_cls.save_lora_weights(str(out_dir), unet_lora_layers=layers, safe_serialization=True,
                                   weight_name=weight_name, unet_lora_adapter_metadata=metadata)
    return Path(out_dir) / weight_name


def save_kohya_lora(unet, path: Path) -> Path:
    """The LoRA in kohya's format (``lora_unet_*`` keys with ``alpha``), via diffusers' converter."""
    from diffusers.utils import convert_state_dict_to_kohya
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    peft_state = get_peft_model_state_dict(unet, adapter_name=LORA_ADAPTER)
    # the "unet." prefix becomes kohya's "lora_unet_"
    state = convert_state_dict_to_kohya({f"unet.{k}": v for k, v in peft_state.items()})
    alpha = float(unet.peft_config[LORA_ADAPTER].lora_alpha)
    for key in state:
        if key.endswith(".alpha"):  # the converter writes the rank; kohya scales by alpha / rank
            state[key] = torch.tensor(alpha)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def calibration_plan(cfg: RelationBoothConfig, data: list) -> tuple[bool, str]:
    """Whether the predicate calibration loss runs on ``data``, and why.

    DreamRelation train.py locates every item's predicate tokens, and crashes on items without
    one (its released ``shake`` data); here ``method.calibration`` unset turns the loss off for
    such data, ``true`` demands a predicate in every item, ``false`` turns it off.

    Raises:
        DataError: ``method.calibration=true`` and an item has no predicate.
    """
    if cfg.calibration is False:
        return False, "method.calibration=false"
    missing = [item for item in data if item.predicate is None]
    if not missing:
        return True, "every item has a predicate"
    first = missing[0]
    where = f"{Path(first.motion_image).parents[2] / 'prompts.json'}: item '{first.id}'"
    if cfg.calibration is True:
        raise DataError(f"{where} has no 'predicate' but method.calibration=true needs one in every item "
                        f"({len(missing)} of {len(data)} lack it); add e.g. \"predicate\": [\"hugging\"] or set "
                        "method.calibration=false")
    return False, (f"{len(missing)} of {len(data)} items have no 'predicate' (first: {where}); add one to every "
                   "item to train with it")


#: ``method.cal_layer_rule`` values: see :func:`calibration_query_limit`.
CAL_LAYER_RULES = ("absolute", "relative")


def calibration_query_limit(cfg: RelationBoothConfig, latent_side: int) -> int:
    """The most queries a cross-attention layer may have to enter the calibration loss.

    ``absolute``: ``cfg.cal_max_queries`` (DreamRelation train.py records the layers with at most
    32 x 32 queries). ``relative``: ``s²`` with ``s = floor(cfg.cal_max_side_fraction x latent_side)``,
    the same layers at SDXL's 1024 px (latent 128, ``s = 32``) and a usable choice on small models.
    """
    if cfg.cal_layer_rule == "absolute":
        return int(cfg.cal_max_queries)
    if cfg.cal_layer_rule == "relative":
        side = math.floor(cfg.cal_max_side_fraction * latent_side + 1e-9)
        return side * side
    raise ConfigError(f"method.cal_layer_rule='{cfg.cal_layer_rule}' is not known; use one of "
                      f"{', '.join(CAL_LAYER_RULES)}")


def cross_attention_sides(unet, latent_side: int) -> dict[str, int]:
    """Query-grid side of every cross-attention processor, from its block's depth in the UNet."""
    levels = len(unet.config.block_out_channels)
    sides = {}
    for name in unet.attn_processors:
        if not name.endswith("attn2.processor"):
            continue
        if name.startswith("mid_block"):
            depth = levels - 1
        else:
            match = re.match(r"(down|up)_blocks\.(\d+)\.", name)
            if match is None:
                continue
            i = int(match.group(2))
            depth = i if match.group(1) == "down" else levels - 1 - i
        sides[name] = max(1, latent_side // 2 ** depth)
    return sides


# ------------------------------------------------------------------------------------------
# data preparation (once, at setup)


def _check_item(item) -> None:
    n = len(item.entities)
    for name, value in (("motion_keypoints", item.motion_keypoints), ("concept_keypoints", item.concept_keypoints)):
        if not isinstance(value, torch.Tensor) or value.dim() != 3 or tuple(value.shape[::2]) != (n, 2):
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise DataError(f"item '{item.id}': {name} has shape {shape}, expected ({n}, K, 2) for {n} entities")
    if item.motion_keypoints.shape != item.concept_keypoints.shape:
        raise DataError(f"item '{item.id}': motion keypoints {tuple(item.motion_keypoints.shape)} and concept "
                        f"keypoints {tuple(item.concept_keypoints.shape)} must have the same shape")
    if len(item.concept_images) != n or len(item.mask_paths) != n:
        raise DataError(f"item '{item.id}': needs one reference image and one mask per entity ({n})")


def _load_masks(paths) -> torch.Tensor:
    from PIL import Image

    masks = []
    for path in paths:
        with Image.open(path) as image:
            masks.append(torch.from_numpy((np.asarray(image.convert("L")) > 0).astype(np.float32)))
    return torch.stack(masks)


def _pixels(path) -> torch.Tensor:
    from relgen.data.images import open_rgb

    array = np.asarray(open_rgb(path), dtype=np.float32)
    return torch.from_numpy(array / 127.5 - 1.0).permute(2, 0, 1).contiguous()


def draw_crops(item, cfg: RelationBoothConfig, resolution: int, mask_size: int,
               generator: torch.Generator) -> list:
    """``cfg.num_crops`` random resize-crops of the item's target image (duplicates dropped)."""
    from relgen.data.transforms import boxes_from_masks, random_resize_crop

    image = _pixels(item.motion_image)
    masks = _load_masks(item.mask_paths)
    if tuple(masks.shape[-2:]) != tuple(image.shape[-2:]):
        raise DataError(f"item '{item.id}': masks are {tuple(masks.shape[-2:])} but the motion image is "
                        f"{tuple(image.shape[-2:])}")
    # On square images DreamRelation's RandomResizeCrop is the identity up to one pixel (it fits the
    # image into 1023 or 1024 px on the canvas); that shift, 1/8 of a latent cell at 1024 px, is not
    # reproduced: a square item keeps one exact crop, its boxes and keypoints unmoved.
    crops, seen = [], set()
    for _ in range(cfg.num_crops):
        # DreamRelation train.py: RandomResizeCrop(resolution, crop_p) on the target image and its masks
        res = random_resize_crop(image, masks, item.motion_keypoints, resolution, generator, crop_p=cfg.crop_p,
                                 scale=tuple(cfg.crop_scale), mask_size=mask_size)
        digest = hashlib.sha256(res.image.numpy().tobytes()).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        # DreamRelation's released mask2bbox: boxes of the masks on the latent-size grid (128 at
        # 1024 px) with the far edge at the last inside index (method.box_far_edge)
        boxes = boxes_from_masks(res.masks, far_edge=cfg.box_far_edge)
        crops.append((digest, res.image, (res.masks > 0).float(), res.keypoints, boxes))
    return crops


@torch.no_grad()
def encode_crops(backbone, crops: list, resolution: int) -> torch.Tensor:
    """VAE posteriors ``[k, 2C, h, w]`` of crop pixels, cached on disk by content and VAE identity."""
    from relgen.backbones.base import cache_root
    from relgen.data.cache import TensorCache, cache_key

    cache = TensorCache(cache_root(backbone.cache_dir) / "latents")
    out = []
    for digest, pixels, *_ in crops:
        key = cache_key(digest, resolution, CROP_POLICY, backbone.identity, "vae")
        hit = cache.get(key)
        if hit is None:
            hit = {"dist": backbone.encode_latent_dist(pixels[None])[0].cpu()}
            cache.put(key, hit)
        out.append(hit["dist"])
    return torch.stack(out)


@torch.no_grad()
def prepare_items(raw_items: list, backbone, branch, cfg: RelationBoothConfig, resolution: int,
                  spans: bool = True) -> list[PreparedItem]:
    """Cache every frozen input of every item (see :class:`PreparedItem`).

    ``spans``: locate each item's predicate tokens (only the calibration loss reads them; without
    it an item needs no predicate and its span is ``(0, 0)``).
    """
    from relgen.data.latents import latent_dists
    from relgen.data.readers import predicate_token_span

    mask_size = resolution // backbone.vae_scale
    generator = torch.Generator().manual_seed(cfg.crop_seed)
    slot0 = backbone.slots[0]
    dev = backbone.device
    prepared = []
    for item in raw_items:
        _check_item(item)
        span = (0, 0)
        if spans:
            try:
                span = predicate_token_span(slot0.tokenizer, item.prompt, item.predicate)
            except DataError as exc:
                raise DataError(f"item '{item.id}': {exc}") from exc
        cond = backbone.encode_prompts([item.prompt])
        phrases = phrase_embeddings(slot0.tokenizer, slot0.encoder, item.entities)
        features = branch.image_features(item.concept_images, local=cfg.local_tokens_train)
        ref_dists = latent_dists(backbone, list(item.concept_images), resolution)
        crops = draw_crops(item, cfg, resolution, mask_size, generator)
        crop_dists = encode_crops(backbone, crops, resolution)
        ehs = []
        for _, _, _, _, boxes in crops:
            tokens = branch.image_tokens(features, phrases, boxes)  # [1, T_img, C]
            ehs.append(torch.cat([cond.hidden.float(), tokens.to(cond.hidden.device).float()], dim=1)[0])
        prepared.append(PreparedItem(
            id=item.id, prompt=item.prompt, entities=list(item.entities),
            concept_images=list(item.concept_images), span=span,
            pooled=None if cond.pooled is None else cond.pooled[0].float().to(dev),
            phrase_embeds=phrases.to(dev), features=features.to(dev),
            ref_dists=ref_dists.to(dev), ref_keypoints=item.concept_keypoints.float().to(dev),
            crop_dists=crop_dists.to(dev), crop_masks=torch.stack([c[2] for c in crops]).to(dev),
            crop_keypoints=torch.stack([c[3] for c in crops]).to(dev),
            crop_boxes=torch.stack([c[4] for c in crops]).to(dev), crop_ehs=torch.stack(ehs).to(dev)))
    return prepared

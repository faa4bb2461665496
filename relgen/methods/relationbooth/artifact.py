"""RelationBooth's exported artifact and generation inputs.

Files in ``export/`` (``<relation>``: ``method.relation_name``, else the items' shared predicate;
``relgen.json`` records each name under its role, see :func:`export_names`):

* ``relationbooth-<relation>-lora.safetensors``: the attn2 LoRA in diffusers format
  (``unet.``-prefixed keys, adapter metadata), loadable with
  ``pipe.load_lora_weights(export_dir, weight_name=...)`` — also DreamRelation's own released LoRA
  layout, so an official LoRA can be dropped in.
* ``relationbooth-<relation>-image-branch.safetensors``: the image branch in MS-Diffusion's
  layout, flattened (``image_proj.*`` resampler, ``ms_adapter.{i}.to_{k,v}_ip.weight`` with ``i``
  in ``unet.attn_processors`` order, ``dummy_image_tokens``).
* ``image_branch.json``: the branch sizes, image-encoder source and generation defaults.
* ``image_encoder/``: the CLIP vision model when it is a tiny random one (otherwise the JSON
  names its hub id or folder).
* optionally ``relationbooth-<relation>-lora-kohya.safetensors``.

Exports that record no names have the old fixed ones (``pytorch_lora_weights.safetensors``,
``pytorch_lora_weights_kohya.safetensors``, ``image_branch.safetensors``); they still load.

Generation (DreamRelation inference.py): the prompt embeddings are followed by the image tokens
of the reference images; the negative branch gets zero image tokens and zero boxes, and the
boxes are passed as ``cross_attention_kwargs={"boxes": [negative, positive]}`` to match the
``[negative, positive]`` order in which diffusers' SD and SDXL pipelines batch classifier-free
guidance.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from relgen.errors import DataError, RelgenError
from relgen.methods.relationbooth.config import RelationBoothConfig
from relgen.names import export_file_name, exported_file
from relgen.plugin import Artifact
from relgen.tensorfile import load_tensors

log = logging.getLogger("relgen")

# the files' roles in relgen.json's "files"
LORA_ROLE, KOHYA_ROLE, BRANCH_ROLE = "lora", "lora_kohya", "image_branch"
SPEC_ROLE, ENCODER_ROLE = "image_branch_spec", "image_encoder"
SPEC_FILE = "image_branch.json"
ENCODER_DIR = "image_encoder"
# The fixed names of exports written before the file names carried the relation (read, never written).
LEGACY_LORA_FILE = "pytorch_lora_weights.safetensors"
LEGACY_KOHYA_FILE = "pytorch_lora_weights_kohya.safetensors"
LEGACY_BRANCH_FILE = "image_branch.safetensors"
ADAPTER_NAME = RelationBoothConfig.name
DEFAULT_RELATION_NAME = "relation"  # when neither method.relation_name nor a shared predicate names it


def export_names(relation: str, method: str = RelationBoothConfig.name) -> dict[str, str]:
    """The weight files' names for ``relation``, by role: ``relationbooth-<relation>-lora.safetensors``,
    ``...-lora-kohya.safetensors`` and ``...-image-branch.safetensors`` (``relation`` made portable)."""

    def name(part: str) -> str:
        return export_file_name(method, relation, part, fallback=DEFAULT_RELATION_NAME)

    return {LORA_ROLE: name("lora"), KOHYA_ROLE: name("lora-kohya"), BRANCH_ROLE: name("image-branch")}


_warned_default_layout = False


def default_layout(n: int, y_range: Sequence[float]) -> list[list[float]]:
    """Side-by-side boxes: entity ``i`` of ``n`` gets column ``[i/n, (i+1)/n]`` between ``y_range``.

    For two entities and ``y_range=(0.2, 0.8)``: ``[0, 0.2, 0.5, 0.8]`` and ``[0.5, 0.2, 1, 0.8]``
    (DreamRelation's example layouts put the two entities left and right at mid height).
    """
    y0, y1 = float(y_range[0]), float(y_range[1])
    return [[i / n, y0, (i + 1) / n, y1] for i in range(n)]


def _warn_default_layout(boxes: list[list[float]]) -> None:
    global _warned_default_layout
    if not _warned_default_layout:
        _warned_default_layout = True
        log.warning("relationbooth: no boxes given; using the default left/right layout %s "
                    "(pass method_options.boxes=[[x0,y0,x1,y1],...] to place the entities)", boxes)


class RelationBoothArtifact(Artifact):
    """A LoRA plus an image branch, applied to a diffusers SD/SDXL pipeline.

    Args:
        branch: the :class:`~relgen.methods.relationbooth.branch.ImageBranch`.
        generation: ``negative_prompt``, ``default_box_y``, ``local_tokens_inference``.
        samples: ``[{"prompt", "images", "phrases", "boxes"}]`` used when a call gives no references.
        lora_file: diffusers-format LoRA file (ours or DreamRelation's released one).
        adapter_file: image-branch weights in MS-Diffusion's layout (``ms_adapter.bin`` or our
            flat ``relationbooth-<relation>-image-branch.safetensors``); its processors are loaded
            by :meth:`apply`.
        live_unet: the UNet that already carries the processors and LoRA (training-time artifacts).
    """

    accepts_negative_prompt = True  # pipeline_inputs builds the negative embeddings itself

    method = RelationBoothConfig.name

    def __init__(self, branch, generation: dict, samples: list[dict], lora_file: Optional[Path] = None,
                 adapter_file: Optional[Path] = None, live_unet=None) -> None:
        self.branch = branch
        self.generation = dict(generation)
        self.samples = list(samples)
        self.lora_file = Path(lora_file) if lora_file is not None else None
        self.adapter_file = Path(adapter_file) if adapter_file is not None else None
        self.live_unet = live_unet

    # -- loading ------------------------------------------------------------------------------
    @classmethod
    def from_export(cls, export_dir: Path, meta: Optional[dict] = None) -> "RelationBoothArtifact":
        """Read a relgen export, its files by the names ``relgen.json`` records (``meta`` None: read
        from the folder); exports that record none have the old fixed names."""
        from relgen.methods.relationbooth.branch import (BranchSpec, branch_from_spec, load_image_encoder,
                                                         load_local_encoder)

        export_dir = Path(export_dir)
        spec_path = exported_file(export_dir, meta, SPEC_ROLE, SPEC_FILE)
        branch_path = exported_file(export_dir, meta, BRANCH_ROLE, LEGACY_BRANCH_FILE)
        for path in (spec_path, branch_path):
            if not path.is_file():
                raise RelgenError(f"{path}: not found; was the relationbooth run finished?")
        info = json.loads(spec_path.read_text())
        # an imported MS-Diffusion branch alone has no LoRA ("lora": null); a trained run always has one
        lora_file = None
        if info.get("lora", {}) is not None:
            lora_file = exported_file(export_dir, meta, LORA_ROLE, LEGACY_LORA_FILE)
            if not lora_file.is_file():
                raise RelgenError(f"{lora_file}: not found; was the relationbooth run finished?")
        spec = BranchSpec.from_json(info["branch"])
        encoder_dir = exported_file(export_dir, meta, ENCODER_ROLE, ENCODER_DIR, required=False)
        if encoder_dir is not None and encoder_dir.is_dir():
            encoder = load_image_encoder(str(encoder_dir))
        else:
            encoder = load_image_encoder(spec.image_encoder, spec.image_encoder_config, spec.seed)
        local = load_local_encoder(encoder, spec.clipself_checkpoint) if spec.clipself_checkpoint else None
        branch = branch_from_spec(spec, encoder, local)
        flat = load_tensors(branch_path, "the exported image branch")
        if lora_file is not None:
            load_tensors(lora_file, "the exported LoRA")  # refused here when damaged or not finite
        resampler = {k[len("image_proj."):]: v for k, v in flat.items() if k.startswith("image_proj.")}
        try:
            branch.resampler.load_state_dict(resampler, strict=True)
        except RuntimeError as exc:
            raise RelgenError(f"{branch_path}: resampler weights do not fit {spec_path.name} "
                              f"({_first_detail(exc)})") from exc
        with torch.no_grad():
            branch.dummy_tokens.copy_(flat["dummy_image_tokens"])
        return cls(branch, info.get("generation", {}), info.get("samples", []), lora_file=lora_file,
                   adapter_file=branch_path)

    @classmethod
    def from_official(cls, lora: str | Path, ms_adapter: str | Path, image_encoder: Optional[str] = None,
                      clipself_checkpoint: Optional[str | Path] = None, heads: Optional[int] = None,
                      scale: Optional[float] = None, generation: Optional[dict] = None) -> "RelationBoothArtifact":
        """DreamRelation's released weights: its LoRA, MS-Diffusion's ``ms_adapter.bin``, the CLIP encoders.

        The resampler's sizes are read from the adapter's shapes (``heads`` splits the attention
        width, 20 x 64 in the release); the phrase width is the adapter's grounding input minus
        the Fourier part, and the local image size is 4 x the encoder's (896 for ViT-bigG-14).

        Args:
            lora: DreamRelation's ``pytorch_lora_weights.safetensors`` (diffusers format, any name).
            ms_adapter: MS-Diffusion's ``ms_adapter.bin``.
            image_encoder: CLIP vision model hub id or folder (default: laion's ViT-bigG-14).
            clipself_checkpoint: CLIPSelf ``epoch_6.pt`` for the local tokens (None: no local encoder).
            heads: attention heads of the resampler (default: the released 20).
            scale: image-attention weight gamma (default: the released 0.6).
            generation: overrides of ``negative_prompt``, ``default_box_y``, ``local_tokens_inference``.
        """
        from relgen.methods.relationbooth.branch import (
            BranchSpec,
            branch_from_spec,
            load_image_encoder,
            load_local_encoder,
        )
        from relgen.methods.relationbooth.config import RELEASED_IMAGE_ENCODER, RelationBoothConfig
        from relgen.methods.relationbooth.convert import check_adapter_layout, read_adapter_file

        lora, ms_adapter = Path(lora), Path(ms_adapter)
        for path in (lora, ms_adapter):
            if not path.is_file():
                raise RelgenError(f"{path}: not found")
        raw = read_adapter_file(ms_adapter)  # its processors are matched to a UNet in apply()
        check_adapter_layout(raw, str(ms_adapter))
        resampler = {(k[len("resampler."):] if k.startswith("resampler.") else k): v
                     for k, v in raw["image_proj"].items()}
        dummy = raw["dummy_image_tokens"]
        defaults = RelationBoothConfig()
        image_encoder = image_encoder or RELEASED_IMAGE_ENCODER
        heads = heads or defaults.resampler_heads
        scale = defaults.scale if scale is None else scale
        spec_resampler = resampler_sizes_from_state_dict(resampler, heads, defaults.fourier_freqs,
                                                         defaults.fourier_temperature, str(ms_adapter))
        encoder = load_image_encoder(str(image_encoder))
        if spec_resampler["embedding_dim"] != encoder.config.hidden_size:
            raise RelgenError(f"{ms_adapter}: the resampler takes {spec_resampler['embedding_dim']}-wide image tokens "
                              f"but {image_encoder} is {encoder.config.hidden_size}-wide")
        local = load_local_encoder(encoder, str(clipself_checkpoint)) if clipself_checkpoint else None
        size = int(encoder.config.image_size)
        spec = BranchSpec(resampler=spec_resampler, num_dummy_tokens=int(dummy.shape[1]),
                          text_tokens=77, scale=float(scale), mask_bias=defaults.mask_bias,
                          image_encoder=str(image_encoder),
                          clipself_checkpoint=str(clipself_checkpoint) if clipself_checkpoint else None,
                          image_size=size, local_image_size=4 * size, local_grid=defaults.local_grid,
                          reference_resize=defaults.reference_resize, clip_mean=list(defaults.clip_mean),
                          clip_std=list(defaults.clip_std))
        branch = branch_from_spec(spec, encoder, local)
        try:
            branch.resampler.load_state_dict(resampler, strict=True)
        except RuntimeError as exc:  # a key whose shape does not follow from the others
            raise RelgenError(f"{ms_adapter}: its image_proj (resampler) weights do not fit together "
                              f"({_first_detail(exc)})") from exc
        if dummy.shape[-1] != spec_resampler["output_dim"]:
            raise RelgenError(f"{ms_adapter}: 'dummy_image_tokens' is {dummy.shape[-1]}-wide but the resampler's "
                              f"image tokens are {spec_resampler['output_dim']}-wide")
        with torch.no_grad():
            branch.dummy_tokens.copy_(dummy)
        gen = {"negative_prompt": defaults.negative_prompt, "default_box_y": list(defaults.default_box_y),
               "local_tokens_inference": local is not None,
               "local_token_encoder": "clipself" if local is not None else None, **(generation or {})}
        return cls(branch, gen, [], lora_file=lora, adapter_file=ms_adapter)

    # -- applying -----------------------------------------------------------------------------
    def apply(self, pipe) -> None:
        """Install the masked image attention and the LoRA into ``pipe.unet`` (idempotent)."""
        from relgen.methods.relationbooth.convert import load_ms_adapter

        unet = pipe.unet
        if self.live_unet is not None and unet is self.live_unet:
            return
        if self.adapter_file is None:
            raise RelgenError("this relationbooth artifact is bound to its training UNet; export the run and "
                              "load it with relgen.load(run_dir) to apply it to another pipeline")
        self.branch.adapter = load_ms_adapter(self.adapter_file, list(unet.attn_processors))
        self.branch.adapter_source = str(self.adapter_file)
        self.branch.install(unet)
        if self.lora_file is not None and ADAPTER_NAME not in (getattr(unet, "peft_config", None) or {}):
            # DreamRelation's LoRA and ours are diffusers-format files with unet.-prefixed keys
            try:
                pipe.load_lora_weights(str(self.lora_file.parent), weight_name=self.lora_file.name,
                                       adapter_name=ADAPTER_NAME)
            except (RuntimeError, ValueError, KeyError) as exc:  # diffusers/peft: keys or shapes do not fit
                raise RelgenError(f"{self.lora_file}: the LoRA does not fit this pipeline's UNet "
                                  f"({_first_detail(exc)}); "
                                  "use the backbone it was trained on") from exc
        self.branch.to(unet.device)
        self.branch.cast_encoders(unet.dtype)

    # -- generation ---------------------------------------------------------------------------
    def _references(self, prompts: list[str], images, phrases, boxes):
        sample = None
        if images is None:
            sample = next((s for s in self.samples if s["prompt"] == prompts[0]), None)
            if sample is None and self.samples and all(Path(p).is_file() for p in self.samples[0]["images"]):
                sample = self.samples[0]
                log.info("relationbooth: no reference images given; using those of '%s'", sample["prompt"])
            if sample is None:
                raise RelgenError("relationbooth needs reference images: pass method_options.images=[a.png,b.png] "
                                  "and method_options.phrases=[cat,dog] (one entity name per image)")
            images = sample["images"]
            phrases = sample["phrases"] if phrases is None else phrases
            boxes = sample["boxes"] if boxes is None else boxes
        images = [str(p) for p in ([images] if isinstance(images, (str, Path)) else images)]
        if phrases is None:
            raise RelgenError("method_options.phrases is missing: give one entity name per reference image, "
                              f"e.g. phrases=[cat,dog] for {len(images)} images")
        phrases = [str(p) for p in ([phrases] if isinstance(phrases, str) else phrases)]
        if len(phrases) != len(images):
            raise RelgenError(f"method_options: {len(images)} reference images but {len(phrases)} phrases; "
                              "give one entity name per image")
        if boxes is None:
            boxes = default_layout(len(images), self.generation.get("default_box_y", (0.2, 0.8)))
            _warn_default_layout(boxes)
        boxes = [list(b) for b in (boxes.tolist() if isinstance(boxes, torch.Tensor) else boxes)]
        from relgen.data.readers import validate_boxes

        validate_boxes(boxes, "method_options.boxes")
        if len(boxes) != len(images):
            raise DataError(f"method_options.boxes: {len(boxes)} boxes for {len(images)} reference images; "
                            "give one normalised [x0, y0, x1, y1] box per image")
        return images, phrases, torch.tensor(boxes, dtype=torch.float32)

    @torch.no_grad()
    def image_tokens(self, pipe, images, phrases, boxes: torch.Tensor, local: bool) -> torch.Tensor:
        """``[1, num_dummy + n * tokens_per_entity, C]`` for the references (uses the pipe's first text encoder)."""
        from relgen.methods.relationbooth.branch import phrase_embeddings

        feats = self.branch.image_features(images, local=local)
        phrase = phrase_embeddings(pipe.tokenizer, pipe.text_encoder, phrases)
        return self.branch.image_tokens(feats, phrase, boxes)

    @torch.no_grad()
    def pipeline_inputs(self, pipe, prompts: list[str], images=None, phrases=None, boxes=None,
                        scale: Optional[float] = None, negative_prompt: Optional[str] = None,
                        local_tokens: Optional[bool] = None, **unknown: Any) -> dict:
        """Keyword arguments for ``pipe(...)``: prompt embeddings with image tokens and the boxes.

        Args:
            pipe: a diffusers SD or SDXL pipeline this artifact was applied to.
            prompts: B prompts.
            images: one reference image path per entity (default: the training item whose
                prompt matches, else the first training item's references).
            phrases: one entity name per image, in image order.
            boxes: ``[[x0, y0, x1, y1], ...]`` normalised; default: a left/right layout.
            scale: image-attention weight gamma (default: the trained one).
            negative_prompt: default: DreamRelation's released negative prompt.
            local_tokens: append the local tokens (default: the export's ``local_tokens_inference``;
                from CLIPSelf when loaded, else from the image encoder itself).

        Returns:
            ``prompt_embeds`` ``[B, 77 + T_img, C]``, ``negative_prompt_embeds`` (negative prompt
            text and zero image tokens), SDXL pooled embeddings, and ``cross_attention_kwargs``
            with ``boxes`` ``[2B, n, 4]`` (zeros for the negative half).
        """
        from relgen.methods.relationbooth.attention import set_image_attention_scale

        if unknown:
            raise RelgenError(f"relationbooth: unknown method_options {sorted(unknown)}; known: images, phrases, "
                              "boxes, scale, negative_prompt, local_tokens")
        prompts = list(prompts)
        b = len(prompts)
        images, phrases, box_tensor = self._references(prompts, images, phrases, boxes)
        if local_tokens is None:
            # an export records its choice; DreamRelation inference.py: local tokens only with CLIPSelf
            local_tokens = bool(self.generation.get("local_tokens_inference", self.branch.local_encoder is not None))
        set_image_attention_scale(pipe.unet, float(self.branch.spec.scale if scale is None else scale))
        negative = self.generation.get("negative_prompt", "") if negative_prompt is None else negative_prompt
        device = pipe._execution_device
        out: dict[str, Any] = {}
        if getattr(pipe, "text_encoder_2", None) is not None:
            pe, npe, pooled, npooled = pipe.encode_prompt(prompt=prompts, device=device, num_images_per_prompt=1,
                                                          do_classifier_free_guidance=True,
                                                          negative_prompt=[negative] * b)
            out["pooled_prompt_embeds"], out["negative_pooled_prompt_embeds"] = pooled, npooled
        else:
            pe, npe = pipe.encode_prompt(prompts, device, 1, True, negative_prompt=[negative] * b)
        tokens = self.image_tokens(pipe, images, phrases, box_tensor, local_tokens)
        tokens = tokens.to(pe.device, pe.dtype).expand(b, -1, -1)
        # DreamRelation pipeline: image tokens after the text; zero image tokens and boxes for the negative
        out["prompt_embeds"] = torch.cat([pe, tokens], dim=1)
        out["negative_prompt_embeds"] = torch.cat([npe, torch.zeros_like(tokens)], dim=1)
        bx = box_tensor.to(pe.device)[None].expand(b, -1, -1)
        out["cross_attention_kwargs"] = {"boxes": torch.cat([torch.zeros_like(bx), bx], dim=0)}
        return out

    def sample_prompts(self) -> list[str]:
        return [s["prompt"] for s in self.samples]


def _first_detail(exc: Exception) -> str:
    """The first informative line of a ``load_state_dict`` error (its first line only names the module)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return lines[1] if len(lines) > 1 and lines[0].endswith(":") else lines[0]


def resampler_sizes_from_state_dict(state: dict, heads: int, fourier_freqs: int, fourier_temperature: float,
                                    source: str) -> dict:
    """:class:`~relgen.methods.relationbooth.resampler.ResamplerConfig` fields read off a resampler state dict."""
    try:
        dim, embedding_dim = state["proj_in.weight"].shape
        output_dim = state["proj_out.weight"].shape[0]
        depth = len({k.split(".")[1] for k in state if k.startswith("layers.")})
        inner = state["layers.0.0.to_q.weight"].shape[0]
        ff_mult = state["layers.0.1.1.weight"].shape[0] // dim
        num_queries = state["latent_proj.2.weight"].shape[0] // dim
        grounding = state["latent_proj.0.weight"].shape[1]
    except KeyError as exc:
        raise RelgenError(f"{source}: not a grounding resampler (no image_proj key {exc})") from exc
    if inner % heads:
        raise RelgenError(f"{source}: attention width {inner} is not divisible by heads={heads}")
    return dict(dim=int(dim), depth=int(depth), dim_head=int(inner // heads), heads=int(heads),
                num_queries=int(num_queries), embedding_dim=int(embedding_dim), output_dim=int(output_dim),
                ff_mult=int(ff_mult), phrase_embeddings_dim=int(grounding - fourier_freqs * 2 * 4),
                fourier_freqs=fourier_freqs, fourier_temperature=float(fourier_temperature))

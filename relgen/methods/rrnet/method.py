"""RRNet: relation rectification with a heterogeneous graph attention network.

One network is trained per relation folder (A, R, B and the object-swapped prompts ARB and
BRA). For each prompt it builds a small graph (:mod:`relgen.methods.rrnet.graph`) whose
``eot`` outputs are added to the text conditioning at the first EOT position; the diffusion
model stays frozen.

Training follows RRNet's released ``train.py``: each epoch draws one image from each of A, B,
ARB and BRA and makes five optimizer steps, one per prompt pair (ARB/BRA, ARB/A, ARB/B,
BRA/B, BRA/A). Each pair step denoises the pair's two images with their own prompts
(positive) and with the prompts swapped onto the other image (negative), with one noise
tensor and one timestep for the pair, and minimises ``10·L_pos − 2·L_neg``.

Everything the frozen text encoder and VAE produce is computed once at setup: the prompts'
hidden states, EOT positions and EOT outputs, the object sentences' EOT outputs, the word
token rows, and the exemplar images' latent distributions.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from relgen.backbones.base import TextCond
from relgen.card import export_json, generation_kwargs, load_run_line, program
from relgen.errors import ConfigError
from relgen.methods.rrnet.artifact import (
    FORMAT,
    FORMAT_VERSION,
    LEGACY_GAT_FILE,
    NETWORK_ROLE,
    RELATION_FILE,
    RELATION_ROLE,
    RRNetArtifact,
    dgl_device,
    first_token_rows,
    gat_file_name,
    object_sentence,
    rectify,
)
from relgen.methods.rrnet.config import RRNetConfig
from relgen.methods.rrnet.importer import OFFICIAL_WORDS, official_exporter
from relgen.names import recorded_name
from relgen.plugin import Method, StepContext, StepOutput

log = logging.getLogger("relgen")

#: Rows of the cached text features: the two relation prompts, then A's and B's object sentences.
PROMPT_KEYS = ("ARB", "BRA", "A", "B")
#: Image folders drawn once per epoch, in this order.
DRAW_KEYS = ("A", "B", "ARB", "BRA")
#: The five pair steps of an epoch, in the order of RRNet's released train.py.
PAIRS = (("ARB", "BRA"), ("ARB", "A"), ("ARB", "B"), ("BRA", "B"), ("BRA", "A"))
#: Where each prompt's delta comes from: (graph, eot node) of the batched [ARB graph, BRA graph].
#: Relation prompts use eot1 of their own graph; A's object sentence uses eot0 of the ARB
#: graph and B's uses eot0 of the BRA graph, as RRNet's released train.py.
DELTA_SOURCE = {"ARB": (0, 1), "BRA": (1, 1), "A": (0, 0), "B": (1, 0)}


@dataclass
class RelationText:
    """Frozen text features of one relation, computed once.

    Attributes:
        prompts: ``[ARB, BRA, object sentence of A, object sentence of B]``.
        hidden: ``(4, L, D)`` float32 conditioning of those prompts.
        pooled: ``(4, P)`` SDXL pooled embeddings, or ``None``.
        eot: ``(4,)`` first EOT position of each prompt.
        rows: ``(3, D)`` float32 first-token input-embedding rows of ``[A, R, B]`` (SDXL: both
            encoders' rows side by side).
    """

    prompts: list[str]
    hidden: Tensor
    pooled: Optional[Tensor]
    eot: Tensor
    rows: Tensor

    def eot_outputs(self) -> Tensor:
        """``(4, D)`` the conditioning at each prompt's first EOT position."""
        return self.hidden[torch.arange(self.hidden.shape[0], device=self.hidden.device), self.eot]


def encode_relation_text(backbone, A: str, R: str, B: str, ARB: str, BRA: str,
                         template: str = "this is a photo of {}", use_disk_cache: bool = True) -> RelationText:
    """Run the frozen text encoder(s) once for a relation's prompts and words.

    The node features follow RRNet's released GNN.py: objects and relation = input token
    rows of each word's first sub-token; ``eot0`` = EOT output of "this is a photo of {A}"
    (the word as given, as dataset.py); ``eot1`` = the prompt's own EOT output.

    Args:
        backbone: The loaded backbone.
        A, R, B: Subject, relation and object words.
        ARB, BRA: The relation prompt and its object-swapped twin.
        template: The object sentence.
        use_disk_cache: Keep the encoder outputs in ``<cache>/text`` keyed by the backbone's
            identity and the prompts.

    Returns:
        The :class:`RelationText` on the backbone's device.
    """
    from relgen.backbones.base import cache_root
    from relgen.data.cache import TensorCache, cache_key

    prompts = [ARB, BRA, object_sentence(A, template), object_sentence(B, template)]
    rows = first_token_rows([(s.tokenizer, s.encoder) for s in backbone.slots], [A, R, B])

    def compute() -> dict[str, Tensor]:
        with torch.no_grad():
            cond = backbone.encode_text(backbone.tokenize(prompts))
        out = {"hidden": cond.hidden.float().cpu(), "eot": cond.eot.cpu()}
        if cond.pooled is not None:
            out["pooled"] = cond.pooled.float().cpu()
        return out

    if use_disk_cache:
        key = cache_key("rrnet-text", backbone.identity, str(backbone.dtype), *prompts)
        entry = TensorCache(cache_root(backbone.cache_dir) / "text").get_or_compute(key, compute)
    else:
        entry = compute()
    device = backbone.device
    pooled = entry.get("pooled")
    return RelationText(prompts, entry["hidden"].to(device), None if pooled is None else pooled.to(device),
                        entry["eot"].to(device), rows.float().to(device))


def pair_loss(pred_pos: Tensor, target_pos: Tensor, pred_neg: Tensor, target_neg: Tensor,
              pos_weight: float = 10.0, neg_weight: float = 2.0,
              neg_clamp: Optional[float] = None, t: Optional[Tensor] = None,
              weighting=None) -> tuple[Tensor, Tensor, Tensor]:
    """RRNet's pair loss ``pos_weight·L_pos − neg_weight·L_neg`` (as the released train.py).

    ``L_pos`` and ``L_neg`` are both denoising terms (the shared
    :func:`relgen.train.losses.denoising_loss`), so the loop's loss weighting, when on, weights
    each of them by the pair's timestep before they are combined (and before the clamp).

    Args:
        pred_pos, target_pos: ``(2, C, h, w)`` model output and target with each prompt on its
            own image.
        pred_neg, target_neg: The same with the images swapped (each prompt on the other's).
        pos_weight, neg_weight: 10 and 2 in the released code.
        neg_clamp: If set, ``L_neg`` is replaced by ``min(L_neg, neg_clamp)`` (the released
            code has no bound).
        t: ``(2,)`` the pair's timesteps (needed only with ``weighting``).
        weighting: the loop's ``t -> (B,)`` loss weights, or None.

    Returns:
        ``(loss, L_pos, L_neg)``; MSEs are means over all elements, ``L_neg`` unclamped.
    """
    from relgen.train.losses import denoising_loss

    loss_pos = denoising_loss(pred_pos, target_pos, t, weighting)
    loss_neg = denoising_loss(pred_neg, target_neg, t, weighting)
    neg = loss_neg if neg_clamp is None else torch.clamp(loss_neg, max=neg_clamp)
    return pos_weight * loss_pos - neg_weight * neg, loss_pos, loss_neg


class RRNet(Method):
    """RRNet on any SD 1.x/2.x/SDXL backbone (see the module docstring)."""

    config_class = RRNetConfig
    dataset_formats = ("rrnet",)
    requires = frozenset({"images", "object_images", "relation_prompts"})
    denoising_terms = ("loss_pos", "loss_neg")
    official_format = ("RRNet's gat_<R> (torch.save of the graph network); A=, R=, B= name the relation's words "
                       "(ARB=, BRA= its two prompts) so generation needs no more")
    official_words = OFFICIAL_WORDS
    own_prompt_set = "rrnet_pairs"  # the run's own object-swapped pair

    @classmethod
    def check_config(cls, cfg) -> list[str]:
        """``method.image_resample`` names a filter diffusers' ``VaeImageProcessor`` knows."""
        from diffusers.utils import PIL_INTERPOLATION

        if cfg.method.image_resample not in PIL_INTERPOLATION:
            raise ConfigError(f"method.image_resample='{cfg.method.image_resample}' is not a VaeImageProcessor "
                              f"filter; use one of {', '.join(sorted(PIL_INTERPOLATION))}")
        return []

    @classmethod
    def import_official(cls, cfg, file: Path, words: dict):
        return official_exporter(cfg, file, words)

    # -- data -------------------------------------------------------------------------------
    @classmethod
    def select_relation(cls, cfg: RRNetConfig, data: list, announce: bool = False) -> Any:
        """The relation folder named by ``method.relation`` (default: the first; ``announce``
        says so in the log when there are several)."""
        names = [rel.name for rel in data]
        if cfg.relation is None:
            if len(names) > 1 and announce:
                log.info("rrnet: the dataset holds %d relations %s; training on '%s' (choose with "
                         "method.relation=, sweep with -m method.relation=%s)", len(names), names, names[0],
                         ",".join(names))
            return data[0]
        for rel in data:
            if rel.name == cfg.relation:
                return rel
        raise ConfigError(f"method.relation='{cfg.relation}' is not a relation folder of the dataset; "
                          f"known: {', '.join(names)}")

    @classmethod
    def check_data(cls, cfg: RRNetConfig, data: list, announce: bool = True) -> None:
        """Checks that need the data but no weights (run before loading the backbone); ``announce``:
        say in the log which relation is trained when the dataset holds several."""
        cls.select_relation(cfg, data, announce=announce)
        if cfg.batch_size != 1:
            raise ConfigError(f"method.batch_size={cfg.batch_size}: RRNet trains on one prompt pair per "
                              "step; keep batch_size=1 (use grad_accum= to accumulate pairs)")
        if cfg.adjust_pooled:
            raise ConfigError("method.adjust_pooled=true is not implemented: RRNet adjusts the EOT row of "
                              "the conditioning sequence only; set adjust_pooled=false")

    def __init__(self, cfg: RRNetConfig, backbone, data) -> None:
        super().__init__(cfg, backbone, data)
        from relgen.data.latents import latent_dists
        from relgen.methods.rrnet.gnn import RelationGAT

        # run.py called it already (and said which relation); direct construction needs it too
        self.check_data(cfg, data, announce=False)
        rel = self.select_relation(cfg, data)
        self.relation = rel
        self.text = encode_relation_text(backbone, rel.A, rel.R, rel.B, rel.ARB, rel.BRA,
                                         cfg.object_template, cfg.cache_text)
        width = backbone.cond_width
        if self.text.rows.shape[1] != width:
            raise ConfigError(f"backbone {backbone.name}: token-embedding rows are {self.text.rows.shape[1]} wide "
                              f"but the conditioning is {width} wide; RRNet needs them equal")
        self.gnn_device = torch.device(cfg.gnn_device) if cfg.gnn_device else dgl_device(backbone.device)
        # Initialise from the run's seed whatever ran before (a tiny backbone built or read
        # from the cache consumes different amounts of the global generator).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(torch.initial_seed())
            self.gnn = RelationGAT(width, width, hidden=cfg.hidden_size, heads=cfg.num_heads,
                                   eot_self_loops=cfg.eot_self_loops)
        self.gnn.to(self.gnn_device).train()
        self.graph = self.build_graph(self.text)

        # Exemplar latents: every image of the four folders, encoded once (and cached on disk).
        self.resolution = cfg.resolution or backbone.resolution
        paths, self.offsets, self.counts = [], {}, {}
        for key in DRAW_KEYS:
            self.offsets[key] = len(paths)
            self.counts[key] = len(rel.images[key])
            paths.extend(rel.images[key])
        # RRNet's released dataset.py: VaeImageProcessor.preprocess(image, height=res, width=res)
        self.latent_dists = latent_dists(backbone, paths, self.resolution, resample=cfg.image_resample,
                                         loader="vae_processor")

        # Schedule position: the next pair (0..4) of the current epoch and the epoch's images.
        self.epoch = 0
        self.pair = 0
        self.draw = torch.zeros(len(DRAW_KEYS), dtype=torch.long)

    def build_graph(self, text: RelationText):
        """The batched ``[ARB graph, BRA graph]`` of ``text`` on the network's device."""
        from relgen.methods.rrnet.graph import batch_graphs, build_pair_graphs

        rows = text.rows.to(self.gnn_device)
        eot = text.eot_outputs().float().to(self.gnn_device)
        g_arb, g_bra = build_pair_graphs(rows[0], rows[2], rows[1], eot[2], eot[3], eot[0], eot[1],
                                         eot_self_loops=self.cfg.eot_self_loops)
        return batch_graphs([g_arb, g_bra])

    def relation_deltas(self, graph=None) -> Tensor:
        """``(2, 2, D)`` network outputs: ``[0] = (A's delta, ARB's delta)``, ``[1] = (B's, BRA's)``.

        The network runs in float32 under mixed precision too: DGL's message passing needs node and
        edge features of one dtype, which autocast would split (and the network is small)."""
        with torch.autocast(device_type=self.gnn_device.type, enabled=False):
            return self.gnn.eot_deltas(self.graph if graph is None else graph)

    # -- training ---------------------------------------------------------------------------
    def trainable_parameters(self) -> list[dict]:
        return [{"params": list(self.gnn.parameters())}]

    def next_batch(self, generator: torch.Generator) -> dict[str, Any]:
        """The next pair of the schedule; a new epoch first draws one image per folder."""
        if self.pair == 0:
            # One random image from each of A, B, ARB and BRA per epoch (the released dataset.sample).
            self.draw = torch.cat([torch.randint(0, self.counts[key], (1,), generator=generator)
                                   for key in DRAW_KEYS])
        first, second = PAIRS[self.pair]
        draw = dict(zip(DRAW_KEYS, self.draw.tolist()))
        batch = {"epoch": self.epoch, "pair": self.pair, "prompts": (first, second),
                 "images": (self.offsets[first] + draw[first], self.offsets[second] + draw[second])}
        self.pair += 1
        if self.pair == len(PAIRS):
            self.pair = 0
            self.epoch += 1
        return batch

    def training_step(self, batch: dict[str, Any], ctx: StepContext) -> StepOutput:
        cfg, bb, gen = self.cfg, self.backbone, ctx.generator
        first, second = batch["prompts"]
        latents = bb.sample_latents(self.latent_dists[list(batch["images"])], gen).to(bb.device)
        # One noise tensor and one timestep for the whole pair (the released train.py).
        noise = ctx.draw_noise(latents)
        t = ctx.sample_timesteps(1, gen).to(bb.device).expand(2)

        deltas = self.relation_deltas().to(bb.device)
        pair_deltas = []
        for key in (first, second):
            delta = deltas[DELTA_SOURCE[key]]
            if key in ("A", "B") and cfg.noise_weight:
                # Object-prompt deltas get noise_weight·N(0, I) in training (the released train.py).
                delta = delta + cfg.noise_weight * torch.randn(delta.shape, generator=gen).to(delta.device)
            pair_deltas.append(delta)
        rows = [PROMPT_KEYS.index(first), PROMPT_KEYS.index(second)]
        hidden = rectify(self.text.hidden[rows], self.text.eot[rows], torch.stack(pair_deltas), cfg.train_scale,
                         cfg.edit_rows)
        pooled = None if self.text.pooled is None else self.text.pooled[rows]
        cond = TextCond(hidden, pooled, self.text.eot[rows])

        dtype = bb.unet.dtype
        # Positive: each prompt denoises its own image.
        noisy = bb.add_noise(latents, noise.input, t)
        pred_pos = bb.unet_forward(noisy.to(dtype), t, cond)
        target_pos = bb.training_target(latents, noise.noise, t)
        # Negative: the same prompts on the swapped images, with the same noise and timestep.
        swapped = latents.flip(0)
        noisy_swapped = bb.add_noise(swapped, noise.input, t)
        pred_neg = bb.unet_forward(noisy_swapped.to(dtype), t, cond)
        target_neg = bb.training_target(swapped, noise.noise, t)
        loss, loss_pos, loss_neg = pair_loss(pred_pos, target_pos, pred_neg, target_neg,
                                             cfg.pos_weight, cfg.neg_weight, cfg.neg_clamp, t, ctx.weighting)

        with torch.no_grad():
            # Cosine between the rectified EOT vectors of ARB and BRA (the released ARB_BRA_sim plot).
            eot = self.text.eot_outputs()
            arb = eot[0] + cfg.train_scale * deltas[0, 1]
            bra = eot[1] + cfg.train_scale * deltas[1, 1]
            cos = F.cosine_similarity(arb.float(), bra.float(), dim=0)
        return StepOutput(loss, {"loss_pos": loss_pos.item(), "loss_neg": loss_neg.item(),
                                 "eot_cos_arb_bra": cos.item()})

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {f"gnn.{k}": v for k, v in self.gnn.state_dict().items()}
        state["schedule"] = {"epoch": self.epoch, "pair": self.pair, "draw": self.draw.clone()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gnn.load_state_dict({k[len("gnn."):]: v for k, v in state.items() if k.startswith("gnn.")})
        schedule = state["schedule"]
        self.epoch, self.pair = int(schedule["epoch"]), int(schedule["pair"])
        self.draw = schedule["draw"].clone().long()

    # -- artifacts --------------------------------------------------------------------------
    def relation_meta(self) -> dict[str, Any]:
        """What ``relation.json`` holds: the relation, the network's shape and λ."""
        rel, cfg = self.relation, self.cfg
        return {"format": FORMAT, "version": FORMAT_VERSION, "relation": rel.name, "A": rel.A, "R": rel.R,
                "B": rel.B, "ARB": rel.ARB, "BRA": rel.BRA, "in_dim": self.gnn.in_dim, "out_dim": self.gnn.out_dim,
                "hidden": self.gnn.hidden, "heads": self.gnn.heads, "eot_self_loops": self.gnn.eot_self_loops,
                "node_widths": [slot.width for slot in self.backbone.slots],
                "object_template": cfg.object_template, "scale": cfg.inference_scale,
                "grid_scales": list(cfg.grid_scales), "backbone": self.backbone.name, "edit_rows": cfg.edit_rows}

    def export(self, out_dir: Path) -> dict[str, Path]:
        """``rrnet-<relation>.safetensors`` (the released checkpoint's DGL key names) + ``relation.json``."""
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        relation = self.relation_meta()
        gat = out_dir / gat_file_name(relation, self.name)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.gnn.state_dict().items()}
        # One metadata key: safetensors writes metadata in hash order, so several keys would make
        # the bytes of identical weights differ from run to run.
        save_file(tensors, str(gat), metadata={"format": FORMAT})
        rel = out_dir / RELATION_FILE
        rel.write_text(json.dumps(relation, indent=2) + "\n")
        return {NETWORK_ROLE: gat, RELATION_ROLE: rel}

    @classmethod
    def card_usage(cls, meta: dict) -> tuple[str, list[str]]:
        network = recorded_name(meta, NETWORK_ROLE, LEGACY_GAT_FILE) or LEGACY_GAT_FILE
        mcfg = meta.get("method_config") or {}
        relation = export_json(meta, RELATION_FILE)
        prompt = (mcfg.get("sample_prompts") or [relation.get("ARB")])[0]
        words = ""
        if not prompt and all(relation.get(k) for k in ("A", "R", "B")):  # imported with its words only
            prompt = f"a {relation['A']} is {relation['R']} a {relation['B']}"
        if not prompt:  # an imported network that names no relation: the prompt's words are given
            prompt, words = "a book is placed in a bowl", ", A=\"book\", R=\"placed\", B=\"bowl\""
        scale = float(relation.get("scale", mcfg.get("inference_scale", 0.6)))
        body = [load_run_line(meta),
                f"inputs = run.pipeline_inputs(pipe, [{prompt!r}]{words}, scale={scale:g})  # lambda = {scale:g}; "
                "0: the base model",
                f"image = pipe(**inputs, {generation_kwargs(meta)}).images[0]"]
        return ("RRNet edits the EOT row of the prompt embeddings, which a diffusers pipeline cannot do by "
                "itself; relgen builds the `prompt_embeds` (the prompt must hold the relation's words, "
                "or name its own with `A=`, `R=`, `B=`):\n\n"
                f"{program(meta, body, imports=['import relgen'])}\n\n"
                f"`{network}` holds the graph network with the key names of RRNet's released `gat_<R>`; "
                f"`{RELATION_FILE}` the relation's words and the network's sizes.",
                ["The backbone's own weights; the network only adjusts its text conditioning.",
                 "It is bound to one relation (the words in relation.json) and to the backbone's text width."])

    @classmethod
    def load_artifact(cls, export_dir: Path, meta: dict) -> RRNetArtifact:
        return RRNetArtifact.from_export(Path(export_dir), meta)

    def live_artifact(self) -> RRNetArtifact:
        cfg = self.cfg
        return RRNetArtifact(self.gnn, self.relation_meta(), scale=cfg.inference_scale,
                             grid_scales=cfg.grid_scales, object_template=cfg.object_template,
                             prompts=self.sample_prompts(), movable=False, edit_rows=cfg.edit_rows,
                             columns_by_default=True)  # sample grids: λ = 0 beside the grid scales

    def sample_prompts(self) -> list[str]:
        if self.cfg.sample_prompts:
            return list(self.cfg.sample_prompts)
        return [self.relation.ARB, self.relation.BRA]

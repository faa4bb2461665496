"""RRNet's text features, the EOT adjustment, and the artifact that applies a trained network.

Shared by training (:mod:`relgen.methods.rrnet.method`) and generation:

* :func:`first_token_rows` - node features of the object and relation words: the input
  token-embedding row of each word's first sub-token (SDXL: both encoders' rows side by side);
* :func:`object_sentence` - the sentence whose EOT output feeds the ``eot0`` node;
* :func:`rectify` - ``e_eot' = e_eot + λ·delta`` at each prompt's first EOT position only;
* :class:`RRNetArtifact` - a trained (or officially released) network bound to its relation;
  ``pipeline_inputs`` turns prompts into ``prompt_embeds`` for a diffusers pipeline;
* :func:`render_scale_grid` - the λ sweep of the paper's figures (rows = prompts, columns = λ).

Importing this module does not import DGL.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor

from relgen.backbones.base import first_eos
from relgen.errors import ConfigError, RelgenError
from relgen.methods.rrnet.config import RRNetConfig
from relgen.names import export_file_name, exported_file
from relgen.plugin import Artifact, EvalCondition, GridColumns
from relgen.text import word_index

NETWORK_ROLE, RELATION_ROLE = "network", "relation"  # the files' roles in relgen.json's "files"
RELATION_FILE = "relation.json"
# The fixed name of exports written before the file names carried the relation (read, never written).
LEGACY_GAT_FILE = "rrnet_gat.safetensors"
FORMAT = "relgen-rrnet"
FORMAT_VERSION = 1
DEFAULT_OBJECT_TEMPLATE = "this is a photo of {}"

__all__ = [
    "LEGACY_GAT_FILE",
    "NETWORK_ROLE",
    "RELATION_FILE",
    "RELATION_ROLE",
    "RRNetArtifact",
    "dgl_device",
    "first_token_rows",
    "gat_file_name",
    "object_sentence",
    "rectify",
    "render_scale_grid",
]


def gat_file_name(relation: dict, method: str = RRNetConfig.name) -> str:
    """``rrnet-<relation>.safetensors``: ``relation`` is what ``relation.json`` holds; the name is
    its ``relation`` key (the relation folder's name, e.g. ``place``), else its word ``R``."""
    name = relation.get("relation") or relation.get("R") or ""
    return export_file_name(method, str(name), fallback="relation")


# ------------------------------------------------------------------------------------------
# Text features


def object_sentence(word: str, template: str = DEFAULT_OBJECT_TEMPLATE) -> str:
    """The object sentence of ``word``: the template filled with the word unchanged.

    RRNet's released dataset.py formats ``f"this is a photo of {obj}"`` with the word as given
    (no lower-casing); CLIP's tokenizers lower-case their input themselves.

    Example: ``object_sentence("Book") == "this is a photo of Book"``.
    """
    return template.format(word)


def first_token_rows(pairs: Sequence[tuple[Any, Any]], words: Sequence[str]) -> Tensor:
    """Input token-embedding rows of each word's first sub-token, encoders side by side.

    RRNet's released GNN.py takes the token right after BOS, so a word that tokenises to
    several pieces is represented by its first piece only; this warns (one line) when that
    happens.

    Args:
        pairs: ``(tokenizer, text encoder)`` per text encoder (one for SD 1.x/2.x, two for
            SDXL).
        words: The words, e.g. ``["book", "placed", "bowl"]``.

    Returns:
        ``(len(words), sum of the encoders' token-embedding widths)`` rows, detached, in the
        embedding's dtype (1024 for SD 2.x; 768 + 1280 = 2048 for SDXL).

    Raises:
        ConfigError: If a word gives no token at all (an empty string).
    """
    rows = []
    for word in words:
        parts = []
        for i, (tokenizer, encoder) in enumerate(pairs):
            ids = tokenizer(word, add_special_tokens=False).input_ids
            if not ids:
                raise ConfigError(f"RRNet word {word!r} gives no tokens; use a non-empty word")
            if len(ids) > 1 and i == 0:
                pieces = tokenizer.convert_ids_to_tokens(ids)
                warnings.warn(f"RRNet word '{word}' is {len(ids)} tokens {pieces}; only the first "
                              f"piece '{pieces[0]}' is used, as RRNet's released code does",
                              stacklevel=2)
            weight = encoder.get_input_embeddings().weight
            parts.append(weight[ids[0]].detach())
        rows.append(torch.cat(parts))
    return torch.stack(rows)


def eot_positions(tokenizer, prompts: Sequence[str]) -> Tensor:
    """(B,) index of the first EOS token of each prompt padded to the tokenizer's length.

    The pad token is not assumed to be EOS (SD 2.x and SDXL's second tokenizer pad with "!").
    """
    ids = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    return first_eos(ids, tokenizer.eos_token_id)


#: ``method.edit_rows``: the rows RRNet's delta is added to.
EDIT_ROWS = ("eot", "eot_and_padding")


def rectify(hidden: Tensor, eot: Tensor, delta: Tensor, scale: Union[float, Tensor], rows: str = "eot") -> Tensor:
    """Add ``scale * delta`` to each prompt's first EOT row (``rows="eot"``); every other row is
    unchanged.

    ``V*_eot = V_eot + λ·h_ΔEOT`` (RRNet, Sec. 3; as the released train.py and generate.py,
    which edit only the first EOT position, not the padding after it). ``rows="eot_and_padding"``
    adds the same delta to every position from the first EOT on (on SD 1.x's tokenizer those are
    all EOT tokens; on SD 2.x's they are "!" padding): a generalisation, not the released method.

    Args:
        hidden: ``(B, L, D)`` text conditioning.
        eot: ``(B,)`` first EOT position per prompt.
        delta: ``(B, D)`` adjustment vectors (may require grad).
        scale: λ, a float or a ``(B,)`` tensor of per-prompt values.
        rows: One of :data:`EDIT_ROWS`.

    Returns:
        A new ``(B, L, D)`` tensor in ``hidden``'s dtype; rows that are not edited are bitwise
        those of ``hidden``.
    """
    if rows not in EDIT_ROWS:
        raise ConfigError(f"method.edit_rows={rows!r}: use one of {', '.join(EDIT_ROWS)}")
    batch = torch.arange(hidden.shape[0], device=hidden.device)
    eot = eot.to(hidden.device)
    if isinstance(scale, Tensor):
        scale = scale.to(hidden.device, torch.float32).reshape(-1, 1)
    step = scale * delta.to(hidden.device).float()  # (B, D)
    if rows == "eot":
        row = hidden[batch, eot].float() + step
        return hidden.index_put((batch, eot), row.to(hidden.dtype))
    edited = torch.arange(hidden.shape[1], device=hidden.device)[None] >= eot[:, None]  # (B, L)
    moved = hidden.float() + step[:, None, :]
    return torch.where(edited[..., None], moved.to(hidden.dtype), hidden)


_DGL_DEVICES: dict[str, bool] = {}


def dgl_device(device: Union[str, torch.device]) -> torch.device:
    """``device`` if the installed DGL can place graphs there, else the CPU.

    The pip wheels of DGL are CPU builds; the network is small (15.8 M parameters at SD 2.1
    width, 10 nodes per pair), so it then runs on the CPU and its output moves to ``device``.
    """
    device = torch.device(device)
    if device.type == "cpu":
        return device
    key = str(device)
    if key not in _DGL_DEVICES:
        from relgen.graph._dgl import import_dgl

        dgl = import_dgl()
        try:
            dgl.graph(([0], [0])).to(device)
            _DGL_DEVICES[key] = True
        except Exception:  # DGL raises DGLError for a build without that device
            _DGL_DEVICES[key] = False
    return device if _DGL_DEVICES[key] else torch.device("cpu")


def build_prompt_graphs(rows: Tensor, eots: Tensor, eot_self_loops: bool):
    """One relation graph per prompt.

    Args:
        rows: ``(G, 3, D)`` node features of ``[subject, relation, object]`` per prompt.
        eots: ``(G, 2, D)`` EOT outputs ``[object sentence of the subject, prompt]``.
        eot_self_loops: See :func:`relgen.methods.rrnet.graph.build_relation_graph`.

    Returns:
        The batched graph (``G`` graphs) for :meth:`RelationGAT.eot_deltas`.
    """
    from relgen.methods.rrnet.graph import batch_graphs, build_relation_graph

    graphs = [build_relation_graph(torch.stack([r[0], r[2]]), r[1], e, eot_self_loops=eot_self_loops)
              for r, e in zip(rows, eots)]
    return batch_graphs(graphs)


# ------------------------------------------------------------------------------------------
# The artifact


def _pipe_pairs(pipe) -> list[tuple[Any, Any]]:
    pairs = [(pipe.tokenizer, pipe.text_encoder)]
    if getattr(pipe, "text_encoder_2", None) is not None:
        pairs.append((pipe.tokenizer_2, pipe.text_encoder_2))
    return pairs


def _encode(pipe, prompts: list[str], guidance: bool):
    """The pipeline's own ``encode_prompt``: (embeds, negative, pooled, negative pooled)."""
    device = getattr(pipe, "_execution_device", None) or pipe.device
    out = pipe.encode_prompt(prompt=prompts, device=device, num_images_per_prompt=1,
                             do_classifier_free_guidance=guidance, negative_prompt=None)
    return tuple(out) + (None,) * (4 - len(out))


class RRNetArtifact(Artifact):
    """A trained relation network and the relation it was trained on.

    Args:
        gnn: The :class:`~relgen.methods.rrnet.gnn.RelationGAT`.
        relation: ``{"A", "R", "B", "ARB", "BRA", ...}`` (words may be missing for an
            imported official checkpoint; then every call must name A, R and B).
        scale: Default λ at generation.
        grid_scales: Default λ columns of :meth:`grid_columns`.
        object_template: The object sentence (``eot0``) template.
        prompts: Sample prompts (default: ARB and BRA).
        movable: Move the network to the pipeline's device (where DGL supports it) when
            used; ``False`` for a network that is being trained in place.
        edit_rows: The rows the delta is added to (:func:`rectify`).
        columns_by_default: :meth:`grid_columns` draws the λ columns even when no ``scales``
            option is given (the sample grids during training).
    """

    method = RRNetConfig.name

    def __init__(self, gnn, relation: dict, scale: float = 0.6,
                 grid_scales: Sequence[float] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
                 object_template: str = DEFAULT_OBJECT_TEMPLATE,
                 prompts: Optional[Sequence[str]] = None, movable: bool = True, edit_rows: str = "eot",
                 columns_by_default: bool = False) -> None:
        self.gnn = gnn
        self.columns_by_default = columns_by_default
        self.edit_rows = edit_rows
        self.movable = movable
        self.relation = dict(relation)
        self.scale = float(scale)
        self.grid_scales = [float(s) for s in grid_scales]
        self.object_template = object_template
        self.prompts = list(prompts) if prompts else [p for p in (relation.get("ARB"), relation.get("BRA")) if p]

    # -- loading ------------------------------------------------------------------------
    @classmethod
    def from_export(cls, export_dir: Path, meta: Optional[dict] = None) -> "RRNetArtifact":
        """Read the network (``rrnet-<relation>.safetensors``) and ``relation.json`` of a relgen run.

        The file names are those ``relgen.json`` records (``meta`` None: read from the folder);
        exports that record none have the old fixed ``rrnet_gat.safetensors``.
        """
        from relgen.methods.rrnet.gnn import RelationGAT
        from relgen.tensorfile import load_tensors

        export_dir = Path(export_dir)
        rel_path = exported_file(export_dir, meta, RELATION_ROLE, RELATION_FILE)
        gat_path = exported_file(export_dir, meta, NETWORK_ROLE, LEGACY_GAT_FILE)
        for path in (rel_path, gat_path):
            if not path.is_file():
                raise RelgenError(f"{path}: exported RRNet file not found; was the run finished?")
        try:
            rel = json.loads(rel_path.read_text())
        except json.JSONDecodeError as exc:
            raise RelgenError(f"{rel_path}: invalid JSON ({exc.msg} at line {exc.lineno})") from exc
        try:
            gnn = RelationGAT(int(rel["in_dim"]), int(rel["out_dim"]), hidden=int(rel["hidden"]),
                              heads=int(rel["heads"]), eot_self_loops=bool(rel["eot_self_loops"]))
        except KeyError as exc:
            raise RelgenError(f"{rel_path}: missing key {exc}; re-export the run") from None
        state = load_tensors(gat_path, "the exported RRNet network")
        try:
            gnn.load_state_dict(state)
        except RuntimeError as exc:
            raise RelgenError(f"{gat_path}: does not fit the network in {rel_path} "
                              f"({str(exc).splitlines()[0]})") from None
        gnn.eval()
        mcfg = (meta or {}).get("method_config") or {}
        return cls(gnn, rel, scale=rel.get("scale", 0.6),
                   grid_scales=rel.get("grid_scales") or mcfg.get("grid_scales") or (0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
                   object_template=rel.get("object_template", DEFAULT_OBJECT_TEMPLATE),
                   prompts=mcfg.get("sample_prompts") or None, edit_rows=rel.get("edit_rows", "eot"))

    @classmethod
    def from_official(cls, path, A: Optional[str] = None, R: Optional[str] = None, B: Optional[str] = None,
                      ARB: Optional[str] = None, BRA: Optional[str] = None, width: int = 1024,
                      hidden: int = 512, heads: int = 2, scale: float = 0.6) -> "RRNetArtifact":
        """Import a released ``gat_<R>`` file (``torch.save`` of the state dict, DGL key names).

        It is read with ``weights_only=True``. The released models are for SD 2.1-base
        (``width`` 1024). Give the relation's words so that ``pipeline_inputs`` can build
        graphs without being told A, R and B each time.
        """
        from relgen.methods.rrnet.gnn import RelationGAT

        gnn = RelationGAT(width, width, hidden=hidden, heads=heads)
        gnn.load_official_state_dict(path)
        gnn.eval()
        relation = {k: v for k, v in dict(A=A, R=R, B=B, ARB=ARB, BRA=BRA).items() if v}
        relation.update(in_dim=width, out_dim=width, hidden=hidden, heads=heads, eot_self_loops=False,
                        source=str(path))
        return cls(gnn, relation, scale=scale)

    # -- applying -----------------------------------------------------------------------
    def apply(self, pipe) -> None:
        """Check that the pipeline fits; the adjustment itself happens in :meth:`pipeline_inputs`."""
        width = sum(enc.get_input_embeddings().weight.shape[1] for _, enc in _pipe_pairs(pipe))
        if width != self.gnn.in_dim:
            raise RelgenError(f"the RRNet network takes {self.gnn.in_dim}-wide features but the pipeline's "
                              f"text encoders give {width}; use a pipeline of the backbone it was trained on")

    def words_for(self, prompt: str, A: Optional[str] = None, R: Optional[str] = None,
                  B: Optional[str] = None) -> tuple[str, str, str]:
        """(subject, relation, object) words of ``prompt``.

        Given words win; missing ones come from the trained relation. When both objects come
        from the relation, the one that occurs first in the prompt is the subject, so the
        relation's own BRA prompt gets the swapped graph, as in training.
        """
        a = A or self.relation.get("A")
        r = R or self.relation.get("R")
        b = B or self.relation.get("B")
        if not (a and r and b):
            raise ConfigError("RRNet needs the words A, R and B of each prompt; pass them as "
                              "method_options.A=..., method_options.R=..., method_options.B=...")
        if not A and not B:
            ia, ib = word_index(prompt, a), word_index(prompt, b)
            if ia >= 0 and ib >= 0 and ib < ia:
                a, b = b, a
        for key, word in (("A", a), ("R", r), ("B", b)):
            if word_index(prompt, word) < 0:
                raise ConfigError(f"prompt {prompt!r} does not contain the {key} word '{word}'; "
                                  f"name the prompt's own words with method_options.A=, R=, B=")
        return a, r, b

    def gnn_inputs(self, pipe, prompts: Sequence[str], A=None, R=None, B=None):
        """Encode ``prompts`` with the pipeline and build their graphs.

        Returns:
            ``(encoded, eot, graph)``: the pipeline's ``encode_prompt`` outputs (embeds,
            negative embeds, pooled, negative pooled), ``(n,)`` first EOT positions, and the
            batched graph of the ``n`` prompts.
        """
        prompts = list(prompts)
        words = [self.words_for(p, A, R, B) for p in prompts]
        encoded = _encode(pipe, prompts, guidance=True)
        objects = _encode(pipe, [object_sentence(w[0], self.object_template) for w in words], guidance=False)[0]
        eot = eot_positions(pipe.tokenizer, prompts)
        eot_obj = eot_positions(pipe.tokenizer, [object_sentence(w[0], self.object_template) for w in words])
        if self.movable:
            self.gnn.to(dgl_device(encoded[0].device))
        device = next(self.gnn.parameters()).device
        flat = first_token_rows(_pipe_pairs(pipe), [x for w in words for x in w])
        rows = flat.to(device, torch.float32).reshape(len(prompts), 3, -1)
        n = torch.arange(len(prompts), device=objects.device)
        eots = torch.stack([objects[n, eot_obj.to(objects.device)], encoded[0][n, eot.to(objects.device)]], dim=1)
        graph = build_prompt_graphs(rows, eots.to(device, torch.float32), self.gnn.eot_self_loops)
        return encoded, eot, graph

    @torch.no_grad()
    def prompt_deltas(self, pipe, prompts: Sequence[str], A=None, R=None, B=None) -> Tensor:
        """``(n, D)`` adjustment vectors (the ``eot1`` outputs) of ``prompts``, on the CPU."""
        _, _, graph = self.gnn_inputs(pipe, prompts, A, R, B)
        return self.gnn.eot_deltas(graph)[:, 1].float().cpu()

    def check_options(self, options: dict) -> None:
        """Check generation options before anything loads (``relgen.generate`` calls it first)."""
        unknown = set(options) - {"scale", "scales", "A", "R", "B"}
        if unknown:
            raise ConfigError(f"unknown RRNet option(s) {sorted(unknown)}; known: scale, scales, A, R, B")
        if options.get("scales") not in (None, True):
            lambda_values(options["scales"], "method_options.scales")
        if options.get("scale") is not None:
            lambda_values(options["scale"], "method_options.scale")

    @torch.no_grad()
    def pipeline_inputs(self, pipe, prompts: list[str], scale: Optional[float] = None,
                        scales: Optional[Sequence[float]] = None, A: Optional[str] = None,
                        R: Optional[str] = None, B: Optional[str] = None, **unused) -> dict:
        """Rectified prompt embeddings for ``pipe(**inputs)``.

        Args:
            pipe: A ``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline``.
            prompts: The prompts (n of them).
            scale: λ for every prompt (default: the artifact's, 0.6 as the released demo).
            scales: λ per prompt (length n, or 1 to broadcast); wins over ``scale``.
            A, R, B: The prompts' subject, relation and object words (default: the trained
                relation's, swapped for prompts where B comes first).

        Returns:
            ``prompt_embeds`` ``(n, 77, D)`` with only the first EOT row changed,
            ``negative_prompt_embeds`` (the pipeline's own unconditional encoding, unchanged),
            and for SDXL ``pooled_prompt_embeds`` / ``negative_pooled_prompt_embeds``
            (unchanged).
        """
        if unused:
            raise ConfigError(f"unknown RRNet option(s) {sorted(unused)}; known: scale, scales, A, R, B")
        n = len(prompts)
        if scales is not None:
            values = lambda_values(scales, "method_options.scales")
            if len(values) == 1:
                values = values * n
            if len(values) != n:
                raise ConfigError(f"method_options.scales has {len(values)} values for {n} prompts; "
                                  "give one per prompt (or one for all)")
        else:
            values = [self.scale if scale is None else lambda_values(scale, "method_options.scale")[0]] * n
        encoded, eot, graph = self.gnn_inputs(pipe, prompts, A, R, B)
        deltas = self.gnn.eot_deltas(graph)[:, 1]
        embeds = rectify(encoded[0], eot, deltas, torch.tensor(values), self.edit_rows)
        inputs = {"prompt_embeds": embeds, "negative_prompt_embeds": encoded[1]}
        if encoded[2] is not None:  # SDXL: the pooled embedding is left as the pipeline made it
            inputs["pooled_prompt_embeds"] = encoded[2]
            inputs["negative_pooled_prompt_embeds"] = encoded[3]
        return inputs

    def grid_columns(self, pipe, prompts: list[str], opts, backbone_cfg, progress: bool = False):
        """With ``opts.method_options["scales"]``: one grid column per λ (RRNet's Fig. 4 layout).

        Used by ``python -m relgen.generate run_dir=... method_options.scales=[0,0.5,1]``, which
        writes the single images to ``<out>/<prompt>/lambda=<λ>/<i>.png`` (the released
        generate.py's one-folder-per-λ layout) and one labelled grid (rows = prompt x seed,
        columns = λ), each column headed ``lambda = <λ>`` as its folder is named. ``scales``
        null (or true) and the training sample grids (``columns_by_default``) draw λ = 0, the
        base model, beside the run's ``grid_scales``. Returns ``None`` otherwise (plain
        rendering then applies).
        """
        options = dict(opts.method_options)
        if "scales" not in options and not self.columns_by_default:
            return None
        scales = options.pop("scales", None)
        if scales in (None, True):
            scales = [0.0] + [s for s in self.grid_scales if s != 0]
        else:
            scales = lambda_values(scales, "method_options.scales")
        cells = render_scale_grid(pipe, self, prompts, scales, replace(opts, method_options=options), backbone_cfg,
                                  progress=progress)
        return GridColumns(kind="lambda", columns=[lambda_name(value, " = ") + (" (base model)" if value == 0 else "")
                                                   for value in scales],
                           folders=[lambda_name(value) for value in scales], cells=cells)

    def sample_prompts(self) -> list[str]:
        return list(self.prompts)

    def evaluation_conditions(self, eval_cfg) -> list[EvalCondition]:
        """One condition per λ (``eval_cfg.lambdas``, default :attr:`grid_scales`); λ = 0 is the
        base model, so it is the evaluation's baseline."""
        lambdas = eval_cfg.lambdas if eval_cfg.lambdas is not None else list(self.grid_scales)
        return [EvalCondition(f"lambda={float(lam):g}", {"scale": float(lam)}, baseline=float(lam) == 0.0)
                for lam in lambdas]

    def prompt_options(self, prompt, text: str) -> dict:
        """RRNet builds its graph from the prompt's subject, relation and object words; they are
        the prompt's own unless the run's relation words are all in the text (then the artifact
        orders them itself, as in training)."""
        words = [self.relation.get(k) for k in ("A", "R", "B")] if isinstance(self.relation, dict) else []
        if words and all(w and w.lower() in text.lower() for w in words):
            return {}
        return {"A": prompt.a, "R": prompt.predicate, "B": prompt.b}


def lambda_name(value: float, sep: str = "=") -> str:
    """How RRNet's λ is named in folders (``lambda=0.6``) and grid headers (``lambda = 0.6``)."""
    return f"lambda{sep}{float(value):g}"


def lambda_values(value, key: str) -> list[float]:
    """λ values as finite floats (one value or a list), or one line naming ``key``.

    Raises:
        ConfigError: a value that is not a finite number (``method_options.scales=[abc]``).
    """
    import math

    items = list(value) if isinstance(value, (list, tuple)) or hasattr(value, "__iter__") and not isinstance(
        value, str) else [value]
    if not items:
        raise ConfigError(f"{key}=[]: give at least one λ value, e.g. {key}=[0,0.5,1]")
    out = []
    for item in items:
        try:
            number = float(item)
        except (TypeError, ValueError):
            number = math.nan
        if isinstance(item, bool) or not math.isfinite(number):
            raise ConfigError(f"{key}: {item!r} is not a finite number; give λ values such as {key}=[0,0.5,1]")
        out.append(number)
    return out


def render_scale_grid(pipe, artifact: RRNetArtifact, prompts: Sequence[str], scales: Sequence[float],
                      opts, backbone_cfg, progress: bool = False) -> list[list[list[Any]]]:
    """Render every prompt at every λ with the same seeds (RRNet's Fig. 4 layout).

    Image i of every cell uses seed ``opts.seed + i`` (through :func:`relgen.generate.render`),
    so columns differ only in λ.

    Args:
        pipe: The pipeline to render with.
        artifact: The RRNet artifact.
        prompts: Rows of the grid (e.g. ARB and BRA).
        scales: Columns of the grid (λ values).
        opts: :class:`relgen.generate.GenerationOptions`; ``method_options`` may name A, R, B.
        backbone_cfg: The backbone config (default steps, guidance, resolution).
        progress: Show a progress bar per λ.

    Returns:
        ``cells[p][j]``: the images of prompt p at ``scales[j]``.
    """
    from relgen.generate import render

    options = {k: v for k, v in opts.method_options.items() if k not in ("scale", "scales")}
    cells: list[list[list[Any]]] = [[] for _ in prompts]
    for value in scales:
        rows = render(pipe, artifact, list(prompts), replace(opts, method_options={**options, "scale": float(value)}),
                      backbone_cfg, progress=progress)
        for p, images in enumerate(rows):
            cells[p].append(images)
    return cells

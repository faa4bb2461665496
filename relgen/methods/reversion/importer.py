"""Import ReVersion's official ``learned_embeds.bin``.

The released train.py saves ``{"<R>": FloatTensor[768]}`` with ``torch.save`` (a 1-D vector
of SD 1.5's CLIP ViT-L token-embedding width). It is read with ``weights_only=True``, so a
file holding anything but tensors and plain containers is refused, never unpickled.

    from relgen.methods.reversion.importer import import_official_embeds
    artifact = import_official_embeds("experiments/painted_on/learned_embeds.bin")
    artifact.apply(pipe)                       # a StableDiffusionPipeline of SD 1.5
    pipe(**artifact.pipeline_inputs(pipe, ["Cat <R> stone"]))
"""

from __future__ import annotations

from pathlib import Path

import torch

from relgen.backbones.base import placeholder_conflict
from relgen.backbones.configs import check_width, config_folder, text_encoder_widths
from relgen.data.images import one_line
from relgen.errors import RelgenError
from relgen.methods.reversion.artifact import ReVersionArtifact
from relgen.methods.reversion.config import ReVersionConfig
from relgen.methods.textual_inversion.method import EMBEDS_ROLE, embeds_file_name, save_token_embeddings

OFFICIAL_EMBEDS_FILE = "learned_embeds.bin"


def import_official_embeds(path, lowercase_prompts: bool = True):
    """Read an official ReVersion ``learned_embeds.bin`` into an applicable artifact.

    Args:
        path: The ``.bin`` file (a ``torch.save`` of ``{token: tensor (D,)}``; ``(1, D)`` is
            accepted too).
        lowercase_prompts: Lower-case prompts except the token at generation (as the released
            inference.py).

    Returns:
        A :class:`~relgen.methods.reversion.method.ReVersionArtifact` whose
        ``rows["text_encoder"]`` is the ``(1, D)`` float32 vector.

    Raises:
        RelgenError: If the file is missing, cannot be read with ``weights_only=True``, or does
            not hold exactly one token with one finite floating-point vector.
    """
    path = Path(path).expanduser()
    expected = "ReVersion's learned_embeds.bin holds {'<R>': float tensor of shape (768,)}"
    if not path.is_file():
        raise RelgenError(f"{path}: file not found; give the path of an official {OFFICIAL_EMBEDS_FILE} "
                          "or of a relgen export folder")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for foreign or unsafe pickles
        reason = one_line(exc)[:160]
        raise RelgenError(f"{path}: cannot be read as a tensor file with weights_only=True ({reason}); "
                          f"{expected}") from exc
    if not isinstance(obj, dict) or len(obj) != 1:
        what = f"a dict with {len(obj)} entries" if isinstance(obj, dict) else type(obj).__name__
        raise RelgenError(f"{path}: holds {what}; {expected}")
    (token, vector), = obj.items()
    if not isinstance(token, str) or not token:
        raise RelgenError(f"{path}: the key {token!r} is not a token string; {expected}")
    if not torch.is_tensor(vector) or not vector.is_floating_point():
        raise RelgenError(f"{path}: the value for {token!r} is not a floating-point tensor; {expected}")
    if not (vector.dim() == 1 or (vector.dim() == 2 and vector.shape[0] == 1)) or vector.numel() == 0:
        raise RelgenError(f"{path}: the vector for {token!r} has shape {tuple(vector.shape)}; {expected}")
    if not torch.isfinite(vector).all():
        raise RelgenError(f"{path}: the vector for {token!r} holds NaN or infinite values")
    rows = {"text_encoder": vector.detach().float().reshape(1, -1).clone()}  # (1, D)
    artifact = ReVersionArtifact(token, rows, [], ReVersionConfig.name, lowercase_prompts)
    artifact.source = path
    return artifact


def official_exporter(cfg, file: Path):
    """``relgen.import_official`` for ReVersion: check ``learned_embeds.bin`` against the backbone
    (one SD 1.x/2.x text encoder of the row's width, a token its tokenizers do not know), record
    its token in ``cfg.method``, and return the function that writes ``reversion-<token>.safetensors``."""
    if cfg.backbone.family != "sd":
        raise RelgenError(f"{file}: ReVersion's learned_embeds.bin holds one text encoder's row; backbone "
                          f"{cfg.backbone.name} has two (use an SD 1.x/2.x backbone)")
    art = import_official_embeds(file, lowercase_prompts=cfg.method.lowercase_prompts)
    folder = config_folder(cfg.backbone, cfg.cache_dir)
    if folder is not None:  # the token as training checks it (else at generation, by apply())
        check_token_for_tokenizers(art.token, folder, file)
    row = art.rows["text_encoder"]
    check_width(file, f"the '{art.token}' row", row.shape[1], text_encoder_widths(cfg.backbone, cfg.cache_dir),
                cfg.backbone)
    cfg.method.placeholder_token = art.token
    name = embeds_file_name(cfg.method.name, art.token)  # reversion-R.safetensors
    return lambda out: {EMBEDS_ROLE: save_token_embeddings(out / name, art.token, art.rows)}


def check_token_for_tokenizers(token: str, folder, source) -> None:
    """Refuse a token that training would refuse (see
    :func:`relgen.backbones.base.placeholder_conflict`), read against the tokenizers of the diffusers
    folder ``folder`` (``tokenizer/``, ``tokenizer_2/``; those missing are skipped).

    Raises:
        RelgenError: naming ``source``, the token and the tokenizer.
    """
    from transformers import CLIPTokenizer  # deferred: transformers

    for sub in ("tokenizer", "tokenizer_2"):
        path = Path(folder) / sub
        if not any((path / name).is_file() for name in ("vocab.json", "tokenizer.json")):
            continue
        reason = placeholder_conflict(CLIPTokenizer.from_pretrained(str(path)), token)
        if reason:
            raise RelgenError(f"{source}: its token '{token}' {reason} of the backbone's {sub}; training "
                              "refuses such a token because it would change existing words, so it is not "
                              "imported; rename the key of the file to a new string such as '<R>'")

"""ReVersion's relation-steering contrastive loss.

The loss works on rows of the text encoder's *input token-embedding table*, not on encoder
outputs. The anchor is the row of the relation token ``<R>`` (one vector shared by the batch);
positives are the rows of preposition tokens; negatives are the rows of the caption tokens that are
neither stop words, prepositions, special tokens nor ``<R>``. The loss pulls ``<R>`` towards the
prepositions and away from the caption's content words, and only ``<R>`` receives a gradient.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor


def steering_loss(anchor: Tensor, positives: Tensor, negatives: Tensor, temperature: float) -> Tensor:
    """Multi-positive InfoNCE between the ``<R>`` embedding and preposition / caption embeddings.

    All vectors are L2-normalised along the last dimension and the logits are cosine similarities
    divided by ``temperature``. The loss is
    ``logsumexp(logits of positives then negatives) - logsumexp(logits of positives)``, that is
    ``-log(sum_pos exp(s / tau) / sum_all exp(s / tau))``. Positives and negatives are detached, so
    the gradient flows only into ``anchor``. The computation runs in at least float32.

    With no negatives the loss is still defined and is exactly ``0`` (both log-sum-exps are over the
    same positive logits), with a zero gradient; the caller should warn when that happens, since the
    loss then steers nothing.

    Args:
        anchor: The ``<R>`` embedding, shape ``[D]`` or ``[1, D]``.
        positives: Preposition token embeddings, shape ``[P, D]`` with ``P >= 1``.
        negatives: Caption content-token embeddings, shape ``[N, D]`` (``N`` may be 0; an empty
            tensor of any shape is accepted as "no negatives").
        temperature: Softmax temperature ``tau > 0`` (ReVersion uses 0.07).

    Returns:
        The scalar loss (0-dim tensor).

    Raises:
        ValueError: If shapes are inconsistent, there are no positives, or ``temperature <= 0``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if anchor.dim() == 1:
        anchor = anchor.unsqueeze(0)
    if anchor.dim() != 2 or anchor.shape[0] != 1:
        raise ValueError(f"anchor must have shape [D] or [1, D], got {tuple(anchor.shape)}")
    dim = anchor.shape[1]
    if positives.dim() != 2 or positives.shape[1] != dim:
        raise ValueError(f"positives must have shape [P, {dim}], got {tuple(positives.shape)}")
    if positives.shape[0] == 0:
        raise ValueError("steering_loss needs at least one positive embedding, got P = 0")
    if negatives.numel() == 0:
        negatives = negatives.new_zeros((0, dim))
    if negatives.dim() != 2 or negatives.shape[1] != dim:
        raise ValueError(f"negatives must have shape [N, {dim}], got {tuple(negatives.shape)}")

    dtype = torch.promote_types(anchor.dtype, torch.float32)
    anchor_n = F.normalize(anchor.to(dtype), dim=-1)  # [1, D]
    # positives and negatives carry no gradient, as ReVersion's released train.py
    positives_n = F.normalize(positives.detach().to(device=anchor.device, dtype=dtype), dim=-1)  # [P, D]
    negatives_n = F.normalize(negatives.detach().to(device=anchor.device, dtype=dtype), dim=-1)  # [N, D]

    # ReVersion Eq. 5: cosine logits over temperature, positives first
    pos_logits = (anchor_n @ positives_n.T).squeeze(0) / temperature  # [P]
    neg_logits = (anchor_n @ negatives_n.T).squeeze(0) / temperature  # [N]
    if neg_logits.numel() == 0:
        all_logits = pos_logits  # the same tensor on both sides: the loss is exactly zero
    else:
        all_logits = torch.cat([pos_logits, neg_logits])  # [P + N]
    return torch.logsumexp(all_logits, dim=0) - torch.logsumexp(pos_logits, dim=0)


def _as_id_tensor(ids: Iterable[int] | Tensor, device: torch.device) -> Tensor:
    """Turn a set / iterable / tensor of token ids into a 1-D long tensor on ``device``.

    Args:
        ids: Token ids.
        device: Target device.

    Returns:
        Long tensor of shape ``[K]``.
    """
    if isinstance(ids, Tensor):
        return ids.reshape(-1).to(device=device, dtype=torch.long)
    return torch.tensor(sorted({int(i) for i in ids}), dtype=torch.long, device=device)


def gather_steering_rows(
    embedding_weight: Tensor,
    positive_ids: Tensor,
    caption_ids: Tensor,
    excluded_ids: Iterable[int] | Tensor,
    special_ids: Iterable[int] | Tensor,
) -> tuple[Tensor, Tensor]:
    """Pick the positive and negative embedding rows of a batch.

    Positives are the rows of every token of the batch's positive sentences except the special ids
    (BOS, EOS, pad). Negatives are the rows of every caption token whose id is neither in
    ``excluded_ids`` nor in ``special_ids``; they are pooled over the whole batch and duplicates are
    kept. Both are taken in row-major (sample, then position) order and returned detached. When the
    pad token is ``"!"`` (SD2.x-style tokenizers), a literal ``"!"`` in a caption is dropped as well.

    Args:
        embedding_weight: The input token-embedding table, shape ``[V, D]``.
        positive_ids: Token ids of the positive sentences, shape ``[B, L]``.
        caption_ids: Token ids of the captions, shape ``[B, L]``.
        excluded_ids: Ids that are never negatives (see :func:`excluded_token_ids`): stop words,
            prepositions, special ids and the ``<R>`` ids.
        special_ids: BOS, EOS and pad ids, given explicitly since the pad id is not always EOS.

    Returns:
        ``(positives, negatives)`` of shapes ``[P, D]`` and ``[N, D]`` (``N`` may be 0).
    """
    weight = embedding_weight.detach()
    device = weight.device
    special = _as_id_tensor(special_ids, device)
    excluded = torch.cat([_as_id_tensor(excluded_ids, device), special])

    pos_flat = positive_ids.reshape(-1).to(device=device, dtype=torch.long)  # [B * L]
    cap_flat = caption_ids.reshape(-1).to(device=device, dtype=torch.long)  # [B * L]
    # as ReVersion's released train.py, plus an explicit pad filter (the pad id may differ from EOS)
    pos_keep = pos_flat[~torch.isin(pos_flat, special)]  # [P]
    neg_keep = cap_flat[~torch.isin(cap_flat, excluded)]  # [N]
    return weight[pos_keep], weight[neg_keep]

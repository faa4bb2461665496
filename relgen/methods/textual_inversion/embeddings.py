"""Trainable placeholder-token rows spliced into every text encoder's input embedding.

Each placeholder gets its own fp32 row per encoder (an ``nn.Parameter``); a forward hook on
the encoder's token-embedding module substitutes those rows wherever the placeholder id
occurs. The embedding matrix itself is never optimised, so every other row stays bitwise
unchanged without a restore step, and the optimizer state is a few rows instead of the
whole vocabulary. For each placeholder the update is the same as training the full matrix
and restoring the other rows (as diffusers' textual_inversion.py does): AdamW acts element by
element and the other rows receive zero gradient.
"""

from __future__ import annotations

import torch
from torch import nn


class PlaceholderEmbeddings(nn.Module):
    """Rows for ``tokens`` in each encoder of ``backbone``; install with :meth:`attach`."""

    def __init__(self, backbone, tokens: list[str], initializer: str | None) -> None:
        super().__init__()
        self.tokens = list(tokens)
        self.keys = [slot.key for slot in backbone.slots]
        ids = backbone.add_placeholder_tokens(self.tokens, initializer)
        self.token_ids = [list(i) for i in ids]
        self.rows = nn.ParameterList()
        for slot, slot_ids in zip(backbone.slots, self.token_ids):
            weight = slot.encoder.get_input_embeddings().weight
            self.rows.append(nn.Parameter(weight[slot_ids].detach().float().clone()))
        self._handles = []
        self._slots = backbone.slots

    def attach(self) -> None:
        """Route the encoders' embedding lookups of placeholder ids to the trainable rows."""
        self.detach_hooks()
        for i, slot in enumerate(self._slots):
            self._handles.append(slot.encoder.get_input_embeddings().register_forward_hook(self._hook(i)))

    def detach_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _hook(self, i: int):
        ids_tensor = torch.tensor(self.token_ids[i])

        def hook(module, inputs, output):
            input_ids = inputs[0]
            ids = ids_tensor.to(input_ids.device)
            match = input_ids.unsqueeze(-1) == ids  # (B, L, n)
            if not match.any():
                return output
            which = match.int().argmax(-1)
            rows = self.rows[i].to(output.dtype)[which]
            return torch.where(match.any(-1, keepdim=True), rows, output)

        return hook

    @torch.no_grad()
    def write_into_encoders(self) -> None:
        """Copy the trained rows into the embedding matrices (for pipelines and export)."""
        for slot, ids, rows in zip(self._slots, self.token_ids, self.rows):
            weight = slot.encoder.get_input_embeddings().weight
            weight[ids] = rows.detach().to(weight.dtype)

    def named_rows(self) -> dict[str, torch.Tensor]:
        """``{encoder key: (n_tokens, width)}`` detached fp32 copies."""
        return {key: rows.detach().float().cpu().clone() for key, rows in zip(self.keys, self.rows)}

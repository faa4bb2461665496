"""RRNet's relation graph attention network ("RGAT").

Two heterogeneous graph-attention layers over the graph of
:func:`relgen.methods.rrnet.graph.build_relation_graph`, one DGL ``GATConv`` per edge
type, summed over edge types per destination node (DGL ``HeteroGraphConv``,
``aggregate="sum"``). Module names (``conv1``/``conv2``, ``mods.<edge type>``) reproduce
the official checkpoint's state-dict keys, so the released ``gat_<R>`` files load as is.

Per layer, for a destination node i of type t (as DGL's ``GATConv`` inside
``HeteroGraphConv``, used by RRNet's released GNN.py):

    h_i' = sum over edge types r ending in t of
           [ sum_{j in N_r(i)} alpha^r_ij W^r h_j + b^r ],
    alpha^r_ij = softmax_j( LeakyReLU_0.2( a_src^r . W^r h_j + a_dst^r . W^r h_i ) ),

computed per head. A node without in-edges of type r receives exactly ``b^r``.

The output rows of the ``eot`` nodes are the adjustment vectors: row 0 for the object
sentence, row 1 for the relation prompt. The caller adds ``scale * delta`` to the
prompt's first EOT position of the text-encoder output.

Importing this module does not import DGL; DGL is imported when a network is built.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor, nn

from relgen.errors import RelgenError
from relgen.graph._dgl import DGLGraph, import_dgl_nn
from relgen.methods.rrnet.graph import EOT, FEATURE_KEY, canonical_edge_types

__all__ = ["RelationGAT"]


class RelationGAT(nn.Module):
    """RRNet's two-layer heterogeneous GAT (``RGAT``).

    Layer 1: ``GATConv(in_dim -> hidden, heads)`` per edge type, summed per node type,
    heads concatenated to ``hidden * heads``, then ReLU. Layer 2:
    ``GATConv(hidden * heads -> out_dim, heads)`` per edge type, summed, then the mean over
    heads; no output activation. GATConv settings are DGL's defaults (negative slope
    0.2, no dropout, no residual, zero-initialised bias, one ``fc`` shared by source and
    destination), as in RRNet's released GNN.py.

    State-dict keys, for each edge type ``e`` in ``link_oe, link_or, link_re, link_ro,
    link_oo`` (plus ``link_ee`` when ``eot_self_loops``):

    * ``conv1.mods.e.fc.weight`` ``(hidden * heads, in_dim)``,
      ``conv1.mods.e.attn_l`` / ``attn_r`` ``(1, heads, hidden)``,
      ``conv1.mods.e.bias`` ``(hidden * heads,)``;
    * ``conv2.mods.e.fc.weight`` ``(out_dim * heads, hidden * heads)``,
      ``conv2.mods.e.attn_l`` / ``attn_r`` ``(1, heads, out_dim)``,
      ``conv2.mods.e.bias`` ``(out_dim * heads,)``.

    Args:
        in_dim: Node-feature width (token-embedding width = conditioning width).
        out_dim: Output width; equals the conditioning width so the delta can be added
            to the EOT embedding.
        hidden: Per-head width of layer 1.
        heads: Attention heads in both layers.
        eot_self_loops: Add a ``link_ee`` module for graphs built with EOT self-loops.
            Such a model has extra state-dict keys, so it cannot load a released
            checkpoint.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: int = 512,
        heads: int = 2,
        eot_self_loops: bool = False,
    ) -> None:
        super().__init__()
        sizes = {"in_dim": in_dim, "out_dim": out_dim, "hidden": hidden, "heads": heads}
        for name, value in sizes.items():
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"RelationGAT {name} must be a positive integer, got {value!r}")
        dglnn = import_dgl_nn()
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.hidden = hidden
        self.heads = heads
        self.eot_self_loops = eot_self_loops
        self.edge_types: tuple[str, ...] = tuple(
            etype for _, etype, _ in canonical_edge_types(eot_self_loops)
        )
        # HeteroGraphConv also switches allow_zero_in_degree on (DGL 1.1.3 and 2.1.0);
        # setting it here keeps zero-in-degree nodes at the bias in any DGL version.
        self.conv1 = dglnn.HeteroGraphConv(
            {
                etype: dglnn.GATConv(in_dim, hidden, num_heads=heads, allow_zero_in_degree=True)
                for etype in self.edge_types
            },
            aggregate="sum",
        )
        self.conv2 = dglnn.HeteroGraphConv(
            {
                etype: dglnn.GATConv(
                    hidden * heads, out_dim, num_heads=heads, allow_zero_in_degree=True
                )
                for etype in self.edge_types
            },
            aggregate="sum",
        )

    def _check_graph(self, graph: DGLGraph, feats: dict[str, Tensor]) -> None:
        """Raise ValueError if the graph's edge types or feature widths do not fit."""
        graph_etypes = {etype for _, etype, _ in graph.canonical_etypes}
        if graph_etypes != set(self.edge_types):
            raise ValueError(
                f"graph edge types {sorted(graph_etypes)} do not match the network's "
                f"{sorted(self.edge_types)}; build graph and network with the same "
                "eot_self_loops setting"
            )
        for ntype, feat in feats.items():
            if feat.shape[-1] != self.in_dim:
                raise ValueError(
                    f"'{ntype}' node features have width {feat.shape[-1]}, "
                    f"the network expects in_dim={self.in_dim}"
                )

    def forward(
        self, graph: DGLGraph, feats: dict[str, Tensor] | None = None
    ) -> dict[str, Tensor]:
        """Run both layers on a relation graph (or a ``dgl.batch`` of them).

        Args:
            graph: Graph from ``build_relation_graph`` or a batch of such graphs.
            feats: Optional ``{ntype: (N_ntype, in_dim)}`` input features; defaults to
                ``graph.nodes[ntype].data["h"]``.

        Returns:
            ``{ntype: (N_ntype, out_dim)}`` for ``object``, ``relation`` and ``eot``.
        """
        if feats is None:
            feats = {ntype: graph.nodes[ntype].data[FEATURE_KEY] for ntype in graph.ntypes}
        self._check_graph(graph, feats)
        # Layer 1: per-edge-type GAT summed per node type, heads concatenated, ReLU,
        # as RRNet's released GNN.py (RGAT).
        hidden = self.conv1(graph, feats)
        hidden = {ntype: torch.relu(h.flatten(1)) for ntype, h in hidden.items()}
        # Layer 2: per-edge-type GAT summed per node type, mean over heads, no activation,
        # as RRNet's released GNN.py (RGAT).
        out = self.conv2(graph, hidden)
        return {ntype: h.mean(dim=1) for ntype, h in out.items()}

    def eot_deltas(self, graph: DGLGraph) -> Tensor:
        """Return the adjustment vectors of every graph in ``graph``.

        Args:
            graph: One relation graph or a ``dgl.batch`` of ``G`` of them.

        Returns:
            ``(G, 2, out_dim)`` (``G = 1`` for an unbatched graph): ``[g, 0]`` is the delta
            for the object sentence of graph g's subject, ``[g, 1]`` the delta for graph
            g's relation prompt.
        """
        counts = graph.batch_num_nodes(EOT)
        if bool((counts != 2).any()):
            raise ValueError(
                f"every relation graph must have 2 '{EOT}' nodes, got counts {counts.tolist()}"
            )
        eot = self.forward(graph)[EOT]
        # dgl.batch concatenates each node type graph by graph, so rows come in pairs.
        return eot.reshape(int(counts.numel()), 2, self.out_dim)

    def load_official_state_dict(self, path: str | os.PathLike[str]) -> dict[str, Tensor]:
        """Load a released RRNet checkpoint (``gat_<R>``) into this network.

        The file is ``torch.save(gnn.state_dict(), ...)`` without an extension. It is
        read with ``weights_only=True`` and checked key by key against this network
        before loading.

        Args:
            path: The checkpoint file.

        Returns:
            The loaded state dict (``{key: tensor}``, on CPU).

        Raises:
            RelgenError: If the file is missing or unreadable, or its first missing,
                unexpected or mis-shaped key does not fit this network.
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise RelgenError(f"{path}: RRNet checkpoint file not found")
        try:
            state: Any = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for a bad file
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise RelgenError(
                f"{path}: cannot read RRNet checkpoint ({type(exc).__name__}: {first_line})"
            ) from exc
        if not isinstance(state, dict):
            raise RelgenError(
                f"{path}: expected a state dict (torch.save of gnn.state_dict()), "
                f"got {type(state).__name__}"
            )
        expected = self.state_dict()
        for key, ref in expected.items():
            if key not in state:
                raise RelgenError(f"{path}: missing key '{key}' expected by the RRNet network")
            value = state[key]
            if not isinstance(value, Tensor):
                raise RelgenError(f"{path}: key '{key}' is a {type(value).__name__}, not a tensor")
            if value.shape != ref.shape:
                raise RelgenError(
                    f"{path}: key '{key}' has shape {tuple(value.shape)}, the network "
                    f"(in_dim={self.in_dim}, hidden={self.hidden}, heads={self.heads}, "
                    f"out_dim={self.out_dim}) expects {tuple(ref.shape)}"
                )
        for key in state:
            if key not in expected:
                raise RelgenError(f"{path}: unexpected key '{key}' for the RRNet network")
        from relgen.tensorfile import check_finite

        check_finite(state, path, "RRNet network")
        self.load_state_dict(state, strict=True)
        return state

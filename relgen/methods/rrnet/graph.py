"""RRNet's per-prompt relation graph.

For a prompt "A R B" (for example "a book is placed on a bowl": A = book, R = placed,
B = bowl) RRNet builds one small directed heterograph:

* node type ``object``: 2 nodes ``[A, B]`` (subject first), features = input token
  embeddings of the first BPE token of each word, shape ``(2, D_tok)``;
* node type ``relation``: 1 node ``[R]``, the relation word's token embedding, ``(1, D_tok)``;
* node type ``eot``: 2 nodes, text-encoder outputs at the first EOT position, ``(2, D_eot)``:
  ``eot0`` for the object sentence "this is a photo of {A}" and ``eot1`` for the prompt.

Edges, as in RRNet's released ``GNN.py`` (``create_hg_A_ARB_self_loop``):

==========  ===========================  ==========================
edge type   canonical type               edges (src -> dst)
==========  ===========================  ==========================
link_oo     (object, link_oo, object)    A->A, B->B
link_or     (object, link_or, relation)  A->R
link_ro     (relation, link_ro, object)  R->B
link_oe     (object, link_oe, eot)       A->eot1, B->eot1, A->eot0
link_re     (relation, link_re, eot)     R->eot1
==========  ===========================  ==========================

No edge leaves an ``eot`` node and the ``eot`` and ``relation`` nodes have no self-loop,
so the EOT features never propagate. ``eot_self_loops=True`` adds the self-loops that the
released code has commented out (edge type ``link_ee``: eot0->eot0, eot1->eot1), which lets
each EOT node's own feature reach its output. This variant is not the released behaviour.

The object-swapped prompt "B R A" uses the same builder with roles swapped: objects
``[B, A]``, ``eot0`` from "this is a photo of {B}", ``eot1`` from the "B R A" prompt; see
:func:`build_pair_graphs`. Only edge direction (subject -> R -> object) tells the two apart.

In every supported backbone the token-embedding width equals the conditioning width
(768 for SD1.5, 1024 for SD2.x, 768 + 1280 = 2048 for SDXL with both encoders' rows
concatenated), so all node types share one feature width.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from relgen.errors import RelgenError
from relgen.graph._dgl import DGLGraph, import_dgl

__all__ = [
    "EDGE_TYPES",
    "EOT",
    "EOT_SELF_LOOP",
    "FEATURE_KEY",
    "OBJECT",
    "RELATION",
    "batch_graphs",
    "build_pair_graphs",
    "build_relation_graph",
    "canonical_edge_types",
]

OBJECT = "object"
RELATION = "relation"
EOT = "eot"
#: Node-feature key in ``graph.nodes[ntype].data``.
FEATURE_KEY = "h"

# Node and edge names as in RRNet's released GNN.py; edge lists are (src ids, dst ids),
# with object ids 0 = subject (A), 1 = object (B) and eot ids 0 = object sentence,
# 1 = relation prompt.
EDGE_TYPES: dict[tuple[str, str, str], tuple[list[int], list[int]]] = {
    (OBJECT, "link_oe", EOT): ([0, 1, 0], [1, 1, 0]),
    (OBJECT, "link_or", RELATION): ([0], [0]),
    (RELATION, "link_re", EOT): ([0], [1]),
    (RELATION, "link_ro", OBJECT): ([0], [1]),
    (OBJECT, "link_oo", OBJECT): ([0, 1], [0, 1]),
}
#: The optional EOT self-loops (commented out in RRNet's released GNN.py).
EOT_SELF_LOOP: tuple[tuple[str, str, str], tuple[list[int], list[int]]] = (
    (EOT, "link_ee", EOT),
    ([0, 1], [0, 1]),
)

_NUM_NODES = {OBJECT: 2, RELATION: 1, EOT: 2}


def canonical_edge_types(eot_self_loops: bool = False) -> list[tuple[str, str, str]]:
    """Return the canonical edge types of a relation graph.

    Args:
        eot_self_loops: Include the optional ``(eot, link_ee, eot)`` type.

    Returns:
        ``(src type, edge type, dst type)`` triples in a fixed order.
    """
    types = list(EDGE_TYPES)
    if eot_self_loops:
        types.append(EOT_SELF_LOOP[0])
    return types


def _as_rows(name: str, feat: Tensor, rows: int) -> Tensor:
    """Check that ``feat`` is ``(rows, D)`` (or ``(D,)`` when ``rows == 1``) and return 2-D."""
    if not isinstance(feat, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(feat).__name__}")
    if feat.dim() == 1 and rows == 1:
        feat = feat.unsqueeze(0)
    if feat.dim() != 2 or feat.shape[0] != rows:
        expected = "(1, D) or (D,)" if rows == 1 else f"({rows}, D)"
        raise ValueError(f"{name} must have shape {expected}, got {tuple(feat.shape)}")
    if not feat.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {feat.dtype}")
    return feat


def build_relation_graph(
    obj_feats: Tensor,
    rel_feat: Tensor,
    eot_feats: Tensor,
    *,
    eot_self_loops: bool = False,
) -> DGLGraph:
    """Build the RRNet graph of one relation prompt "A R B".

    Args:
        obj_feats: ``(2, D_tok)`` token embeddings of ``[subject, object]`` (``[A, B]``).
        rel_feat: ``(1, D_tok)`` or ``(D_tok,)`` token embedding of the relation word R.
        eot_feats: ``(2, D_eot)`` text-encoder outputs at the first EOT position:
            row 0 for the subject's object sentence "this is a photo of {A}", row 1 for
            the relation prompt itself.
        eot_self_loops: Add ``link_ee`` self-loops on the two EOT nodes (not the released
            behaviour; it makes each EOT output depend on that node's own feature).

    Returns:
        A ``dgl.DGLGraph`` heterograph on the features' device with node types
        ``object`` (2), ``relation`` (1) and ``eot`` (2), the edge types listed in the
        module docstring, and the features in ``graph.nodes[ntype].data["h"]``.

    Raises:
        RelgenError: If ``D_tok != D_eot`` (the backbone's token-embedding width differs
            from its conditioning width, which no supported backbone does).
        ValueError: If a feature tensor has the wrong number of rows or dimensions.
    """
    dgl = import_dgl()
    obj_feats = _as_rows("obj_feats", obj_feats, 2)
    rel_feat = _as_rows("rel_feat", rel_feat, 1)
    eot_feats = _as_rows("eot_feats", eot_feats, 2)
    if rel_feat.shape[1] != obj_feats.shape[1]:
        raise ValueError(
            f"rel_feat width {rel_feat.shape[1]} differs from obj_feats width "
            f"{obj_feats.shape[1]}; both must be rows of the same token-embedding table"
        )
    if eot_feats.shape[1] != obj_feats.shape[1]:
        raise RelgenError(
            f"RRNet needs token embeddings and text-encoder outputs of equal width, got "
            f"{obj_feats.shape[1]} (token embedding) and {eot_feats.shape[1]} (EOT output); "
            "use a backbone whose token-embedding width equals its conditioning width"
        )
    device = obj_feats.device
    if rel_feat.device != device or eot_feats.device != device:
        raise ValueError(
            f"node features are on different devices: obj_feats {device}, "
            f"rel_feat {rel_feat.device}, eot_feats {eot_feats.device}"
        )

    edges = dict(EDGE_TYPES)
    if eot_self_loops:
        edges[EOT_SELF_LOOP[0]] = EOT_SELF_LOOP[1]
    data = {
        etype: (
            torch.tensor(src, dtype=torch.int64, device=device),
            torch.tensor(dst, dtype=torch.int64, device=device),
        )
        for etype, (src, dst) in edges.items()
    }
    graph = dgl.heterograph(data, num_nodes_dict=dict(_NUM_NODES), device=device)
    graph.nodes[OBJECT].data[FEATURE_KEY] = obj_feats
    graph.nodes[RELATION].data[FEATURE_KEY] = rel_feat
    graph.nodes[EOT].data[FEATURE_KEY] = eot_feats
    return graph


def build_pair_graphs(
    a_feat: Tensor,
    b_feat: Tensor,
    rel_feat: Tensor,
    eot_obj_a: Tensor,
    eot_obj_b: Tensor,
    eot_arb: Tensor,
    eot_bra: Tensor,
    *,
    eot_self_loops: bool = False,
) -> tuple[DGLGraph, DGLGraph]:
    """Build the graphs of the two object-swapped prompts "A R B" and "B R A".

    Batch them with :func:`batch_graphs` to run both through the network in one call;
    :meth:`relgen.methods.rrnet.gnn.RelationGAT.eot_deltas` then returns ``(2, 2, D)``
    with ``[0, 0]`` = A's object-sentence delta, ``[0, 1]`` = the "A R B" delta,
    ``[1, 0]`` = B's object-sentence delta and ``[1, 1]`` = the "B R A" delta.

    Args:
        a_feat: ``(D,)`` or ``(1, D)`` token embedding of A.
        b_feat: ``(D,)`` or ``(1, D)`` token embedding of B.
        rel_feat: ``(D,)`` or ``(1, D)`` token embedding of R.
        eot_obj_a: ``(D,)`` or ``(1, D)`` EOT output of "this is a photo of {A}".
        eot_obj_b: ``(D,)`` or ``(1, D)`` EOT output of "this is a photo of {B}".
        eot_arb: ``(D,)`` or ``(1, D)`` EOT output of the "A R B" prompt.
        eot_bra: ``(D,)`` or ``(1, D)`` EOT output of the "B R A" prompt.
        eot_self_loops: Passed to :func:`build_relation_graph`.

    Returns:
        ``(graph_arb, graph_bra)``: ``graph_arb`` has objects ``[A, B]`` and EOT nodes
        ``[eot_obj_a, eot_arb]``; ``graph_bra`` has objects ``[B, A]`` and EOT nodes
        ``[eot_obj_b, eot_bra]``.
    """
    a, b = _as_rows("a_feat", a_feat, 1), _as_rows("b_feat", b_feat, 1)
    eot_a, eot_b = _as_rows("eot_obj_a", eot_obj_a, 1), _as_rows("eot_obj_b", eot_obj_b, 1)
    arb, bra = _as_rows("eot_arb", eot_arb, 1), _as_rows("eot_bra", eot_bra, 1)
    graph_arb = build_relation_graph(
        torch.cat([a, b]), rel_feat, torch.cat([eot_a, arb]), eot_self_loops=eot_self_loops
    )
    graph_bra = build_relation_graph(
        torch.cat([b, a]), rel_feat, torch.cat([eot_b, bra]), eot_self_loops=eot_self_loops
    )
    return graph_arb, graph_bra


def batch_graphs(graphs: Sequence[DGLGraph]) -> DGLGraph:
    """Batch relation graphs into one graph (``dgl.batch``) for a single network call.

    Nodes of each type are concatenated graph by graph, so the EOT outputs of a batch of
    ``G`` graphs reshape to ``(G, 2, D)``.

    Args:
        graphs: Graphs from :func:`build_relation_graph`, all with the same edge types.

    Returns:
        The batched ``dgl.DGLGraph``.
    """
    dgl = import_dgl()
    return dgl.batch(list(graphs))

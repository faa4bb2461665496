"""RRNet relation graph and graph attention network (pure torch/DGL, no diffusion model)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from relgen.errors import RelgenError
from relgen.graph._dgl import import_dgl, import_dgl_nn
from relgen.methods.rrnet.gnn import RelationGAT
from relgen.methods.rrnet.graph import (
    batch_graphs,
    build_pair_graphs,
    build_relation_graph,
)

D = 16  # feature width of the small test graphs
HIDDEN = 8
HEADS = 2
ETYPES = ("link_oe", "link_or", "link_re", "link_ro", "link_oo")
# Edge types whose destination nodes all have exactly one in-edge in the released graph.
SINGLE_IN_EDGE = ("link_or", "link_re", "link_ro", "link_oo")


def _words(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random stand-ins for "a book is placed on a bowl": A=book, R=placed, B=bowl."""
    gen = torch.Generator().manual_seed(seed)
    names = ("book", "placed", "bowl", "eot_book", "eot_bowl", "eot_arb", "eot_bra")
    return {name: torch.randn(D, generator=gen) for name in names}


def _pair(w: dict[str, torch.Tensor], **kwargs):
    return build_pair_graphs(
        w["book"], w["bowl"], w["placed"],
        w["eot_book"], w["eot_bowl"], w["eot_arb"], w["eot_bra"], **kwargs,
    )


def _net(seed: int = 0, **kwargs) -> RelationGAT:
    torch.manual_seed(seed)
    return RelationGAT(D, D, hidden=HIDDEN, heads=HEADS, **kwargs)


def _edges(graph, etype: str) -> tuple[list[int], list[int]]:
    src, dst = graph.edges(etype=etype)
    return src.tolist(), dst.tolist()


def _mod(layer, etype: str):
    return layer.mods[etype]


def _feats(graph) -> dict[str, torch.Tensor]:
    return {nt: graph.nodes[nt].data["h"] for nt in graph.ntypes}


# --------------------------------------------------------------------------- DGL import


def test_import_gnn_module_does_not_import_dgl():
    code = (
        "import sys, relgen.methods.rrnet.gnn, relgen.methods.rrnet.graph; "
        "assert 'dgl' not in sys.modules, 'dgl imported at module import'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=600)


def test_graphbolt_stub_is_safe_for_introspection():
    dgl = import_dgl()
    assert import_dgl() is dgl
    stub = sys.modules["dgl.graphbolt"]
    if getattr(stub, "__file__", None) is not None:
        pytest.skip("a real GraphBolt is loadable with this torch; no stub installed")
    # inspect.getmodule probes hasattr(module, "__file__"): dunders must raise AttributeError.
    assert not hasattr(stub, "__file__")
    assert not hasattr(stub, "__path__")
    with pytest.raises(ImportError, match="GraphBolt"):
        stub.SomeSampler  # noqa: B018


# --------------------------------------------------------------------------- graph


def test_relation_graph_nodes_and_edges_for_book_placed_bowl():
    w = _words()
    graph, _ = _pair(w)
    assert {nt: graph.num_nodes(nt) for nt in graph.ntypes} == {
        "object": 2, "relation": 1, "eot": 2,
    }
    assert sorted(graph.canonical_etypes) == sorted([
        ("object", "link_oo", "object"),
        ("object", "link_or", "relation"),
        ("relation", "link_ro", "object"),
        ("object", "link_oe", "eot"),
        ("relation", "link_re", "eot"),
    ])
    # object ids: 0 = book (A), 1 = bowl (B); eot ids: 0 = "this is a photo of book", 1 = prompt
    assert _edges(graph, "link_oo") == ([0, 1], [0, 1])
    assert _edges(graph, "link_or") == ([0], [0])
    assert _edges(graph, "link_ro") == ([0], [1])
    assert _edges(graph, "link_oe") == ([0, 1, 0], [1, 1, 0])
    assert _edges(graph, "link_re") == ([0], [1])
    assert graph.num_edges() == 8
    assert torch.equal(graph.nodes["object"].data["h"], torch.stack([w["book"], w["bowl"]]))
    assert torch.equal(graph.nodes["relation"].data["h"], w["placed"].unsqueeze(0))
    assert torch.equal(graph.nodes["eot"].data["h"], torch.stack([w["eot_book"], w["eot_arb"]]))


def test_swapped_graph_mirrors_structure_with_roles_swapped():
    w = _words()
    g_arb, g_bra = _pair(w)
    assert g_bra.canonical_etypes == g_arb.canonical_etypes
    for etype in ETYPES:
        assert _edges(g_bra, etype) == _edges(g_arb, etype)
    assert torch.equal(g_bra.nodes["object"].data["h"], torch.stack([w["bowl"], w["book"]]))
    assert torch.equal(g_bra.nodes["relation"].data["h"], w["placed"].unsqueeze(0))
    assert torch.equal(g_bra.nodes["eot"].data["h"], torch.stack([w["eot_bowl"], w["eot_bra"]]))
    # Same builder called directly with swapped roles gives the same graph.
    direct = build_relation_graph(
        torch.stack([w["bowl"], w["book"]]), w["placed"], torch.stack([w["eot_bowl"], w["eot_bra"]])
    )
    for nt in direct.ntypes:
        assert torch.equal(direct.nodes[nt].data["h"], g_bra.nodes[nt].data["h"])


def test_eot_self_loops_add_only_link_ee():
    graph, _ = _pair(_words(), eot_self_loops=True)
    assert ("eot", "link_ee", "eot") in graph.canonical_etypes
    assert len(graph.canonical_etypes) == 6
    assert _edges(graph, "link_ee") == ([0, 1], [0, 1])
    assert _edges(graph, "link_oe") == ([0, 1, 0], [1, 1, 0])


def test_graph_rejects_mismatched_widths_and_shapes():
    with pytest.raises(RelgenError, match="equal width.*16.*12"):
        build_relation_graph(torch.randn(2, 16), torch.randn(16), torch.randn(2, 12))
    with pytest.raises(ValueError, match="obj_feats"):
        build_relation_graph(torch.randn(3, 16), torch.randn(16), torch.randn(2, 16))
    with pytest.raises(ValueError, match="rel_feat"):
        build_relation_graph(torch.randn(2, 16), torch.randn(2, 16), torch.randn(2, 16))


# --------------------------------------------------------------------------- one GAT layer


def _set_distinct_biases(layer) -> dict[str, torch.Tensor]:
    """Give every edge type's bias a distinct constant; return {etype: (heads*hidden,)}."""
    values = {"link_oo": 1.0, "link_or": 10.0, "link_ro": 100.0, "link_oe": 1000.0,
              "link_re": 10000.0}
    with torch.no_grad():
        for etype, value in values.items():
            bias = _mod(layer, etype).bias
            bias.copy_(value + torch.arange(bias.numel(), dtype=bias.dtype) / 64)
    return {etype: _mod(layer, etype).bias.detach().clone() for etype in values}


def test_zero_in_degree_nodes_receive_exactly_the_edge_type_bias():
    net = _net()
    graph, _ = _pair(_words())
    bias = _set_distinct_biases(net.conv1)
    feats = _feats(graph)
    with torch.no_grad():
        out = {nt: h.flatten(1) for nt, h in net.conv1(graph, feats).items()}

    def w(etype, x):  # W^r x; attention over a single in-edge is exactly 1
        return _mod(net.conv1, etype).fc(x)

    h_a, h_b = feats["object"]
    (h_r,) = feats["relation"]
    # A: self-loop, no link_ro in-edge -> plus exactly b_ro.
    exp_a = w("link_oo", h_a) + bias["link_oo"] + bias["link_ro"]
    # B: self-loop plus R -> B.
    exp_b = w("link_oo", h_b) + bias["link_oo"] + w("link_ro", h_r) + bias["link_ro"]
    # R: only A -> R.
    exp_r = w("link_or", h_a) + bias["link_or"]
    # eot0: only A -> eot0 via link_oe, no link_re in-edge -> plus exactly b_re.
    exp_eot0 = w("link_oe", h_a) + bias["link_oe"] + bias["link_re"]
    torch.testing.assert_close(out["object"][0], exp_a, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(out["object"][1], exp_b, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(out["relation"][0], exp_r, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(out["eot"][0], exp_eot0, rtol=1e-5, atol=1e-3)
    # With all fc weights zeroed, every node is the sum of the biases of the edge types
    # ending in its type, whether or not it has in-edges of that type.
    with torch.no_grad():
        for etype in ETYPES:
            _mod(net.conv1, etype).fc.weight.zero_()
        out0 = {nt: h.flatten(1) for nt, h in net.conv1(graph, feats).items()}
    obj_bias = bias["link_oo"] + bias["link_ro"]
    eot_bias = bias["link_oe"] + bias["link_re"]
    assert torch.equal(out0["object"], torch.stack([obj_bias, obj_bias]))
    assert torch.equal(out0["relation"], bias["link_or"].unsqueeze(0))
    assert torch.equal(out0["eot"], torch.stack([eot_bias, eot_bias]))


def test_heterographconv_allows_zero_in_degree_for_default_gatconv():
    dglnn = import_dgl_nn()
    dgl = import_dgl()
    graph, _ = _pair(_words())
    # A stand-alone GATConv refuses zero-in-degree nodes (A has no link_ro in-edge)...
    plain = dglnn.GATConv(D, HIDDEN, num_heads=HEADS)
    with pytest.raises(dgl.DGLError, match="0-in-degree"):
        plain(graph["relation", "link_ro", "object"], (torch.randn(1, D), torch.randn(2, D)))
    # ...but HeteroGraphConv switches allow_zero_in_degree on for its sub-modules.
    conv = dglnn.HeteroGraphConv(
        {etype: dglnn.GATConv(D, HIDDEN, num_heads=HEADS) for etype in ETYPES}, aggregate="sum"
    )
    out = conv(graph, _feats(graph))
    assert out["eot"].shape == (2, HEADS, HIDDEN)


def _manual_gat(mod, h_src, h_dst, src, dst, n_dst, slope=0.2):
    """One GATConv by hand: (n_dst, heads, out) with softmax over in-edges per head."""
    heads, out = mod.attn_l.shape[1:]
    z_src = (h_src @ mod.fc.weight.T).view(-1, heads, out)
    z_dst = (h_dst @ mod.fc.weight.T).view(-1, heads, out)
    el = (z_src * mod.attn_l).sum(-1)  # (N_src, heads)
    er = (z_dst * mod.attn_r).sum(-1)  # (N_dst, heads)
    logits = F.leaky_relu(el[src] + er[dst], negative_slope=slope)  # (E, heads)
    result = torch.zeros(n_dst, heads, out)
    for i in range(n_dst):
        edges = (dst == i).nonzero().flatten()
        if edges.numel():
            alpha = torch.softmax(logits[edges], dim=0)  # over in-edges, per head
            result[i] = (alpha.unsqueeze(-1) * z_src[src[edges]]).sum(0)
    return result + mod.bias.view(heads, out)


def _manual_layer(layer, graph, feats):
    """Sum of per-edge-type manual GATs per destination type: {ntype: (N, heads, out)}."""
    out = {}
    for stype, etype, dtype in graph.canonical_etypes:
        src, dst = graph.edges(etype=etype)
        h = _manual_gat(_mod(layer, etype), feats[stype], feats[dtype], src, dst,
                        graph.num_nodes(dtype))
        out[dtype] = out.get(dtype, 0) + h
    return out


def test_gat_layer_matches_manual_attention_for_two_in_edges():
    net = _net(seed=3)
    graph, _ = _pair(_words(seed=3))
    feats = _feats(graph)
    oe = _mod(net.conv1, "link_oe")
    with torch.no_grad():
        oe.bias.normal_()
        _mod(net.conv1, "link_re").bias.normal_()
        # Choose attn_r so that er(eot1) = -(el_A + el_B) / 2 in each head: the two
        # logits into eot1 then have opposite signs and the LeakyReLU slope matters.
        z_obj = oe.fc(feats["object"]).view(2, HEADS, HIDDEN)
        z_eot1 = oe.fc(feats["eot"][1]).view(HEADS, HIDDEN)
        el = (z_obj * oe.attn_l).sum(-1)  # (2, heads)
        target = -(el[0] + el[1]) / 2
        oe.attn_r.copy_((target / z_eot1.pow(2).sum(-1)).view(1, HEADS, 1) * z_eot1)
        got = net.conv1(graph, feats)["eot"][1]  # (heads, hidden)

        src = torch.tensor([0, 1, 0])
        dst = torch.tensor([1, 1, 0])
        re = _mod(net.conv1, "link_re")
        expect_re = _manual_gat(re, feats["relation"], feats["eot"], torch.tensor([0]),
                                torch.tensor([1]), 2)[1]
        expect = _manual_gat(oe, feats["object"], feats["eot"], src, dst, 2)[1] + expect_re
        linear = _manual_gat(oe, feats["object"], feats["eot"], src, dst, 2, slope=1.0)[1]
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-5)
    # The check is sensitive to the slope: without the LeakyReLU the result differs.
    assert (linear + expect_re - expect).abs().max() > 1e-3


def test_first_layer_matches_manual_sum_over_edge_types():
    net = _net(seed=5)
    graph, _ = _pair(_words(seed=5))
    feats = _feats(graph)
    with torch.no_grad():
        for etype in ETYPES:
            _mod(net.conv1, etype).bias.normal_()
        got = net.conv1(graph, feats)
        expect = _manual_layer(net.conv1, graph, feats)
    for nt in graph.ntypes:
        torch.testing.assert_close(got[nt], expect[nt], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- network


def test_network_matches_manual_two_layers():
    net = _net(seed=7)
    graph, _ = _pair(_words(seed=7))
    feats = _feats(graph)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(std=0.3)
        got = net(graph)
        layer1 = _manual_layer(net.conv1, graph, feats)
        hidden = {nt: torch.relu(h.flatten(1)) for nt, h in layer1.items()}
        layer2 = _manual_layer(net.conv2, graph, hidden)
        expect = {nt: h.mean(dim=1) for nt, h in layer2.items()}
    for nt in graph.ntypes:
        torch.testing.assert_close(got[nt], expect[nt], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(net.eot_deltas(graph)[0], expect["eot"], rtol=1e-4, atol=1e-4)



def test_relation_delta_does_not_depend_on_eot0_feature():
    w = _words()
    w2 = dict(w, eot_book=w["eot_book"] * -3.0 + 1.0)
    net = _net()
    with torch.no_grad():
        for etype in ETYPES:  # non-zero biases so nothing is trivially zero
            _mod(net.conv1, etype).bias.normal_()
            _mod(net.conv2, etype).bias.normal_()
        base = net.eot_deltas(_pair(w)[0])[0]
        moved = net.eot_deltas(_pair(w2)[0])[0]
    assert base.shape == (2, D)
    assert torch.equal(base, moved)  # both rows, bit for bit

    net_loops = _net(eot_self_loops=True)
    with torch.no_grad():
        base = net_loops.eot_deltas(_pair(w, eot_self_loops=True)[0])[0]
        moved = net_loops.eot_deltas(_pair(w2, eot_self_loops=True)[0])[0]
    assert (base[0] - moved[0]).abs().max() > 1e-3  # object-sentence delta now uses eot0
    assert torch.equal(base[1], moved[1])  # no edge carries eot0 to eot1


def test_batched_pair_matches_single_graphs():
    net = _net()
    g_arb, g_bra = _pair(_words())
    with torch.no_grad():
        batched = net.eot_deltas(batch_graphs([g_arb, g_bra]))
        single = torch.cat([net.eot_deltas(g_arb), net.eot_deltas(g_bra)])
        out = net(g_arb)
    assert batched.shape == (2, 2, D)
    torch.testing.assert_close(batched, single, rtol=1e-6, atol=1e-6)
    assert {nt: tuple(h.shape) for nt, h in out.items()} == {
        "object": (2, D), "relation": (1, D), "eot": (2, D),
    }
    # The swapped prompt gives a different delta.
    assert (batched[0, 1] - batched[1, 1]).abs().max() > 1e-3


def test_network_rejects_graph_with_other_edge_types():
    graph, _ = _pair(_words(), eot_self_loops=True)
    with pytest.raises(ValueError, match="eot_self_loops"):
        _net()(graph)


def test_parameter_count_full_size():
    net = RelationGAT(1024, 1024, hidden=512, heads=2)
    # Per edge type:
    #   conv1: fc 1024*1024 + attn_l, attn_r 2*512 each + bias 1024   = 1_051_648
    #   conv2: fc 2048*1024 + attn_l, attn_r 2*1024 each + bias 2048  = 2_103_296
    # 5 edge types: 5 * (1_051_648 + 2_103_296) = 15_774_720
    assert sum(p.numel() for p in net.parameters()) == 15_774_720


def test_state_dict_keys_match_official_names_and_shapes():
    net = RelationGAT(6, 10, hidden=4, heads=3)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    expect = {}
    for etype in ETYPES:
        expect[f"conv1.mods.{etype}.fc.weight"] = (12, 6)
        expect[f"conv1.mods.{etype}.attn_l"] = (1, 3, 4)
        expect[f"conv1.mods.{etype}.attn_r"] = (1, 3, 4)
        expect[f"conv1.mods.{etype}.bias"] = (12,)
        expect[f"conv2.mods.{etype}.fc.weight"] = (30, 12)
        expect[f"conv2.mods.{etype}.attn_l"] = (1, 3, 10)
        expect[f"conv2.mods.{etype}.attn_r"] = (1, 3, 10)
        expect[f"conv2.mods.{etype}.bias"] = (30,)
    assert shapes == expect


def test_official_checkpoint_roundtrip(tmp_path):
    net = _net(seed=1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    path = tmp_path / "gat_placed"
    torch.save(net.state_dict(), path)
    fresh = _net(seed=2)
    graph = batch_graphs(_pair(_words()))
    with torch.no_grad():
        before = fresh.eot_deltas(graph)
        loaded = fresh.load_official_state_dict(path)
        after = fresh.eot_deltas(graph)
        expected = net.eot_deltas(graph)
    assert set(loaded) == set(net.state_dict())
    assert torch.equal(after, expected)
    assert not torch.equal(before, expected)


def test_bad_checkpoints_raise_one_line_relgen_error(tmp_path):
    net = _net()
    good = net.state_dict()

    def save(name, state):
        path = tmp_path / name
        torch.save(state, path)
        return path

    renamed = dict(good)
    renamed["conv1.mods.link_xx.fc.weight"] = renamed.pop("conv1.mods.link_oe.fc.weight")
    extra = dict(good, **{"conv2.mods.link_oe.res_fc.weight": torch.zeros(2, 2)})
    reshaped = dict(good, **{"conv2.mods.link_re.bias": torch.zeros(D * HEADS + 1)})
    cases = {
        save("gat_renamed", renamed): "missing key 'conv1.mods.link_oe.fc.weight'",
        save("gat_extra", extra): "unexpected key 'conv2.mods.link_oe.res_fc.weight'",
        save("gat_shape", reshaped): r"'conv2.mods.link_re.bias' has shape \(33,\).*\(32,\)",
        save("gat_list", [1, 2]): "expected a state dict",
        tmp_path / "gat_missing": "not found",
    }
    (tmp_path / "gat_garbage").write_bytes(b"not a torch file")
    cases[tmp_path / "gat_garbage"] = "cannot read"
    for path, message in cases.items():
        with pytest.raises(RelgenError, match=message) as info:
            _net().load_official_state_dict(path)
        text = str(info.value)
        assert text.startswith(str(path) + ":")
        assert "\n" not in text


# --------------------------------------------------------------------------- gradients


def _grads(net: RelationGAT) -> dict[str, torch.Tensor | None]:
    return {name: p.grad for name, p in net.named_parameters()}


def test_gradients_through_batched_pair_all_node_outputs():
    net = _net()
    graph = batch_graphs(_pair(_words()))
    gen = torch.Generator().manual_seed(0)
    out = net(graph)
    loss = sum((h * torch.randn(h.shape, generator=gen)).sum() for h in out.values())
    loss.backward()
    grads = _grads(net)
    assert all(g is not None for g in grads.values())
    for layer in ("conv1", "conv2"):
        for etype in ETYPES:
            for leaf in ("fc.weight", "bias"):
                assert grads[f"{layer}.mods.{etype}.{leaf}"].abs().sum() > 0
            # A softmax over a single in-edge is constant 1: no attention gradient.
            for leaf in ("attn_l", "attn_r"):
                if etype in SINGLE_IN_EDGE:
                    assert torch.equal(grads[f"{layer}.mods.{etype}.{leaf}"],
                                       torch.zeros_like(grads[f"{layer}.mods.{etype}.{leaf}"]))
        # eot1 has two link_oe in-edges (A and B), so the source attention learns.
        assert grads[f"{layer}.mods.link_oe.attn_l"].abs().sum() > 0


def test_gradients_from_eot_deltas_only():
    """The training signal uses only the EOT outputs; map which parameters it reaches."""
    net = _net()
    # With conv2's link_oe destination attention at zero, the layer-1 EOT features have
    # no path to the output (they only enter as the destination term of that logit).
    with torch.no_grad():
        _mod(net.conv2, "link_oe").attn_r.zero_()
    graph = batch_graphs(_pair(_words()))
    net.eot_deltas(graph).pow(2).sum().backward()
    grads = _grads(net)

    def nonzero(name):
        return grads[name] is not None and grads[name].abs().sum() > 0

    # Layer 2 modules that end in object/relation nodes never reach the EOT outputs.
    for etype in ("link_oo", "link_or", "link_ro"):
        for leaf in ("fc.weight", "bias", "attn_l", "attn_r"):
            assert not nonzero(f"conv2.mods.{etype}.{leaf}")
    for etype in ("link_oe", "link_re"):
        assert nonzero(f"conv2.mods.{etype}.fc.weight")
        assert nonzero(f"conv2.mods.{etype}.bias")
    assert nonzero("conv2.mods.link_oe.attn_l")
    # Layer 1 reaches the output through the object and relation nodes only.
    for etype in ("link_oo", "link_or", "link_ro"):
        assert nonzero(f"conv1.mods.{etype}.fc.weight")
        assert nonzero(f"conv1.mods.{etype}.bias")
    for etype in ("link_oe", "link_re"):
        for leaf in ("fc.weight", "bias", "attn_l", "attn_r"):
            assert not nonzero(f"conv1.mods.{etype}.{leaf}")

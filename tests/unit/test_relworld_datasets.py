"""The relworld dataset options: each writes its official layout and reads back through it."""

from __future__ import annotations

import pytest

from relgen.data.registry import open_dataset
from relgen.errors import ConfigError
from relgen.testing import compose


def test_relworld_reversion_defaults_to_the_heldout_relation(tmp_path):
    cfg = compose("method=reversion", "dataset=relworld_reversion")
    data = open_dataset(cfg.dataset, str(tmp_path)).load()
    assert len(data.items) == 10  # the exemplar count of the dataset option
    templates = [t for item in data.items for t in item.templates]
    assert all("{}" in t for t in templates)
    assert "relworld_reversion" in str(open_dataset(cfg.dataset, str(tmp_path)).root)


def test_relworld_rrnet_holds_the_unseen_direction_of_each_biased_pair(tmp_path):
    cfg = compose("method=rrnet", "dataset=relworld_rrnet")
    data = open_dataset(cfg.dataset, str(tmp_path)).load()
    assert sorted((r.A, r.R, r.B) for r in data) == [("diamond", "left", "triangle"), ("square", "above", "circle")]
    cfg = compose("method=rrnet", "dataset=relworld_rrnet", "dataset.relations=[cross below circle]")
    (only,) = open_dataset(cfg.dataset, str(tmp_path)).load()
    assert (only.A, only.R, only.B) == ("cross", "below", "circle")
    bad = compose("method=rrnet", "dataset=relworld_rrnet", "dataset.relations=[above]")
    with pytest.raises(ConfigError, match="dataset.relations"):
        open_dataset(bad.dataset, str(tmp_path)).load()


def test_relworld_dreamrelation_items(tmp_path):
    cfg = compose("method=relationbooth", "dataset=relworld_dreamrelation", "dataset.num_items=2")
    data = open_dataset(cfg.dataset, str(tmp_path)).load()
    assert len(data) == 2


def test_relworld_dreamrelation_plain_identity_is_named_by_its_class(tmp_path):
    cfg = compose("method=relationbooth", "dataset=relworld_dreamrelation", "dataset.num_items=2",
                  "dataset.identity=cyan cross", "dataset.relations=[on_top_of]")
    handle = open_dataset(cfg.dataset, str(tmp_path))
    data = handle.load()
    assert [item.entities[0] for item in data] == ["cross", "cross"]
    # another identity is another cached folder, never the first one's
    other = compose("method=relationbooth", "dataset=relworld_dreamrelation", "dataset.num_items=2",
                    "dataset.identity=red cross", "dataset.relations=[on_top_of]")
    assert open_dataset(other.dataset, str(tmp_path)).root != handle.root
    assert all(item.prompt.startswith("A cross is on top of a ") for item in data)
    bad = compose("method=relationbooth", "dataset=relworld_dreamrelation", "dataset.identity=cross cyan")
    with pytest.raises(ConfigError, match="dataset.identity 'cross cyan'"):
        open_dataset(bad.dataset, str(tmp_path / "bad")).load()


def test_relationbooth_relworld_preset():
    cfg = compose("experiment=relationbooth_relworld")
    assert (cfg.method.name, cfg.backbone.name, cfg.dataset.name) == ("relationbooth", "relworld3",
                                                                      "relworld_dreamrelation")
    assert cfg.dataset.identity == "cyan cross" and list(cfg.dataset.relations) == ["on_top_of"]
    assert (cfg.method.max_steps, cfg.method.lr) == (300, 1e-3)
    assert cfg.method.scale == 0.0 and cfg.method.negative_prompt == ""
    assert cfg.method.cal_layer_rule == "relative"  # a 64 px model: every grid is under 32 x 32

"""The declared plugin contract: names and schemas come from the method, hook defaults, the one
atomic-write module and the one word splitter."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

import pytest
from hydra.core.config_store import ConfigStore

from relgen import atomic, registry
from relgen.config import MethodConfig
from relgen.errors import ConfigError, WriteError
from relgen.plugin import Artifact, EvalCondition, Method
from relgen.text import word_index, words


@dataclass
class _ProbeConfig(MethodConfig):
    name: str = "probe_method"


class _Probe(Method):
    """A probe method: one line for relgen.list."""

    config_class = _ProbeConfig


def test_a_method_name_and_schema_are_written_once():
    assert _Probe.name == "probe_method"  # from the schema's default
    try:
        registry.register_method(_Probe)
        entry = registry.METHODS.entries["probe_method"]
        assert (entry.target, entry.summary) == (_Probe, "A probe method: one line for relgen.list.")
        assert "probe_method.yaml" in ConfigStore.instance().repo["schema"]["method"]
    finally:
        registry.METHODS.entries.pop("probe_method", None)

    @dataclass
    class Nameless(MethodConfig):
        rank: int = 1

    with pytest.raises(ConfigError, match=r"^Nameless: a method's config dataclass needs a 'name' default"):
        registry.register_method("somewhere:Nowhere", Nameless)


def test_the_built_ins_declare_their_official_formats():
    importable = {n: registry.get_method(n) for n in registry.list_methods() if registry.get_method(n).official_format}
    assert sorted(importable) == ["relationbooth", "reversion", "rrnet"]
    assert importable["rrnet"].official_words == ("A", "R", "B", "ARB", "BRA")
    assert registry.get_method("textual_inversion").official_words == ()
    with pytest.raises(ConfigError, match="^method textual_inversion reads no official checkpoint$"):
        registry.get_method("textual_inversion").import_official(None, None, {})


def test_optional_hooks_do_nothing_by_default():
    art = Artifact()
    assert (art.token, art.accepts_negative_prompt) == (None, False)
    assert art.grid_columns(None, ["p"], None, None) is None
    assert art.benchmark_prompts() == {} and art.prompt_options(None, "p") == {}
    assert art.evaluation_conditions(None) == [EvalCondition("method", {}, False)]
    assert _Probe.check_config(None) == [] and _Probe.check_data(None, []) is None


def test_a_failed_atomic_write_leaves_nothing_and_names_the_file(tmp_path, monkeypatch):
    atomic.write_json(tmp_path / "a.json", {"x": 1})
    assert (tmp_path / "a.json").read_text() == '{\n  "x": 1\n}\n'

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(WriteError, match=r"a\.json: cannot write the summary \(No space left on device\)"):
        atomic.write_json(tmp_path / "a.json", {"x": 2}, "summary")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    assert (tmp_path / "a.json").read_text() == '{\n  "x": 1\n}\n'
    monkeypatch.undo()
    with pytest.raises(RuntimeError):
        with atomic.folder(tmp_path / "out") as tmp:
            (tmp / "half.txt").write_text("x")
            raise RuntimeError("stopped half-way")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    with atomic.folder(tmp_path / "out") as tmp:
        (tmp / "whole.txt").write_text("x")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["whole.txt"]


def test_one_word_splitter():
    assert words("A (red) Circle, ABOVE a square.") == ["a", "red", "circle", "above", "a", "square"]
    assert word_index("a cat is on top of a box", "on top of") == 3
    assert word_index("a cat is on topping", "on top") == -1

"""relgen.generate and relgen.import_official: typed Hydra command lines (a bad value or a misspelt
key is one line before anything loads), their own --help pages, no Hydra output folders."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


def _error_lines(capsys) -> list[str]:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return captured.err.strip().splitlines()


@pytest.mark.parametrize("arg, line", [
    ("steps=abc", "relgen: error: steps: Value 'abc' of type 'str' could not be converted to Integer"),
    ("guidance=x", "relgen: error: guidance: Value 'x' of type 'str' could not be converted to Float"),
    ("num_images=2.5", "relgen: error: num_images: Value '2.5' of type 'float' could not be converted to Integer"),
    ("stpes=3", "relgen: error: stpes is not a key of relgen.generate; did you mean steps? "
                "(relgen.generate --help lists the keys)"),
    ("negative_promt=blurry", "relgen: error: negative_promt is not a key of relgen.generate; did you mean "
                              "negative_prompt? (relgen.generate --help lists the keys)"),
])
def test_generate_refuses_a_bad_value_or_key_before_anything_loads(arg, line, tmp_path, monkeypatch, capsys):
    import relgen.generate.cli as cli

    monkeypatch.setattr(cli, "generate_from_run", lambda *a, **k: pytest.fail("loaded the run"))
    monkeypatch.chdir(tmp_path)
    assert cli.main([f"run_dir={tmp_path / 'run'}", "prompt=a cat <R> a stone", arg]) == 2
    assert _error_lines(capsys) == [line]
    assert os.listdir(tmp_path) == []  # no Hydra output folder, nothing else


def test_generate_takes_prompts_as_typed_and_runs_in_place(tmp_path, monkeypatch, capsys):
    import relgen.generate.cli as cli

    calls = []
    monkeypatch.setattr(cli, "generate_from_run", lambda *a, **k: calls.append((a, k)) or [tmp_path / "grid.png"])
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "001_method.relation=above"  # a sweep job's folder
    code = cli.main([f"run_dir={run}", "out_dir=new, 1", "prompt=a cat <R> a stone, at dusk", "prompts=[a dog <R> a box,it's <R>]",
                     "negative_prompt=blurry, low quality", "steps=3", "guidance=7.5", "seed=5",
                     "method_options.scales=[0,0.5,1]"])
    assert code == 0, capsys.readouterr().err
    (args, kwargs), = calls
    run_dir, prompts, opts, out_dir = args
    assert run_dir == str(run) and out_dir == "new, 1"
    assert prompts == ["a cat <R> a stone, at dusk", "a dog <R> a box", "it's <R>"]
    assert (opts.steps, opts.guidance, opts.seed, opts.num_images) == (3, 7.5, 5, 4)
    assert opts.negative_prompt == "blurry, low quality"
    assert opts.method_options == {"scales": [0, 0.5, 1]}
    assert os.getcwd() == str(tmp_path) and os.listdir(tmp_path) == []  # no outputs/, no .hydra/
    assert capsys.readouterr().out.strip() == str(tmp_path / "grid.png")


def test_import_official_refuses_a_bad_value_or_key_before_anything_loads(tmp_path, monkeypatch, capsys):
    import relgen.import_official as imp

    official = tmp_path / "learned_embeds.bin"
    torch.save({"<R>": torch.zeros(32)}, official)
    monkeypatch.setattr(imp, "import_official", lambda *a, **k: pytest.fail("read the checkpoint"))
    monkeypatch.chdir(tmp_path)
    base = ["method=rrnet", f"file={official}", "backbone=tiny_sd21", f"run_dir={tmp_path / 'out'}"]
    cases = {
        "ARV=a circle is above a square": "relgen: error: ARV is not a key of relgen.import_official; did you mean "
                                          "ARB? (relgen.import_official --help lists the keys)",
        "run_dri=x": "relgen: error: run_dri is not a key of relgen.import_official; did you mean run_dir? "
                     "(relgen.import_official --help lists the keys)",
        "method.relatoin=above": "relgen: error: method.relatoin is not a key of method; did you mean method.relation? "
                                 "(to add a new key, write +method.relatoin=...; relgen --help lists the groups)",
        "seed=abc": "relgen: error: seed: Value 'abc' of type 'str' could not be converted to Integer",
    }
    for arg, line in cases.items():
        assert imp.main([*base, arg]) == 2, arg
        assert _error_lines(capsys) == [line]
    assert imp.main(["method=rrnett", *base[1:]]) == 2
    assert _error_lines(capsys) == [
        "relgen: error: method=rrnett is not an option (method/rrnett not found); did you mean method=rrnet? known: "
        "relationbooth, reversion, rrnet, textual_inversion"]
    assert sorted(os.listdir(tmp_path)) == ["learned_embeds.bin"]  # no run folder, no Hydra output folder


def test_help_of_generate_and_import_official_is_relgens_own():
    bin_dir = Path(sys.executable).parent
    pages = {}
    for script in ("relgen-generate", "relgen-import-official"):  # the console scripts
        proc = subprocess.run([str(bin_dir / script), "--help"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "Powered by Hydra" not in proc.stdout and "== Config ==" not in proc.stdout
        pages[script] = proc.stdout
    generate = pages["relgen-generate"]
    assert generate.startswith("usage: python -m relgen.generate run_dir=<run folder> [prompt=...] [key=value ...]")
    assert "Render prompts with a finished run" in generate
    assert "\nexamples:\n  relgen-generate run_dir=" in generate
    assert "'method_options.scales=[0,0.5,1]'" in generate
    imported = pages["relgen-import-official"]
    assert imported.startswith("usage: python -m relgen.import_official method=<name> file=<path> backbone=<name>")
    assert "Turn a checkpoint in a method's official format into a relgen run folder" in imported
    for name in ("method=relationbooth", "method=reversion", "method=rrnet"):  # from the registry
        assert f"\n  {name} " in imported
    assert "\nexamples:\n  relgen-import-official method=reversion file=" in imported


def test_free_text_is_quoted_for_hydra_but_null_stays_none():
    from relgen.cli import hydra_override

    free = ("prompt", "negative_prompt")
    assert hydra_override("prompt=a cat <R> a stone", free_text=free) == "prompt='a cat <R> a stone'"
    assert hydra_override("prompt='already, quoted'", free_text=free) == "prompt='already, quoted'"
    assert hydra_override("negative_prompt=null", free_text=free) == "negative_prompt=null"

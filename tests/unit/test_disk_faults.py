"""A full disk, injected as ENOSPC at a chosen write, ends in one line naming the path; nothing
half-written is left; the previous checkpoint stays loadable and a resume continues exactly."""

import errno

import pytest
import torch
from safetensors.torch import load_file

from relgen.errors import WriteError
from relgen.run import run_training
from relgen.testing import compose
from relgen.train import checkpoint as ckpt

TI = ["method=textual_inversion", "backbone=tiny_sd15", "dataset=shapes_reversion", "trainer=debug",
      "method.batch_size=1", "method.grad_accum=1", "trainer.sample_at_end=false", "trainer.max_steps=4",
      "trainer.keep_checkpoints=0"]


def _full_disk():
    return OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The run without faults, for the resumed runs to be compared with."""
    run = tmp_path_factory.mktemp("straight") / "run"
    assert run_training(compose(*TI), run) == 0
    return run


def _same_export(a_run, b_run):
    a = load_file(str(a_run / "export" / "textual_inversion-R.safetensors"))
    b = load_file(str(b_run / "export" / "textual_inversion-R.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_full_disk_at_the_third_checkpoint_then_an_exact_resume(tmp_path, monkeypatch, straight):
    faulty = tmp_path / "faulty"
    real = ckpt._write_payload

    def filling(path, payload):
        if payload["step"] == 3:
            path.write_bytes(b"partial")
            raise _full_disk()
        real(path, payload)

    monkeypatch.setattr(ckpt, "_write_payload", filling)
    with pytest.raises(WriteError) as info:
        run_training(compose(*TI), faulty)
    assert str(info.value) == (f"{faulty / 'checkpoints' / 'step-000003'}: cannot write the checkpoint of step 3 "
                               "(No space left on device); free some space (or choose another output_root / "
                               "cache_dir), then run again with resume=latest")
    assert [p.name for p in ckpt.checkpoint_dirs(faulty)] == ["step-000001", "step-000002"]
    assert not list((faulty / "checkpoints").glob(".step-*"))  # no partial checkpoint
    assert ckpt.load_checkpoint(faulty / "checkpoints" / "step-000002")["step"] == 2
    monkeypatch.setattr(ckpt, "_write_payload", real)  # space freed
    assert run_training(compose(*TI, "resume=latest"), faulty) == 0
    _same_export(straight, faulty)


def test_a_full_disk_at_a_metrics_row_then_an_exact_resume(tmp_path, monkeypatch, straight):
    import builtins

    from relgen.train import loop

    faulty = tmp_path / "faulty"
    appends = []

    def filling(file, mode="r", *args, **kwargs):
        f = builtins.open(file, mode, *args, **kwargs)
        if str(file).endswith("metrics.csv") and mode == "a":
            appends.append(file)
            if len(appends) == 3:  # the row of step 3: half of it reaches the disk
                f.write("3,0.")
                f.close()
                raise _full_disk()
        return f

    monkeypatch.setattr(loop, "open", filling, raising=False)
    with pytest.raises(WriteError) as info:
        run_training(compose(*TI), faulty)
    assert str(info.value) == (f"{faulty / 'metrics.csv'}: cannot write the metrics row of step 3 (No space left "
                               "on device); free some space (or choose another output_root / cache_dir), then run "
                               "again with resume=latest")
    rows = (faulty / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["step", "1", "2"]  # no half row
    assert ckpt.load_checkpoint(ckpt.checkpoint_dirs(faulty)[-1])["step"] == 2
    monkeypatch.undo()  # space freed
    assert run_training(compose(*TI, "resume=latest"), faulty) == 0
    _same_export(straight, faulty)
    assert (faulty / "metrics.csv").read_text() == (straight / "metrics.csv").read_text()


def test_a_truncated_weights_file_is_one_line_naming_it(tmp_path):
    import shutil

    from relgen.backbones.loading import load_backbone, materialize_tiny
    from relgen.errors import RelgenError

    folder = tmp_path / "tiny_sd15"
    shutil.copytree(materialize_tiny(compose("backbone=tiny_sd15").backbone), folder)
    weights = folder / "text_encoder" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a copy that stopped half-way
    with pytest.raises(RelgenError) as info:
        load_backbone(compose("backbone=sd15", f"backbone.pretrained={folder}").backbone)
    text = str(info.value)
    assert text.startswith(f"backbone sd15: {weights}: cannot read the text encoder (SafetensorError: ")
    assert text.endswith("the file is truncated, damaged or unreadable: copy it again, or point "
                         "backbone.pretrained at a good diffusers folder")
    assert "\n" not in text


def test_a_full_disk_at_the_config_or_the_png_leaves_nothing_half_written(tmp_path, monkeypatch):
    from pathlib import Path

    real_write = Path.write_text

    def no_config(self, *args, **kwargs):
        if self.name.startswith(".config.yaml.tmp"):
            raise _full_disk()
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", no_config)
    with pytest.raises(WriteError, match=r"run/config\.yaml: cannot write the run config \(No space left"):
        run_training(compose(*TI), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # a folder this run made, gone again
    monkeypatch.setattr(Path, "write_text", real_write)

    from PIL import Image

    def no_png(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"\x89PNG half")
        raise _full_disk()

    monkeypatch.setattr(Image.Image, "save", no_png)
    with pytest.raises(WriteError, match=r"samples/final\.png: cannot write the image grid \(No space left"):
        run_training(compose(*TI, "trainer.max_steps=1", "trainer.sample_at_end=true"), tmp_path / "png")
    assert list((tmp_path / "png" / "samples").iterdir()) == []
    assert ckpt.load_checkpoint(tmp_path / "png" / "checkpoints" / "step-000001")["step"] == 1


def test_a_read_only_cache_is_one_line(tmp_path, monkeypatch):
    from relgen.data.cache import TensorCache

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("os.replace", read_only)
    cache = TensorCache(tmp_path / "cache")
    with pytest.raises(WriteError, match=r"cache/.*: cannot write the cache entry \(Read-only file system\); "
                                         r"the folder is read-only for this user"):
        cache.put("k" * 16, {"x": torch.ones(2)})
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []

"""A full disk, injected as ENOSPC at a chosen write, ends in one line naming the path; nothing
half-written is left; the previous checkpoint stays loadable and a resume continues exactly."""

import errno

import pytest
import torch
from safetensors.torch import load_file

from conftest import compose
from relgen.errors import WriteError
from relgen.run import run_training
from relgen.train import checkpoint as ckpt

TI = ["method=textual_inversion", "backbone=tiny_sd15", "dataset=shapes_reversion", "trainer=debug",
      "method.batch_size=1", "method.grad_accum=1", "trainer.sample_at_end=false", "trainer.max_steps=4",
      "trainer.keep_checkpoints=0"]


def _full_disk():
    return OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_at_the_third_checkpoint_then_an_exact_resume(tmp_path, monkeypatch):
    straight, faulty = tmp_path / "straight", tmp_path / "faulty"
    assert run_training(compose(*TI), straight) == 0
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
    a = load_file(str(straight / "export" / "learned_embeds.safetensors"))
    b = load_file(str(faulty / "export" / "learned_embeds.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


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

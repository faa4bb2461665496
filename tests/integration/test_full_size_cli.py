"""Full size through the command line a user types (slow tier; hours on a small CPU):

    .venv/bin/python -m pytest -m slow tests/integration/test_full_size_cli.py

Each method on its paper's backbone at its native resolution — ReVersion on SD 1.5 at 512,
RRNet on SD 2.1-base at 512, RelationBooth on SDXL at 1024 with ``trainer=lowvram`` — trains 2
steps from one original-layout ``.safetensors`` file of random weights in the published
architecture (read with the configs shipped with relgen, no hub), then ``relgen.generate`` renders
from the run, and the export is applied to a pipeline stock diffusers loads from the same file.
Each run's peak memory (max RSS of the training process) and step time go to
``benchmarks/results/full_size_cli_<device>.json``, beside the floor (``step_time.py``'s bare model
compute) measured in the same test on the same shapes.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from relgen.testing import write_single_file

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
RUNS = {
    "reversion": dict(backbone="sd15", tiny="tiny_sd15", dataset="shapes_reversion", resolution=512, extra=[],
                      prompt="a cat {} a book"),  # the others render their runs' own sample prompts
    "rrnet": dict(backbone="sd21_base", tiny="tiny_sd21", dataset="shapes_rrnet", resolution=512, extra=[]),
    "relationbooth": dict(backbone="sdxl", tiny="tiny_sdxl", dataset="shapes_dreamrelation", resolution=1024,
                          extra=["trainer=lowvram"]),
}
#: runs a module and prints its own peak RSS (GiB) as the last stderr line
_PEAK = ("import resource, runpy, sys\n"
         "sys.argv = [sys.argv[1]] + sys.argv[2:]\n"
         "try:\n    runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
         "finally:\n    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20\n"
         "    print('PEAK_RSS_GIB', peak, file=sys.stderr)\n")


def _run(module: str, *args: str, timeout: int = 6 * 3600) -> tuple[subprocess.CompletedProcess, float, float]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _PEAK, module, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    peak = [float(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_GIB")]
    return proc, (peak[-1] if peak else float("nan")), time.perf_counter() - start


def _record(method: str, row: dict) -> None:
    device = "cuda" if _cuda() else "cpu"
    out = ROOT / "benchmarks" / "results" / f"full_size_cli_{device}.json"
    rows = json.loads(out.read_text()) if out.is_file() else {}
    rows[method] = row
    out.write_text(json.dumps(rows, indent=2))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.parametrize("method", list(RUNS))
def test_full_size_run_from_a_single_file(method, tmp_path):
    cli_run_from_single_file(method, tmp_path, size="full")


def cli_run_from_single_file(method, tmp_path, size="full"):
    """The whole path at ``size`` ("tiny" checks the path itself in seconds: tiny files need their
    own configs through ``backbone.single_file_config``; nothing is recorded)."""
    spec = RUNS[method]
    ckpt = tmp_path / f"{spec['backbone']}.safetensors"
    configs = write_single_file(ckpt, spec["tiny"], size=size)
    run_dir = tmp_path / "run"
    res = spec["resolution"] if size == "full" else 64
    own = [f"backbone.single_file_config={configs}", f"backbone.resolution={res}"] if size == "tiny" else []
    train, peak, wall = _run("relgen", f"method={method}", f"backbone={spec['backbone']}", *own,
                             f"backbone.pretrained={ckpt}", f"dataset={spec['dataset']}", f"dataset.size={res}",
                             "trainer=debug", *spec["extra"], "trainer.max_steps=2", "trainer.checkpoint_every=2",
                             "trainer.sample_every=null", "trainer.sample_at_end=false",
                             f"hydra.run.dir={run_dir}", f"output_root={tmp_path}")
    assert train.returncode == 0, train.stderr[-3000:]
    run = next(p.parent for p in tmp_path.rglob("summary.json"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2
    log = (run / "train.log").read_text()
    assert f"{ckpt.name} is an " in log  # the detected family
    assert ("published" in log) == (size == "full")  # the shipped configs read the published architectures

    prompt = [f"prompt={spec['prompt']}"] if spec.get("prompt") else []
    gen, gen_peak, gen_wall = _run("relgen.generate", f"run_dir={run}", *prompt, "steps=2", "num_images=1")
    assert gen.returncode == 0, gen.stderr[-3000:]

    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    import relgen
    from relgen.backbones.single_file import CONFIGS, shipped_tokenizers

    folder = CONFIGS / spec["backbone"] if size == "full" else configs
    cls = StableDiffusionXLPipeline if spec["backbone"] == "sdxl" else StableDiffusionPipeline
    tokenizers = shipped_tokenizers(folder) if size == "full" else {}
    pipe = cls.from_single_file(str(ckpt), config=str(folder), local_files_only=True, **tokenizers)
    loaded = relgen.load(run)
    loaded.apply(pipe)
    token = getattr(loaded.artifact, "token", "<R>")  # as relgen.generate fills benchmark templates
    prompt = (loaded.artifact.sample_prompts()[:1] or ["a cat {} a book"])[0]
    inputs = loaded.pipeline_inputs(pipe, [prompt.format(token) if "{}" in prompt else prompt])
    image = pipe(**inputs, num_inference_steps=1, height=res // 4, width=res // 4, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.shape == (res // 4, res // 4, 3)

    if size != "full":
        return
    del pipe, loaded, image  # the floor below builds the full-size model again in its own process
    from omegaconf import OmegaConf

    ran = OmegaConf.load(run / "config.yaml")  # the settings the run resolved, for memory_table.py's count
    row = {"backbone": spec["backbone"], "resolution": res, "overrides": spec["extra"],
           "settings": {"backbone.dtype": ran.backbone.dtype, "trainer.mixed_precision": ran.trainer.mixed_precision,
                        "trainer.gradient_checkpointing": ran.trainer.gradient_checkpointing,
                        "trainer.cache_latents": ran.trainer.cache_latents},
           "train_peak_rss_gib": peak, "train_wall_s": wall, "train_seconds": summary["train_seconds"],
           "step_s_incl_checkpoint": summary["train_seconds"] / summary["steps"],
           "generate_peak_rss_gib": gen_peak, "generate_wall_s": gen_wall,
           "command": "python -m pytest -m slow tests/integration/test_full_size_cli.py"}
    _record(method, row)  # kept if the floor's own full-size build runs out of memory
    tiny_extra = spec["extra"] + (["backbone.prediction_type=epsilon"] if method == "rrnet" else [])
    floor_proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "step_time.py"), "--full", "--one",
                                 f"{method}:{spec['tiny'][5:]}", "--pairs", "2", "--resolution", str(res),
                                 "--extra", *tiny_extra], capture_output=True, text=True, cwd=ROOT, timeout=6 * 3600)
    assert floor_proc.returncode == 0, floor_proc.stderr[-3000:]
    _record(method, {**row, "floor_step_time_py": json.loads(floor_proc.stdout.strip().splitlines()[-1])})

"""The evaluation harness: generate every condition with the same seeds, score, report.

:func:`evaluate` is the Python API behind ``python -m relgen.evaluate``:

1. the prompt set, the seeds and the conditions are fixed first (the run's method, or one
   condition per λ for RRNet; the base model; a baseline run; or the condition folders of an
   existing image folder), and every metric name is checked, before any model loads;
2. each condition's images are generated through :func:`relgen.generate.render` (the one
   inference path) with the same seeds and sampler, or read from the folder; generated images
   are cached under ``<run_dir>/eval/cache/images`` by (run, condition, prompt, seed, sampler);
3. each metric scores every image; scores are cached (one SQLite file per metric model and
   settings, keyed by image content and prompt), so a rerun or a sweep only computes what is
   new;
4. :mod:`relgen.evaluate.report` writes ``report.md``, ``results.json`` and the labelled grids
   into a temporary folder that is renamed into place at the end: a failed evaluation leaves
   no report that looks complete.

Code that makes its own conditions and prompts (the relworld benchmark) draws its images through
the same path: :func:`run_condition` / :func:`base_condition` make a condition and
:func:`generate_samples` renders (or reads from the cache) any list of prompts with it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from relgen.api import load
from relgen.atomic import write_bytes
from relgen.errors import ConfigError, DataError, RelgenError
from relgen.evaluate.config import EvaluateConfig, as_object
from relgen.evaluate.images import IMAGE_SUFFIXES, open_rgb
from relgen.evaluate.prompts import resolve_prompts
from relgen.evaluate.samples import EvalPrompt, ImageScore, Sample
from relgen.registry import get_method

log = logging.getLogger("relgen")

#: Version of the cache keys; bump when what a key covers changes.
CACHE_VERSION = 1


@dataclass
class Condition:
    """One way of making images, compared with the others on the same prompts and seeds.

    Attributes:
        name: Its label in reports ("method", "lambda=0.6", "base", "textual_inversion").
        source: The run folder, ``"base"`` or the image folder.
        kind: ``"run"`` (the run's artifact applied), ``"base"`` or ``"folder"``.
        options: Generation options of the artifact (RRNet: ``{"scale": λ}``).
        identity: What its images depend on besides prompt, seed and sampler (cache key).
        loaded: The loaded run (``relgen.load``), for ``kind == "run"`` (and for ``"base"`` when
            the base model is the run's backbone).
        backbone: The backbone config of a ``"base"`` condition without a run
            (:func:`base_condition`).
    """

    name: str
    source: str
    kind: str
    options: dict = field(default_factory=dict)
    identity: str = ""
    loaded: Any = None
    backbone: Any = None

    def describe(self) -> dict[str, Any]:
        method = self.loaded.method if self.loaded is not None else None
        return {"name": self.name, "source": self.source, "kind": self.kind, "method": method,
                "options": self.options}


@dataclass
class Evaluation:
    """Everything the report needs."""

    cfg: EvaluateConfig
    prompt_set: str
    prompts: list[EvalPrompt]
    seeds: list[int]
    conditions: list[Condition]
    baseline: Optional[str]
    sampler: dict[str, Any]
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    scores: dict[str, dict[str, list[ImageScore]]] = field(default_factory=dict)  # metric -> condition -> per sample
    set_scores: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # metric -> condition -> values
    metric_info: dict[str, dict[str, Any]] = field(default_factory=dict)
    out_dir: Optional[Path] = None
    timings: dict[str, float] = field(default_factory=dict)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def run_identity(loaded: Any) -> str:
    """Content hash of a run's export (weights and metadata) and backbone."""
    from relgen.backbones.loading import weights_digest

    return f"{loaded.method}-{weights_digest(loaded.run_dir / 'export')}-{_digest(loaded.meta.get('backbone'))}"


def run_condition(run: Any, name: str = "method", options: Optional[dict] = None) -> Condition:
    """A condition that renders with a finished run's artifact.

    Args:
        run: The run folder, or a run loaded with ``relgen.load``.
        name: Its label.
        options: Generation options of the artifact (RRNet: ``{"scale": λ}``).
    """
    loaded = _load_run(str(run), "run_dir") if isinstance(run, (str, Path)) else run
    return Condition(name, str(loaded.run_dir), "run", dict(options or {}), run_identity(loaded), loaded)


def base_condition(backbone_cfg: Any, name: str = "base") -> Condition:
    """A condition that renders with a backbone alone (no run): the base model.

    Args:
        backbone_cfg: A backbone config node (``compose_run("backbone=relworld").backbone``).
        name: Its label.

    Its identity covers the config and, for local weights, their content, so images cached
    for other weights in the same folder are not reused.
    """
    from omegaconf import OmegaConf

    from relgen.backbones.loading import resolve_pretrained, weights_digest

    node = backbone_cfg if OmegaConf.is_config(backbone_cfg) else OmegaConf.structured(backbone_cfg)
    settings = OmegaConf.to_container(node, resolve=True)
    folder = Path(resolve_pretrained(backbone_cfg))
    weights = weights_digest(folder) if folder.is_dir() else ""
    return Condition(name, "base", "base", {}, f"base-{_digest(settings)}-{weights}", backbone=backbone_cfg)


# ------------------------------------------------------------------------------------ plan


def _seeds(cfg: EvaluateConfig) -> list[int]:
    if cfg.seeds:
        seeds = [int(s) for s in cfg.seeds]
        if len(set(seeds)) != len(seeds):
            raise ConfigError(f"seeds={seeds}: every seed must be different")
        return seeds
    if cfg.num_images < 1:
        raise ConfigError(f"num_images={cfg.num_images} must be >= 1")
    return list(range(cfg.seed, cfg.seed + cfg.num_images))


def _load_run(path: str, key: str):
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"{key}={path}: not a folder (give a finished run's folder)")
    try:
        return load(folder)
    except RelgenError as exc:
        raise ConfigError(f"{key}={path}: {exc}") from None


def apply_run_defaults(cfg: EvaluateConfig, loaded: Any) -> None:
    """Fill ``metrics`` and ``prompts`` left unset (``None``) from the run: a run on the relworld
    model is scored offline by relworld's exact detector on its relation's object-swapped pairs
    (the method's own prompt set, :attr:`relgen.plugin.Method.own_prompt_set`, e.g. an RRNet run's
    ``rrnet_pairs``, else ``relworld_relation``); any other run by CLIP-T and CLIP-R on ReVersion's
    benchmark."""
    backbone = ((loaded.meta.get("backbone") or {}).get("name") if loaded is not None else None)
    from relgen.backbones import RELWORLD_BACKBONES

    relworld = backbone in RELWORLD_BACKBONES
    if cfg.metrics is None:
        cfg.metrics = ["relworld"] if relworld else ["clip_t", "clip_r"]
    if cfg.prompts is None:
        own = get_method(loaded.method).own_prompt_set if relworld else None
        cfg.prompts = (own or "relworld_relation") if relworld else "reversion_benchmark"


def plan(cfg: EvaluateConfig) -> Evaluation:
    """Fix the prompts (with reference images where a metric needs them and no prompt has any:
    :mod:`relgen.evaluate.references`), seeds and conditions, and check every metric name,
    loading no model."""
    from relgen.evaluate.metrics import get_metric
    from relgen.evaluate.references import default_references

    if cfg.run_dir is None and cfg.images_dir is None:
        raise ConfigError("give run_dir=<a finished run> (to generate) or images_dir=<a folder of images> (to score)")
    loaded = _load_run(cfg.run_dir, "run_dir") if cfg.run_dir else None
    apply_run_defaults(cfg, loaded)
    for name in cfg.metrics:
        get_metric(name)
    if not cfg.metrics:
        raise ConfigError("metrics=[] names no metric; e.g. metrics=[clip_t,vlm_relation]")
    prompt_set, prompts = resolve_prompts(cfg.prompts, cfg.relation_words, loaded, cfg.relation, cfg.limit)
    if "relworld" in cfg.metrics and not all(p.objects for p in prompts):
        raise ConfigError(f"metrics: relworld scores relworld prompts only (each with its objects), and "
                          f"prompts={cfg.prompts} has none; use prompts=rrnet_pairs with an RRNet run on the relworld "
                          "model, or a prompt file whose prompts carry \"objects\" (docs/evaluation.md)")
    needs = [name for name in cfg.metrics if get_metric(name).needs_references]
    if needs:  # prompts without reference images: eval.references, or the run's training dataset
        prompts = default_references(prompts, cfg.eval.references, loaded.run_dir if loaded is not None else None,
                                     "/".join(needs))
    seeds = _seeds(cfg)
    conditions: list[Condition] = []
    baseline: Optional[str] = None
    if cfg.images_dir:
        folder = Path(cfg.images_dir).expanduser()
        if not folder.is_dir():
            raise DataError(f"images_dir={folder}: not a folder")
        names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not names:
            raise DataError(f"images_dir={folder}: no condition folders (<images_dir>/<condition>/<prompt>/<seed>.png)")
        conditions = [Condition(n, str(folder / n), "folder") for n in names]
        baseline = cfg.baseline if cfg.baseline in names else ("base" if "base" in names else None)
        if cfg.baseline and cfg.baseline not in names:
            raise ConfigError(f"baseline={cfg.baseline}: not a condition folder of images_dir; known: {names}")
    else:
        ident = run_identity(loaded)
        own = loaded.artifact.evaluation_conditions(cfg)  # e.g. RRNet: one condition per λ
        for c in own:
            conditions.append(Condition(c.name, str(loaded.run_dir), "run", dict(c.options), ident, loaded))
        own_baseline = next((c.name for c in own if c.baseline), None)  # the run's own baseline condition
        if (cfg.include_base and own_baseline is None) or cfg.baseline == "base":
            conditions.insert(0, Condition("base", "base", "base", {}, f"base-{_digest(loaded.meta.get('backbone'))}",
                                           loaded))
        if cfg.baseline and cfg.baseline != "base":
            other = _load_run(cfg.baseline, "baseline")
            name = other.method if other.method not in {c.name for c in conditions} else f"baseline_{other.method}"
            conditions.append(Condition(name, str(other.run_dir), "run", {}, run_identity(other), other))
            baseline = name
        else:
            baseline = own_baseline or ("base" if any(c.name == "base" for c in conditions) else None)
    sampler = {"steps": cfg.steps, "guidance": cfg.guidance, "scheduler": cfg.scheduler}
    if loaded is not None:
        mcfg = loaded.meta.get("method_config") or {}
        bcfg = loaded.meta.get("backbone") or {}
        sampler = {"steps": cfg.steps or mcfg.get("sample_steps") or bcfg.get("inference_steps"),
                   "guidance": cfg.guidance if cfg.guidance is not None else (
                       mcfg.get("sample_guidance") if mcfg.get("sample_guidance") is not None else bcfg.get("guidance_scale")),
                   "scheduler": cfg.scheduler or bcfg.get("inference_scheduler"),
                   "resolution": bcfg.get("resolution")}
    return Evaluation(cfg, prompt_set, prompts, seeds, conditions, baseline, sampler)


# ------------------------------------------------------------------------------ generation


def _condition_text(prompt: EvalPrompt, condition: Condition) -> str:
    """What a condition renders: the base model reads the relation written out; a run's
    artifact gets its own token where the prompt has ``{}``."""
    if condition.kind == "base":
        return prompt.readable
    token = condition.loaded.artifact.token
    if "{}" not in prompt.text:
        return prompt.text
    return prompt.text.format(token) if token else prompt.readable  # no token: the relation written out


def _prompt_options(condition: Condition, prompt: EvalPrompt, text: str) -> dict:
    """Generation options of one prompt: the condition's, with the artifact's own for this
    prompt (:meth:`relgen.plugin.Artifact.prompt_options`) for a run's condition."""
    options = dict(condition.options)
    if condition.kind == "run":
        options.update(condition.loaded.artifact.prompt_options(prompt, text))
    return options


def _image_key(sampler: dict, condition: Condition, text: str, seed: int, options: dict) -> str:
    return _digest({"v": CACHE_VERSION, "run": condition.identity, "options": options, "prompt": text,
                    "seed": seed, "sampler": sampler})


def _contiguous(seeds: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for s in seeds:
        if runs and s == runs[-1][-1] + 1:
            runs[-1].append(s)
        else:
            runs.append([s])
    return runs


def generate_samples(condition: Condition, prompts: list[EvalPrompt], seeds: list[int], sampler: dict,
                     cache_dir: Path, device: Any = None, *, texts: Optional[list[str]] = None,
                     options: Optional[dict] = None, batch_size: int = 4, cache: bool = True,
                     pipelines: Optional[dict] = None, bar: Any = None) -> list[Sample]:
    """Every image of one condition for ``prompts`` x ``seeds`` (cached), prompt by prompt.

    Images are drawn through :func:`relgen.generate.render` (the one inference path): the image
    of seed ``s`` uses a generator seeded with ``s``, whatever else is drawn with it. They are
    cached under ``<cache_dir>/images`` by (condition identity, options, text, seed, sampler);
    a ``"folder"`` condition reads them from its folder instead.

    Args:
        condition: What makes the images (:func:`run_condition`, :func:`base_condition`, or one of
            :func:`plan`'s).
        prompts: The prompts.
        seeds: The seeds, the same for every prompt.
        sampler: ``{"steps", "guidance", "scheduler"}`` (``None``: the backbone's); part of the
            cache key.
        cache_dir: The cache folder.
        device: Where the pipeline runs (``None``: where the backbone loads).
        texts: What each prompt is rendered as (default: its text with the run's token where it has
            ``{}``; the base model reads it with the relation written out).
        options: Generation options of every prompt, exactly (default: the condition's, plus
            RRNet's graph words from the prompt when the run's are not all in its text).
        batch_size: Images per generation call.
        cache: Reuse cached images.
        pipelines: Loaded pipelines by run folder, shared between calls (a ``"base"`` condition
            of a run must be drawn before the run's artifact is applied to its backbone).
        bar: A progress bar advanced by one per image.

    Returns:
        One :class:`Sample` per prompt and seed, prompt-major.
    """
    from relgen.generate import GenerationOptions, _save_png, render

    if texts is not None and len(texts) != len(prompts):
        raise ValueError(f"texts: {len(texts)} texts for {len(prompts)} prompts")
    images_dir = cache_dir / "images"
    pipelines = {} if pipelines is None else pipelines
    samples: list[Sample] = []
    for k, prompt in enumerate(prompts):
        if condition.kind == "folder":
            for seed in seeds:
                path = _folder_image(Path(condition.source), prompt, seed)
                samples.append(Sample(prompt, seed, condition.name, open_rgb(path), path))
                if bar is not None:
                    bar.update(1)
            continue
        text = texts[k] if texts is not None else _condition_text(prompt, condition)
        opts_k = dict(options) if options is not None else _prompt_options(condition, prompt, text)
        paths = {seed: images_dir / f"{_image_key(sampler, condition, text, seed, opts_k)}.png" for seed in seeds}
        missing = [s for s in seeds if not (cache and paths[s].is_file())]
        if missing:
            pipe, artifact = _pipeline_for(condition, pipelines, device, sampler.get("scheduler"))
            images_dir.mkdir(parents=True, exist_ok=True)
            for run in _contiguous(missing):
                gen = GenerationOptions(seed=run[0], num_images=len(run), steps=sampler.get("steps"),
                                        guidance=sampler.get("guidance"), batch_size=batch_size,
                                        method_options=opts_k)
                rows = render(pipe, artifact, [text], gen, pipelines[_backbone_key(condition)][0].cfg)
                for seed, image in zip(run, rows[0]):
                    _save_png(image, paths[seed])
        for seed in seeds:
            samples.append(Sample(prompt, seed, condition.name, open_rgb(paths[seed]), paths[seed]))
            if bar is not None:
                bar.update(1)
    return samples


def generate_images(ev: Evaluation, cache_dir: Path, device: Any, progress: bool = True) -> None:
    """Fill ``ev.samples``: every condition's image of every prompt and seed (cached)."""
    from tqdm.auto import tqdm

    from relgen.generate import slug

    pipelines: dict[str, Any] = {}  # per run folder: (backbone, pipe, applied artifact or None)
    total = len(ev.conditions) * len(ev.prompts) * len(ev.seeds)
    bar = tqdm(total=total, desc="images", disable=not progress, leave=False)
    for condition in ev.conditions:
        samples = generate_samples(condition, ev.prompts, ev.seeds, ev.sampler, cache_dir, device,
                                   batch_size=ev.cfg.batch_size, cache=ev.cfg.cache, pipelines=pipelines, bar=bar)
        ev.samples[condition.name] = samples
        log.debug("relgen.evaluate: %s: %d images (%s)", condition.name, len(samples), slug(condition.name))
    bar.close()


def _backbone_key(condition: Condition) -> str:
    return str(condition.loaded.run_dir) if condition.loaded is not None else condition.identity


def _pipeline_for(condition: Condition, backbones: dict, device: Any, scheduler: Optional[str] = None):
    """The pipeline and artifact of a condition. One backbone per run folder: the base model's
    images are drawn before the run's artifact is applied to it (a LoRA changes the UNet)."""
    from relgen.plugin import Artifact

    key = _backbone_key(condition)
    if key not in backbones:
        if condition.loaded is not None:
            backbone = condition.loaded.load_backbone()
        else:
            from relgen.backbones.loading import load_backbone

            backbone = load_backbone(condition.backbone)
        pipe = backbone.pipeline(scheduler)
        if device is not None and str(device) != "cpu":
            pipe.to(device)
        backbones[key] = [backbone, pipe, False]
    backbone, pipe, applied = backbones[key]
    if condition.kind == "base":
        if applied:
            raise RelgenError("internal: the base condition must be rendered before the run's artifact is applied")
        return pipe, Artifact()
    if not applied:
        condition.loaded.apply(pipe)
        backbones[key][2] = True
    return pipe, condition.loaded.artifact


def _folder_image(folder: Path, prompt: EvalPrompt, seed: int) -> Path:
    from relgen.generate import slug

    sub = folder / slug(prompt.id)
    for name in (f"{seed:04d}", str(seed)):
        for suffix in IMAGE_SUFFIXES:
            if (sub / f"{name}{suffix}").is_file():
                return sub / f"{name}{suffix}"
    raise DataError(f"images_dir: no image for prompt '{prompt.id}' seed {seed} in condition '{folder.name}' "
                    f"(expected {sub}/{seed:04d}.png)")


# --------------------------------------------------------------------------------- scoring


def _sample_digest(sample: Sample, memo: dict) -> str:
    """Content hash of a sample's image and prompt (computed once per sample)."""
    key = id(sample)
    if key not in memo:
        if sample.path is not None and sample.path.is_file():
            image = hashlib.sha256(sample.path.read_bytes()).hexdigest()[:20]
        else:
            image = hashlib.sha256(sample.image.tobytes()).hexdigest()[:20]
        pkey = ("prompt", id(sample.prompt))
        if pkey not in memo:
            memo[pkey] = (sample.prompt, _digest(asdict(sample.prompt)))
        memo[key] = (sample, f"{image}-{memo[pkey][1]}")  # holding the object keeps its id() unique
    return memo[key][1]


class ScoreCache:
    """Per-image scores of one metric model and settings, in one SQLite file (written a chunk
    per transaction, so a crash loses at most the chunk being scored; concurrent sweep jobs
    wait for each other's writes).

    Args:
        path: The database file.
    """

    def __init__(self, path: Path):
        import sqlite3

        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = self._open(str(path))
        except sqlite3.DatabaseError as exc:  # not a database, or damaged: a cache is rebuilt, never fatal
            self.db = self._rebuild(exc)

    @staticmethod
    def _open(where: str):
        import sqlite3

        db = sqlite3.connect(where, timeout=60)
        try:
            # a cache: write-ahead log without a sync per transaction (an application crash loses
            # nothing committed; a power cut may lose the last chunks, which are then rescored)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("CREATE TABLE IF NOT EXISTS scores (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            db.execute("SELECT count(*) FROM scores").fetchone()
        except BaseException:
            db.close()
            raise
        return db

    def _rebuild(self, exc: Exception):
        """Move the unreadable file aside and start an empty one there (in memory when that fails too)."""
        import sqlite3

        aside = self.path.with_name(f"{self.path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        try:
            for suffix in ("", "-wal", "-shm"):
                part = Path(f"{self.path}{suffix}")
                if part.exists():
                    part.replace(Path(f"{aside}{suffix}"))
            db = self._open(str(self.path))
            where = f"moved it to {aside.name} and rebuilt it"
        except (OSError, sqlite3.DatabaseError):
            db = self._open(":memory:")
            where = "scoring without it (nothing is cached this time)"
        log.warning("relgen: warning: %s: unreadable score cache (%s); %s", self.path, exc, where)
        return db

    def get_many(self, keys: list[str]) -> dict[str, str]:
        import sqlite3

        found: dict[str, str] = {}
        try:
            for at in range(0, len(keys), 500):
                part = keys[at:at + 500]
                rows = self.db.execute(f"SELECT key, value FROM scores WHERE key IN ({','.join('?' * len(part))})",
                                       part)
                found.update(rows.fetchall())
        except sqlite3.DatabaseError as exc:  # damaged after it opened: rebuilt, everything rescored
            self.db.close()
            self.db = self._rebuild(exc)
            return {}
        return found

    def put_many(self, items: list[tuple[str, str]]) -> None:
        import sqlite3

        try:
            with self.db:
                self.db.executemany("INSERT OR REPLACE INTO scores (key, value) VALUES (?, ?)", items)
        except sqlite3.DatabaseError as exc:
            self.db.close()
            self.db = self._rebuild(exc)
            with self.db:
                self.db.executemany("INSERT OR REPLACE INTO scores (key, value) VALUES (?, ?)", items)

    def close(self) -> None:
        self.db.close()


_CACHES: dict[str, ScoreCache] = {}


def score_cache(path: Path) -> ScoreCache:
    """The open :class:`ScoreCache` at ``path`` (one connection per file for the process:
    opening a database costs tens of milliseconds)."""
    key = str(path.resolve())
    if key not in _CACHES:
        _CACHES[key] = ScoreCache(path)
    return _CACHES[key]


def _score_key(metric_identity: str, sample: Sample, memo: dict) -> str:
    return hashlib.sha256(f"{CACHE_VERSION}|{metric_identity}|{_sample_digest(sample, memo)}".encode()).hexdigest()[:24]


def score_all(ev: Evaluation, cache_dir: Path, device: Any, progress: bool = True,
              metrics: Optional[dict[str, Any]] = None) -> None:
    """Fill ``ev.scores`` / ``ev.set_scores`` for every metric and condition (cached).

    Args:
        metrics: Already built metrics by name (default: built from ``ev.cfg.eval``).
    """
    from tqdm.auto import tqdm

    from relgen.evaluate.metrics import build_metric

    scores_dir = cache_dir / "scores"
    memo: dict = {}
    for name in ev.cfg.metrics:
        metric = (metrics or {}).get(name) or build_metric(name, ev.cfg.eval, device)
        identity = metric.identity()
        ev.metric_info[name] = {"model": getattr(metric.cfg, "pretrained", None), "identity": identity,
                                "outputs": dict(metric.outputs), "per_image": metric.per_image}
        folder = scores_dir / identity
        folder.mkdir(parents=True, exist_ok=True)
        store = score_cache(folder / "scores.sqlite") if metric.per_image else None
        start = time.perf_counter()
        for condition in ev.conditions:
            samples = ev.samples[condition.name]
            keys = [_score_key(identity, s, memo) for s in samples]
            if not metric.per_image:
                path = folder / f"set-{_digest(keys)}.json"
                if ev.cfg.cache and path.is_file():
                    values = json.loads(path.read_text())
                else:
                    values = metric.score_set(samples)
                    write_bytes(path, json.dumps(values).encode(), "cached score")
                ev.set_scores.setdefault(name, {})[condition.name] = values
                continue
            results: list[Optional[ImageScore]] = [None] * len(samples)
            found = store.get_many(keys) if ev.cfg.cache else {}
            todo = []
            for i, key in enumerate(keys):
                if key in found:
                    results[i] = ImageScore.from_dict(json.loads(found[key]))
                else:
                    todo.append(i)
            chunk = 64
            with tqdm(total=len(todo), desc=f"{name} [{condition.name}]", disable=not progress or not todo,
                      leave=False) as bar:
                for at in range(0, len(todo), chunk):
                    part = todo[at:at + chunk]
                    scored = metric.score([samples[i] for i in part])
                    for i, sc in zip(part, scored):
                        results[i] = sc
                    store.put_many([(keys[i], json.dumps(sc.as_dict())) for i, sc in zip(part, scored)])
                    bar.update(len(part))
            ev.scores.setdefault(name, {})[condition.name] = results  # type: ignore[assignment]
        ev.timings[name] = time.perf_counter() - start


# ------------------------------------------------------------------------------------ entry


def check_weights(cfg: EvaluateConfig) -> None:
    """Fail at once when a metric's weights cannot be had (see
    :func:`relgen.evaluate.loading.check_metric_weights`); nothing has rendered yet."""
    from relgen.evaluate.loading import check_metric_weights
    from relgen.evaluate.metrics import get_metric

    for name in cfg.metrics:
        check_metric_weights(name, get_metric(name), cfg.eval)


def default_out_dir(ev: Evaluation) -> Path:
    cfg = ev.cfg
    if cfg.out_dir:
        return Path(cfg.out_dir).expanduser()
    root = Path(cfg.run_dir).expanduser() if cfg.run_dir else Path(cfg.images_dir).expanduser()
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    out = root / "eval" / f"{ev.prompt_set}-{stamp}"
    n = 1
    while out.exists() or out.with_name(out.name + ".partial").exists():  # two evaluations in one second
        out = root / "eval" / f"{ev.prompt_set}-{stamp}-{n}"
        n += 1
    return out


def cache_dir_for(cfg: EvaluateConfig) -> Path:
    root = Path(cfg.run_dir).expanduser() if cfg.run_dir else Path(cfg.images_dir).expanduser()
    return root / "eval" / "cache"


def evaluate(cfg: Any = None, progress: bool = True, **overrides) -> Path:
    """Generate (or read), score and report; returns the report folder.

    Args:
        cfg: An :class:`~relgen.evaluate.config.EvaluateConfig`, a dict or a DictConfig
            (``None``: the defaults), updated with ``overrides``
            (``evaluate(run_dir="outputs/...", metrics=["clip_t"])``).
        progress: Show progress bars.
    """
    from omegaconf import OmegaConf

    from relgen.evaluate.loading import resolve_device
    from relgen.evaluate.report import write_report

    if overrides:
        base = OmegaConf.structured(as_object(cfg, EvaluateConfig))
        cfg = OmegaConf.to_object(OmegaConf.merge(base, overrides))
    cfg = as_object(cfg, EvaluateConfig)
    start = time.perf_counter()
    ev = plan(cfg)
    check_weights(ev.cfg)  # every metric's weights, once the input is known good, before any rendering
    device = resolve_device(cfg.eval.device)
    out = default_out_dir(ev)
    if out.exists():
        raise ConfigError(f"out_dir={out} exists; give another out_dir= (reports are never overwritten)")
    cache = cache_dir_for(cfg)
    t = time.perf_counter()
    generate_images(ev, cache, device, progress)
    ev.timings["generation"] = time.perf_counter() - t
    score_all(ev, cache, device, progress)
    ev.timings["total"] = time.perf_counter() - start
    ev.out_dir = out
    write_report(ev, out)
    return out


__all__ = ["Condition", "Evaluation", "base_condition", "evaluate", "generate_images", "generate_samples", "plan",
           "run_condition", "score_all"]

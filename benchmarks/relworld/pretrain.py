"""Pretrain the ``relworld`` micro backbone on the relation world, on a CPU, resumably.

    nice -n 19 python benchmarks/relworld/pretrain.py --max-minutes 60      # run a while, stop cleanly
    nice -n 19 python benchmarks/relworld/pretrain.py                       # continue where it stopped
    python benchmarks/relworld/pretrain.py --status                         # where it stands

Stages (each resumes from its checkpoint in ``--work``; a finished stage returns at once, and raising
``--vae-steps`` or ``--steps`` trains further — the latents are re-encoded when the VAE changed):

1. ``data``: :func:`relgen.relworld.world.write_pretraining_set` (PNG images + captions.jsonl).
2. ``tokenizer``: BPE merges learnt on the captions, written as a CLIP tokenizer.
3. ``text``: the CLIP text encoder, pretrained contrastively against a small CLIP vision tower on
   the image-caption pairs (CLIP's symmetric InfoNCE, Radford et al. 2021, Fig. 3), with
   NegCLIP's hard negatives (Yuksekgonul et al. 2023, Sec. 4): each relation caption with its
   two objects swapped, with their colours swapped, and with the opposite relation is an extra
   wrong caption for its image.
   Without it, a text encoder trained jointly with the UNet from scratch stayed a bag of words
   (after 4000 steps "a red circle above a blue square" and "... below ..." encoded to cosine
   1.000), and layout did not follow the prompt. Stable Diffusion's text encoder is a frozen,
   contrastively pretrained CLIP as well.
4. ``vae``: an AutoencoderKL trained from scratch on the images (L1 reconstruction + a small
   KL term, as the KL-f autoencoders of latent diffusion, without the adversarial and
   perceptual terms that flat-coloured shapes do not need).
5. ``latents``: the VAE posterior of every image, cached; ``scaling_factor`` = 1 / std of the
   latents (Rombach et al. 2022, Sec. 4.3.2 / the SD configs' 0.18215 rule).
6. ``diffusion``: the UNet trained on the frozen text encoder with the epsilon loss, 10 % empty
   captions (for classifier-free guidance), Min-SNR-5 loss weights (Hang et al. 2023, Eq. 9)
   and an EMA of the weights; checkpoints every few minutes.
7. ``refine``: that UNet fine-tuned on SD's betas rescaled to zero terminal SNR with the v loss
   (Lin et al. 2024), the schedule the shipped model samples with (DDIM, "trailing" steps).
   On SD's own schedule the noisiest training input still shows where the objects are, so
   the UNet learnt to take the layout from the starting noise and not from the prompt.
8. ``bind_text`` (with ``--bind-layout-steps``): the text encoder of those stages' export (or
   of ``--init-from``) fine-tuned so that its EOT and padding rows state the scene's layout
   (which object is the upper or left one, which the other, and the relation), read out
   linearly and trained with a cross-entropy loss, while a squared-change penalty keeps the
   rest of its output. The contrastive encoder separates a caption from its object swap only by
   the small margin CLIP's temperature needs, which the UNet did not pick up.
9. ``bind`` (with ``--bind-steps``): the UNet of those stages' export (or of ``--init-from``, a
   diffusers folder), on the ``bind_text`` encoder when it ran, fine-tuned so that it binds
   word order: its own v loss plus an optional logistic
   loss on the diffusion classifier's decision (Li et al. 2023) between each relation caption
   of an *unbiased* pair and its object-swapped or relation-flipped version, on the same noisy
   latent, at ``t >= --bind-min-t``; probed as it trains, the best probe's EMA weights kept.
10. ``export``: the EMA weights written with ``save_pretrained`` into ``--out`` (by default the
   shipped ``relgen/relworld/weights/``), through a temporary folder and a rename.

The script stops by itself when ``--max-minutes`` are spent or on SIGINT/SIGTERM, after
writing a checkpoint; run it again to continue. Resuming reproduces the uninterrupted run
(all randomness comes from checkpointed generators). ``progress.json`` records the CPU seconds
each stage used; ``log.csv`` the losses.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

from relgen.relworld import model as rb
from relgen.relworld import world as rw
from relgen.relworld.probes import OPPOSITE

STAGES = ("data", "tokenizer", "text", "vae", "latents", "diffusion", "refine", "bind_text", "bind", "export")


# --------------------------------------------------------------------------------------------
# Bookkeeping
# --------------------------------------------------------------------------------------------


class Budget:
    """Stops a stage when this invocation's minutes are spent or a signal arrived."""

    def __init__(self, max_minutes: float | None):
        self.deadline = time.time() + 60 * max_minutes if max_minutes else None
        self.stop = False
        signal.signal(signal.SIGTERM, self._signal)
        signal.signal(signal.SIGINT, self._signal)

    def _signal(self, *_):
        self.stop = True

    def over(self) -> bool:
        return self.stop or (self.deadline is not None and time.time() > self.deadline)


class Progress:
    """``progress.json``: finished stages and CPU seconds per stage."""

    def __init__(self, work: Path):
        self.path = work / "progress.json"
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {"done": [], "cpu_s": {}}

    def done(self, stage: str) -> bool:
        return stage in self.data["done"]

    def finish(self, stage: str) -> None:
        if stage not in self.data["done"]:
            self.data["done"].append(stage)
        self.save()

    def add_cpu(self, stage: str, seconds: float) -> None:
        self.data["cpu_s"][stage] = self.data["cpu_s"].get(stage, 0.0) + seconds
        self.save()

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.data, indent=2))


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def log_row(work: Path, **row) -> None:
    path = work / "log.csv"
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["stage", "step", "loss", "lr", "cpu_s", "time"])
        if new:
            writer.writeheader()
        writer.writerow({"time": time.strftime("%Y-%m-%d %H:%M:%S"), **row})


def generator_from(state) -> torch.Generator:
    g = torch.Generator()
    g.set_state(state)
    return g


def optimizer_step(opt: torch.optim.Optimizer, params, loss: torch.Tensor, lr: float | None) -> None:
    """Backward, clip the gradient norm to 1, set the learning rate (``None``: the caller has set
    each group's), step (every stage alike)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    if lr is not None:
        for group in opt.param_groups:
            group["lr"] = lr
    opt.step()


def log_every_25(work: Path, stage: str, step: int, losses: list[float], lr: float, cpu_s: float) -> list[float]:
    """Every 25 steps write the mean loss to ``log.csv``; returns the losses still to average."""
    if step % 25:
        return losses
    log_row(work, stage=stage, step=step, loss=f"{np.mean(losses):.5f}", lr=f"{lr:.2e}", cpu_s=f"{cpu_s:.0f}")
    return []


# --------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------


def stage_data(args, work: Path) -> Path:
    return rw.write_pretraining_set(work / "data", rw.world_spec(args.world), seed=args.seed,
                                    num_images=args.num_images)


def load_images(work: Path, records: list[dict]) -> np.ndarray:
    """uint8 [N, 64, 64, 3] of the pretraining images, cached as one .npy."""
    from PIL import Image

    path = work / "images_u8.npy"
    if path.exists():
        return np.load(path, mmap_mode="r")
    images = np.stack([np.asarray(Image.open(r["file"]).convert("RGB")) for r in records])
    np.save(work / "images_u8.tmp.npy", images)
    os.replace(work / "images_u8.tmp.npy", path)
    return images


def to_pixels(batch_u8: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float [B, 3, H, W] in [-1, 1]."""
    x = torch.from_numpy(np.array(batch_u8)).permute(0, 3, 1, 2).float()  # a copy: the cache is read-only
    return x / 127.5 - 1.0


def stage_tokenizer(args, work: Path, records: list[dict]) -> Path:
    folder = work / "tokenizer"
    if not (folder / "vocab.json").exists():
        merges = rb.train_bpe_merges(r["caption"] for r in records)
        tmp = work / "tokenizer.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        rb.write_clip_tokenizer(tmp, merges)
        os.replace(tmp, folder)
    return folder


def hard_negatives(record: dict, spec: rw.WorldSpec) -> tuple[str, str, str] | None:
    """NegCLIP-style wrong captions of a relation caption: the objects swapped, their colours
    swapped, and the relation phrase replaced by the opposite relation's canonical phrase.

    ``None`` for captions that name no relation (one object, identities, "a A and a B"), whose
    swaps would say the same thing.
    """
    caption, objects = record["caption"], record["objects"]
    if len(objects) != 2 or not caption or " and " in f" {caption} ":
        return None
    (sa, ca), (sb, cb) = ((o["shape"], o["colour"]) for o in objects)
    a, b = f"{ca} {sa}", f"{cb} {sb}"
    if a not in caption or b not in caption:
        return None
    swap = caption.replace(a, "\0").replace(b, a).replace("\0", b)
    colours = caption.replace(a, "\0").replace(b, f"{ca} {sb}").replace("\0", f"{cb} {sa}")
    # the phrase between the two names, longest first ("to the left of" before "left of")
    phrases = sorted(((p, r) for r in spec.captioned_relations if r in OPPOSITE for p in spec.phrases[r]),
                     key=lambda x: -len(x[0]))
    first, second = sorted((caption.index(a), caption.index(b)))
    middle = caption[first:second]
    for phrase, relation in phrases:
        if f" {phrase} " in middle:
            cut = first + middle.index(f" {phrase} ")
            flipped = caption[:cut] + f" {spec.phrases[OPPOSITE[relation]][0]} " + caption[cut + len(phrase) + 2:]
            return swap, colours, flipped
    return None


def build_clip(tokenizer, seed: int):
    """CLIPModel: :data:`relgen.relworld.model.TEXT_CONFIG` text tower + a small vision tower."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    text = dict(rb.TEXT_CONFIG, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    text.pop("projection_dim")
    vision = dict(image_size=64, patch_size=8, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                  num_attention_heads=4, hidden_act="quick_gelu")
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision,
                                projection_dim=rb.TEXT_CONFIG["projection_dim"]))


def stage_text(args, work: Path, records: list[dict], images: np.ndarray, budget: Budget,
               progress: Progress) -> bool:
    """Contrastive pretraining of the text encoder; True when its last step is done."""
    import torch.nn.functional as F
    from transformers import CLIPTokenizer

    ckpt = work / "text.pt"
    tokenizer = CLIPTokenizer.from_pretrained(work / "tokenizer")
    clip = build_clip(tokenizer, args.seed)
    opt = torch.optim.AdamW(clip.parameters(), lr=args.text_lr, weight_decay=0.1)
    g = torch.Generator().manual_seed(args.seed + 4)
    step = 0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        clip.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        g = generator_from(state["rng"])
        step = state["step"]
    if step >= args.text_steps:
        return True
    usable = [i for i, r in enumerate(records) if r["caption"]]  # identities stay unnamed
    spec = rw.world_spec(args.world)
    negatives = {i: hard_negatives(records[i], spec) for i in usable}

    def encode(texts: list[str]) -> torch.Tensor:
        # padded to the batch's longest caption: the pooled (first EOS) output is causal, so
        # later padding cannot change it, and the batch is ~4x cheaper than at 77 tokens
        return tokenizer(texts, padding="longest", max_length=77, truncation=True, return_tensors="pt").input_ids

    clip.train()
    cpu0, last_save, losses = time.process_time(), time.time(), []

    def save():
        nonlocal cpu0, last_save
        atomic_save({"model": clip.state_dict(), "opt": opt.state_dict(), "rng": g.get_state(), "step": step}, ckpt)
        progress.add_cpu("text", time.process_time() - cpu0)
        cpu0, last_save = time.process_time(), time.time()

    B = args.text_batch
    while step < args.text_steps:
        if budget.over():
            save()
            return False
        idx = [usable[i] for i in torch.randint(len(usable), (B,), generator=g).tolist()]
        captions = [records[i]["caption"] for i in idx]
        hard = [negatives[i] for i in idx]
        extra = [text for n in hard if n is not None for text in n]
        x = to_pixels(np.stack([images[i] for i in idx]))
        img = F.normalize(clip.get_image_features(pixel_values=x).pooler_output, dim=-1)
        txt = F.normalize(clip.get_text_features(input_ids=encode(captions + extra)).pooler_output, dim=-1)
        scale = clip.logit_scale.exp().clamp(max=100.0)
        # CLIP's symmetric InfoNCE; image -> text also scores every hard negative (NegCLIP)
        logits = scale * img @ txt.T
        target = torch.arange(B)
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits[:, :B].T, target))
        lr = args.text_lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / args.text_steps))
        optimizer_step(opt, clip.parameters(), loss, lr)
        step += 1
        losses = log_every_25(work, "text", step, losses + [loss.item()], lr,
                              progress.data["cpu_s"].get("text", 0) + time.process_time() - cpu0)
        if time.time() - last_save > args.save_every_s:
            save()
    save()
    return True


def load_text_encoder(args, work: Path, tokenizer):
    """The CLIPTextModel of the ``text`` stage."""
    text_encoder = rb.build_text_encoder(tokenizer, seed=args.seed)
    clip_state = torch.load(work / "text.pt", weights_only=True)["model"]
    own = {k[len("text_model."):]: v for k, v in clip_state.items() if k.startswith("text_model.")}
    text_encoder.load_state_dict(own)
    return text_encoder


def stage_vae(args, work: Path, images: np.ndarray, budget: Budget, progress: Progress) -> bool:
    """Train the VAE; True when its last step is done."""
    ckpt = work / "vae.pt"
    vae = rb.build_vae(seed=args.seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(args.seed + 1)
    step = 0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        g = generator_from(state["rng"])
        step = state["step"]
    if step >= args.vae_steps:
        return True
    vae.train()
    cpu0, last_save, losses = time.process_time(), time.time(), []

    def save():
        nonlocal cpu0, last_save
        atomic_save({"model": vae.state_dict(), "opt": opt.state_dict(), "rng": g.get_state(), "step": step}, ckpt)
        progress.add_cpu("vae", time.process_time() - cpu0)
        cpu0, last_save = time.process_time(), time.time()

    while step < args.vae_steps:
        if budget.over():
            save()
            return False
        # random crops: the autoencoder is convolutional, and a crop is cheaper than a full
        # image while holding as many edges and corners
        idx = torch.randint(len(images), (args.vae_batch,), generator=g).tolist()
        corner = torch.randint(0, images.shape[1] - args.vae_crop + 1, (args.vae_batch, 2), generator=g).tolist()
        x = to_pixels(np.stack([images[i, r:r + args.vae_crop, c:c + args.vae_crop]
                                for i, (r, c) in zip(idx, corner)]))
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g)
        rec = vae.decode(z).sample
        # object pixels (a channel below the pale backgrounds' range) weigh more: they are a
        # small share of each image but carry the shapes' corners and edges
        weight = 1.0 + args.vae_object_weight * (x.min(dim=1, keepdim=True).values < args.vae_object_level).float()
        rec_loss = (weight * (rec - x).abs()).mean() / weight.mean()
        # LDM's autoencoder loss sums the L1 term over pixels and the KL over latents, KL weight
        # 1e-6 (latent-diffusion's LPIPSWithDiscriminator); dividing both by the pixel count
        # keeps that ratio
        kl = posterior.kl().mean() / x[0].numel()
        loss = rec_loss + args.vae_kl * kl
        lr = args.vae_lr * 0.5 * (1 + math.cos(math.pi * step / args.vae_steps))  # cosine decay
        optimizer_step(opt, vae.parameters(), loss, lr)
        step += 1
        losses = log_every_25(work, "vae", step, losses + [rec_loss.item()], lr,
                              progress.data["cpu_s"].get("vae", 0) + time.process_time() - cpu0)
        if time.time() - last_save > args.save_every_s:
            save()
    save()
    return True


def stage_latents(args, work: Path, images: np.ndarray, budget: Budget, progress: Progress) -> bool:
    """Encode every image; True when done. Writes latents.pt = {params [N, 8, 16, 16], scaling}."""
    out = work / "latents.pt"
    vae_state = torch.load(work / "vae.pt", weights_only=True)
    if out.exists() and torch.load(out, weights_only=True).get("vae_step") == vae_state["step"]:
        return True
    vae = rb.build_vae(seed=args.seed)
    vae.load_state_dict(vae_state["model"])
    vae.eval()
    part = work / "latents_part.pt"
    chunks = []
    if part.exists():
        saved = torch.load(part, weights_only=True)
        chunks = saved["chunks"] if saved.get("vae_step") == vae_state["step"] else []
    cpu0 = time.process_time()
    done = sum(c.shape[0] for c in chunks)
    with torch.no_grad():
        while done < len(images):
            if budget.over():
                atomic_save({"chunks": chunks, "vae_step": vae_state["step"]}, part)
                progress.add_cpu("latents", time.process_time() - cpu0)
                return False
            x = to_pixels(images[done:done + 256])
            chunks.append(vae.encode(x).latent_dist.parameters.float())
            done += x.shape[0]
    params = torch.cat(chunks)
    mean, logvar = params.chunk(2, dim=1)
    g = torch.Generator().manual_seed(args.seed + 2)
    sample = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=g)
    scaling = float(1.0 / sample.std())
    atomic_save({"params": params, "scaling_factor": scaling, "vae_step": vae_state["step"]}, out)
    part.unlink(missing_ok=True)
    progress.add_cpu("latents", time.process_time() - cpu0)
    log_row(work, stage="latents", step=len(images), loss=f"{float(sample.std()):.5f}", lr="",
            cpu_s=f"{progress.data['cpu_s']['latents']:.0f}")
    return True


def draw_batch(g: torch.Generator, params_all: torch.Tensor, ids_all: torch.Tensor, empty_ids: torch.Tensor,
               batch: int, caption_dropout: float, scaling: float, num_timesteps: int):
    """One diffusion batch from the cached VAE posteriors: ``(idx, x0, ids, drop, noise, t)``.

    Draws, in this order from ``g``: the records, the latent sample, the caption dropout, the
    noise and the timesteps (the order every stage's checkpointed generator depends on).
    """
    idx = torch.randint(len(ids_all), (batch,), generator=g)
    mean, logvar = params_all[idx].chunk(2, dim=1)
    x0 = (mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=g)) * scaling
    ids = ids_all[idx].clone()
    drop = torch.rand(batch, generator=g) < caption_dropout
    ids[drop] = empty_ids
    noise = torch.randn(x0.shape, generator=g)
    t = torch.randint(0, num_timesteps, (batch,), generator=g)
    return idx, x0, ids, drop, noise, t


def ema_update(ema: dict[str, torch.Tensor], params: dict[str, torch.Tensor], decay: float) -> None:
    with torch.no_grad():
        for name, p in params.items():
            ema[name].mul_(decay).add_(p.detach(), alpha=1 - decay)


def stage_diffusion(args, work: Path, records: list[dict], budget: Budget, progress: Progress,
                    refine: bool = False) -> bool:
    """Train the UNet on the frozen text encoder; True when the last step is done.

    With ``refine`` (stage ``refine``): start from the EMA weights of stage ``diffusion`` and
    train on the zero-terminal-SNR schedule with the v loss (``rb.ZERO_SNR_SCHEDULER_CONFIG``).
    """
    from diffusers import DDPMScheduler
    from transformers import CLIPTokenizer

    stage = "refine" if refine else "diffusion"
    ckpt = work / f"{stage}.pt"
    steps, lr_peak = (args.refine_steps, args.refine_lr) if refine else (args.steps, args.lr)
    if steps <= 0:
        return True
    decay_steps = args.refine_decay_steps if refine else args.decay_steps
    tokenizer = CLIPTokenizer.from_pretrained(work / "tokenizer")
    text_encoder = load_text_encoder(args, work, tokenizer).requires_grad_(False).eval()  # frozen, as SD's
    text_step = torch.load(work / "text.pt", weights_only=True)["step"]
    unet = rb.build_unet(seed=args.seed)
    if refine:  # fine-tuned from the finished (EMA) weights, as Lin et al. 2024 fine-tuned a released SD 2.1
        base = torch.load(work / "diffusion.pt", weights_only=True)
        if base["step"] != args.steps:
            raise SystemExit(f"{work / 'diffusion.pt'} is at step {base['step']}, not --steps {args.steps}; "
                             "finish the diffusion stage first")
        unet.load_state_dict(unet_weights(base, use_ema=True))
    base_step = args.steps if refine else None
    latents = torch.load(work / "latents.pt", weights_only=True)
    params_all, scaling = latents["params"], latents["scaling_factor"]
    ids_all = tokenizer([r["caption"] for r in records], padding="max_length", max_length=77,
                        truncation=True, return_tensors="pt").input_ids
    empty_ids = tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    config = rb.ZERO_SNR_SCHEDULER_CONFIG if refine else rb.SCHEDULER_CONFIG
    sched = DDPMScheduler.from_config({k: v for k, v in config.items()
                                       if k not in ("skip_prk_steps", "set_alpha_to_one")}, clip_sample=False)
    alphas = sched.alphas_cumprod
    snr_all = alphas / (1 - alphas)

    modules = {"unet": unet}
    named = {f"{k}.{n}": p for k, m in modules.items() for n, p in m.named_parameters()}
    opt = torch.optim.AdamW(list(named.values()), lr=args.lr, weight_decay=0.01)
    ema = {n: p.detach().clone() for n, p in named.items()}
    g = torch.Generator().manual_seed(args.seed + (5 if refine else 3))
    step = 0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        if state.get("text_step") != text_step:
            raise SystemExit(f"{ckpt} was trained on the text encoder of text step {state.get('text_step')}, but "
                             f"text.pt is at step {text_step}; move {ckpt} away to restart")
        if state.get("vae_step") != latents.get("vae_step"):
            raise SystemExit(f"{ckpt} was trained on latents of VAE step {state.get('vae_step')}, but "
                             f"latents.pt is from step {latents.get('vae_step')}; move {ckpt} away to restart")
        if state.get("base_step") != base_step:
            raise SystemExit(f"{ckpt} refines the diffusion stage's step {state.get('base_step')}, but it is at "
                             f"step {base_step} now; move {ckpt} away to restart")
        for k, m in modules.items():
            m.load_state_dict(state[k])
        opt.load_state_dict(state["opt"])
        ema = state["ema"]
        g = generator_from(state["rng"])
        step = state["step"]
    if step >= steps:
        return True
    for m in modules.values():
        m.train()
    cpu0, last_save, losses = time.process_time(), time.time(), []

    def save():
        nonlocal cpu0, last_save
        state = {k: m.state_dict() for k, m in modules.items()}
        state.update(opt=opt.state_dict(), ema=ema, rng=g.get_state(), step=step, vae_step=latents.get("vae_step"),
                     text_step=text_step, base_step=base_step)
        atomic_save(state, ckpt)
        progress.add_cpu(stage, time.process_time() - cpu0)
        cpu0, last_save = time.process_time(), time.time()

    B = args.batch
    while step < steps:
        if budget.over():
            save()
            return False
        idx, x0, ids, drop, noise, t = draw_batch(g, params_all, ids_all, empty_ids[0], B, args.caption_dropout,
                                                  scaling, sched.config.num_train_timesteps)
        noisy = sched.add_noise(x0, noise, t)
        with torch.no_grad():
            hidden = text_encoder(ids)[0]
        pred = unet(noisy, t, hidden).sample
        if refine:  # the plain v loss (Salimans & Ho 2022, Sec. 4; SD 2's and Lin et al.'s objective)
            loss = (pred - sched.get_velocity(x0, noise, t)).pow(2).mean()
        else:  # Min-SNR-gamma weights for epsilon prediction: min(SNR, gamma) / SNR (Hang et al. 2023, Eq. 9)
            snr = snr_all[t]
            weight = torch.clamp(snr, max=args.min_snr_gamma) / snr
            loss = (weight * (pred - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        lr = lr_peak * min(1.0, (step + 1) / args.warmup)
        if decay_steps:  # cosine decay to 10 % over the last decay_steps steps
            into = max(0, step + 1 - (steps - decay_steps)) / decay_steps
            lr *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, into)))
        optimizer_step(opt, list(named.values()), loss, lr)
        step += 1
        ema_update(ema, named, min(args.ema, (1 + step) / (10 + step)))  # EMA warm-up as diffusers' EMAModel
        losses = log_every_25(work, stage, step, losses + [loss.item()], lr,
                              progress.data["cpu_s"].get(stage, 0) + time.process_time() - cpu0)
        if time.time() - last_save > args.save_every_s:
            save()
        if args.snapshot_every and step % args.snapshot_every == 0:
            save()
            export(args, work, work / f"{'refine-' if refine else ''}snapshot-{step:06d}", use_ema=True,
                   stage=stage)
    save()
    return True


def unet_weights(state: dict, use_ema: bool = True) -> dict[str, torch.Tensor]:
    """The UNet state dict of a diffusion-stage checkpoint (its EMA or its raw weights)."""
    if not use_ema:
        return state["unet"]
    return {n[len("unet."):]: p for n, p in state["ema"].items() if n.startswith("unet.")}


def final_stage(args) -> str:
    """The stage whose UNet is the model: ``refine`` when it has steps, else ``diffusion``."""
    return "refine" if args.refine_steps > 0 else "diffusion"


def export(args, work: Path, out: Path, use_ema: bool = True, stage: str | None = None) -> Path:
    """Write the diffusers folder (EMA weights of ``stage``, by default :func:`final_stage`) to
    ``out`` via a temporary sibling and a rename."""
    from transformers import CLIPTokenizer

    stage = stage or final_stage(args)
    tokenizer = CLIPTokenizer.from_pretrained(work / "tokenizer")
    text_encoder = load_text_encoder(args, work, tokenizer)
    unet = rb.build_unet(seed=args.seed)
    state = torch.load(work / f"{stage}.pt", weights_only=True)
    unet.load_state_dict(unet_weights(state, use_ema))
    scaling = torch.load(work / "latents.pt", weights_only=True)["scaling_factor"]
    vae = rb.build_vae(seed=args.seed, scaling_factor=scaling)
    vae.load_state_dict(torch.load(work / "vae.pt", weights_only=True)["model"])
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    rb.save_pipeline(tmp, work / "tokenizer", text_encoder, unet, vae, zero_snr=stage == "refine")
    return publish(args, work, tmp, out, {"stage": stage, f"{stage}_steps": int(state["step"]), "ema": use_ema})


def publish(args, work: Path, tmp: Path, out: Path, record: dict) -> Path:
    """Write ``relworld_pretraining.json`` (``record``, every argument, the CPU seconds per
    stage) into the finished folder ``tmp`` and move it to ``out``."""
    record = record | {"args": vars(args) | {"work": None, "out": None},
                       "cpu_s": json.loads((work / "progress.json").read_text())["cpu_s"]}
    (tmp / "relworld_pretraining.json").write_text(json.dumps(record, indent=2))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


# --------------------------------------------------------------------------------------------
# bind: teach the UNet word order with hard-negative captions
# --------------------------------------------------------------------------------------------


def prepare_base(args, work: Path) -> Path:
    """``work/base``: the diffusers folder the ``bind`` stage fine-tunes.

    With ``--init-from`` a copy of that folder (taken once, so a resume never depends on the
    original changing); otherwise the export of the finished ``refine`` (or ``diffusion``) stage.
    """
    from relgen.backbones.loading import weights_digest

    base = work / "base"
    if args.init_from:
        source = Path(args.init_from)
        if not rb.is_trained(source):
            raise SystemExit(f"--init-from {source}: not a complete diffusers folder (model_index.json, unet, "
                             "vae, text_encoder, tokenizer, scheduler)")
        if base.exists():
            if weights_digest(base) != weights_digest(source) and (work / "bind.pt").exists():
                raise SystemExit(f"{base} was copied from other weights than --init-from {source}; "
                                 f"move {work / 'bind.pt'} and {base} away to restart the bind stage")
            return base
        tmp = work / "base.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp)
        os.replace(tmp, base)
        return base
    if not base.exists():
        export(args, work, base, stage=final_stage(args))
    return base


def bind_negatives(records: list[dict], spec: rw.WorldSpec, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Per record, the token ids of its object-swapped and relation-flipped captions
    (``[N, 2, 77]``) and whether it has them (``[N]``).

    Only relation captions of *unbiased* shape pairs get negatives: telling the model that
    "square above circle" is not the image of a circle above a square would teach it the
    direction pretraining withholds for the biased pairs.
    """
    biased = {frozenset((p.first, p.second)) for p in spec.biased}
    texts, ok = [], []
    for r in records:
        hard = hard_negatives(r, spec) if len(r["objects"]) == 2 else None
        if hard is not None and frozenset(o["shape"] for o in r["objects"]) in biased:
            hard = None
        ok.append(hard is not None)
        swap, _, flipped = hard if hard is not None else ("", "", "")
        texts += [swap, flipped]
    ids = tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    return ids.view(len(records), 2, -1), torch.tensor(ok)


def bind_loss(err: torch.Tensor, err_neg: torch.Tensor, tau: float) -> torch.Tensor:
    """Logistic loss on the diffusion classifier's decision between a caption and its hard
    negative (Li et al. 2023, Eq. 5, a two-way softmax over captions of minus the denoising
    error): ``softplus((e_pos - e_neg) / (tau * sg(mean(e_pos, e_neg))))``. Dividing by the
    pair's (detached) mean error makes ``tau`` a relative gap, the same at every timestep."""
    scale = (0.5 * (err + err_neg)).detach().clamp_min(1e-8)
    return torch.nn.functional.softplus((err - err_neg) / (tau * scale))


#: Classes of the layout readout's relation head: the relation with the upper (or left) object
#: first ("A below B" is the scene "B above A"), then relation-free and one-object captions.
LAYOUT_RELATIONS = {"above": 0, "below": 0, "on_top_of": 1, "left_of": 2, "right_of": 2}
LAYOUT_FREE, LAYOUT_SINGLE = 3, 4
#: In worlds that name ``inside``: its class ("A inside B": the inner object A leads).
LAYOUT_INSIDE = 5


def _names_inside(spec: rw.WorldSpec) -> bool:
    return "inside" in spec.captioned_relations


def layout_targets(records: list[dict], spec: rw.WorldSpec) -> torch.Tensor:
    """Per record, what its caption says about the scene's layout (``[N, 5]``, -100 = nothing):
    the canonical relation class (:data:`LAYOUT_RELATIONS`), then the shape and colour index of
    the leading (upper, or left) object and of the trailing one.

    "a red circle above a blue square" and "a blue square below a red circle" get the same
    targets, "a red circle below a blue square" others. Relation-free captions only say
    :data:`LAYOUT_FREE` (so they cue no relation, the held-out one included), one-object
    captions :data:`LAYOUT_SINGLE`; identities' empty captions say nothing. In a world that
    names ``inside`` it is class :data:`LAYOUT_INSIDE`, the inner object leading; an object
    its caption names by shape alone (``colour_named`` false) has no colour target.
    """
    relations = dict(LAYOUT_RELATIONS, inside=LAYOUT_INSIDE) if _names_inside(spec) else LAYOUT_RELATIONS

    def colour(obj: dict) -> int:
        return spec.colours.index(obj["colour"]) if obj.get("colour_named", True) else -100

    rows = []
    for r in records:
        y = [-100] * 5
        objects = r["objects"]
        if len(objects) == 2 and r["caption"]:
            named = " and " not in f" {r['caption']} " and r.get("relation") in relations
            if not named:
                y[0] = LAYOUT_FREE
            else:
                axis = rw.RELATION_AXIS[r["relation"]]
                a_leads = axis[1] if axis is not None else True  # objects[0] is the scene's A
                lead, trail = (objects[0], objects[1]) if a_leads else (objects[1], objects[0])
                y = [relations[r["relation"]], spec.shapes.index(lead["shape"]), colour(lead),
                     spec.shapes.index(trail["shape"]), colour(trail)]
        elif len(objects) == 1 and r["caption"]:
            y[0] = LAYOUT_SINGLE
        rows.append(y)
    return torch.tensor(rows, dtype=torch.long)


def layout_heads(width: int, spec: rw.WorldSpec) -> torch.nn.ModuleList:
    """Linear readouts of :func:`layout_targets` from one hidden row."""
    sizes = (LAYOUT_SINGLE + 1 + int(_names_inside(spec)), len(spec.shapes), len(spec.colours), len(spec.shapes),
             len(spec.colours))
    return torch.nn.ModuleList(torch.nn.Linear(width, k) for k in sizes)


def layout_loss(hidden: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor,
                heads: torch.nn.ModuleList) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of the layout readout on the rows ``rows`` (``[B, L]`` bool) of ``hidden``
    (``[B, L, D]``), averaged per head over the rows whose target is known; and the accuracy."""
    loss, correct, count = hidden.new_zeros(()), 0.0, 0.0
    for j, head in enumerate(heads):
        logits = head(hidden)
        y = targets[:, j, None].expand(-1, hidden.shape[1])
        valid = rows & (y != -100)
        if not valid.any():
            continue
        loss = loss + torch.nn.functional.cross_entropy(logits[valid], y[valid])
        correct += (logits[valid].argmax(-1) == y[valid]).float().sum().item()
        count += valid.sum().item()
    return loss, torch.tensor(correct / max(count, 1.0))


def biased_flips(records: list[dict], spec: rw.WorldSpec) -> list[tuple[int, str]]:
    """``(record index, its relation-flipped caption)`` for every relation caption of a biased
    pair: the direction pretraining never shows ("a square above a circle" from "a square below
    a circle"), which the ``bind_text`` stage reads out as the record's own scene."""
    axes = {frozenset((p.first, p.second)): rw.RELATION_AXIS[p.relation][0] for p in spec.biased}
    flips = []
    for i, r in enumerate(records):
        shapes = frozenset(o["shape"] for o in r["objects"])
        axis = rw.RELATION_AXIS.get(r.get("relation") or "")
        if len(r["objects"]) == 2 and axis is not None and axes.get(shapes) == axis[0]:
            hard = hard_negatives(r, spec)
            if hard is not None:
                flips.append((i, hard[2]))
    return flips


def stage_bind_text(args, work: Path, records: list[dict], budget: Budget, progress: Progress) -> bool:
    """Fine-tune the base text encoder so that its EOT and padding rows state the layout.

    A contrastive text encoder separates "a red circle above a blue square" from "... below ..."
    and from the object swap only by the small margin its temperature needs (cosine 0.99 and
    0.96 on relworld 1's EOT row, 1.00 and 0.98 on its padding rows: the caption margins of
    ``probes.py``), too little for the UNet's cross-attention to act on. Linear readouts
    (:func:`layout_heads`) of the scene's canonical layout (:func:`layout_targets`) are trained
    with the encoder by cross-entropy on every EOT and padding row (the
    rows that take most of the cross-attention), with ``--bind-layout-anchor`` times the mean
    squared change of all rows from the base encoder's to keep the rest; the readouts are
    dropped afterwards. With ``--bind-layout-bias`` > 0 the biased pairs keep their bias in the
    encoder, where RRNet's paper locates it: each relation caption of a biased pair, flipped to
    the direction pretraining never shows (:func:`biased_flips`), is read out as the layout of
    the scene it came from, so "a square above a circle" states the circle as the upper object
    and the UNet draws the seen way round. True when the last step is done.
    """
    from transformers import CLIPTextModel, CLIPTokenizer

    from relgen.backbones.loading import weights_digest

    if args.bind_layout_steps <= 0:
        return True
    ckpt = work / "bind_text.pt"
    base = prepare_base(args, work)
    digest = weights_digest(base)
    tokenizer = CLIPTokenizer.from_pretrained(base / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(base / "text_encoder")
    reference = CLIPTextModel.from_pretrained(base / "text_encoder").requires_grad_(False).eval()
    spec = rw.world_spec(args.world)
    heads = layout_heads(text_encoder.config.hidden_size, spec)
    params = list(text_encoder.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=args.bind_layout_lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(args.seed + 8)
    step = 0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        if state.get("digest") != digest:
            raise SystemExit(f"{ckpt} fine-tunes another base text encoder than {base}; move it away to restart")
        text_encoder.load_state_dict(state["text_encoder"])
        heads.load_state_dict(state["heads"])
        opt.load_state_dict(state["opt"])
        g, step = generator_from(state["rng"]), state["step"]
    if step >= args.bind_layout_steps:
        return True
    targets = layout_targets(records, spec)
    usable = (targets != -100).any(dim=1).nonzero().flatten()
    enc = tokenizer([r["caption"] for r in records], padding="max_length", max_length=77, truncation=True,
                    return_tensors="pt")
    ids, lengths = enc.input_ids, enc.attention_mask.sum(dim=1)
    positions = torch.arange(ids.shape[1])
    flips = biased_flips(records, spec) if args.bind_layout_bias > 0 else []
    if flips:
        flip_enc = tokenizer([text for _, text in flips], padding="max_length", max_length=77, truncation=True,
                             return_tensors="pt")
        flip_ids, flip_lengths = flip_enc.input_ids, flip_enc.attention_mask.sum(dim=1)
        flip_targets = targets[torch.tensor([i for i, _ in flips])]  # the scene's, i.e. the seen direction
    text_encoder.train()
    cpu0, last_save, losses = time.process_time(), time.time(), []

    def save():
        nonlocal cpu0, last_save
        atomic_save({"text_encoder": text_encoder.state_dict(), "heads": heads.state_dict(), "opt": opt.state_dict(),
                     "rng": g.get_state(), "step": step, "digest": digest}, ckpt)
        progress.add_cpu("bind_text", time.process_time() - cpu0)
        cpu0, last_save = time.process_time(), time.time()

    while step < args.bind_layout_steps:
        if budget.over():
            save()
            return False
        idx = usable[torch.randint(len(usable), (args.text_batch,), generator=g)]
        hidden = text_encoder(ids[idx])[0]
        with torch.no_grad():
            hidden_ref = reference(ids[idx])[0]
        rows = positions[None] >= (lengths[idx] - 1)[:, None]  # the first EOT and the padding after it
        readout, accuracy = layout_loss(hidden, rows, targets[idx], heads)
        loss = readout + args.bind_layout_anchor * (hidden - hidden_ref).pow(2).mean()
        if flips:  # the unseen direction of a biased pair reads out as the seen one
            pick = torch.randint(len(flips), (args.bind_layout_bias_batch,), generator=g)
            flip_rows = positions[None] >= (flip_lengths[pick] - 1)[:, None]
            biased_readout, _ = layout_loss(text_encoder(flip_ids[pick])[0], flip_rows, flip_targets[pick], heads)
            loss = loss + args.bind_layout_bias * biased_readout
        warm = min(1.0, (step + 1) / 50)  # 50 warm-up steps, then cosine decay to 0
        lr = args.bind_layout_lr * warm * 0.5 * (1 + math.cos(math.pi * step / args.bind_layout_steps))
        optimizer_step(opt, params, loss, lr)
        step += 1
        losses = log_every_25(work, "bind_text", step, losses + [loss.item()], lr,
                              progress.data["cpu_s"].get("bind_text", 0) + time.process_time() - cpu0)
        if step % 25 == 0:  # the batch's readout accuracy over all rows and readouts
            log_row(work, stage="bind_text_acc", step=step, loss=f"{accuracy.item():.3f}", lr="", cpu_s="")
        if time.time() - last_save > args.save_every_s:
            save()
    save()
    return True


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """A short SHA-256 of a state dict's names and values."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def bind_text_state(args, work: Path) -> dict[str, torch.Tensor] | None:
    """The text encoder the ``bind`` stage starts from when it is not the base one: the
    ``bind_text`` stage's (``None`` without ``--bind-layout-steps``)."""
    if args.bind_layout_steps <= 0:
        return None
    state = torch.load(work / "bind_text.pt", weights_only=True)
    if state["step"] != args.bind_layout_steps:
        raise SystemExit(f"{work / 'bind_text.pt'} is at step {state['step']}, not --bind-layout-steps "
                         f"{args.bind_layout_steps}; finish the bind_text stage first")
    return state["text_encoder"]


def run_probe(args, base: Path, unet_state: dict, text_encoder, tokenizer, vae, sched) -> "probes.ClassifierResult":
    """The diffusion-classifier probe on the given UNet weights (the early-stop signal)."""
    from relgen.relworld import probes

    unet = rb.build_unet(seed=args.seed)
    unet.load_state_dict(unet_state)
    unet.eval()
    text_encoder.eval()
    return probes.diffusion_classifier(unet, text_encoder, tokenizer, vae, sched, num_scenes=args.bind_probe_scenes,
                                       seed=args.seed)


def stage_bind(args, work: Path, records: list[dict], images: np.ndarray, budget: Budget,
               progress: Progress) -> bool:
    """Fine-tune the UNet of ``work/base`` so that it binds word order; True when done.

    The base model's own loss (v on the zero-terminal-SNR schedule, caption dropout) plus, for
    the batch's relation captions of unbiased pairs at ``t >= --bind-min-t`` (where layout is
    decided), :func:`bind_loss` against the object-swapped or relation-flipped caption on the
    same noisy latent. ``--bind-high-t-share`` of the batch draws its timestep from
    ``[--bind-min-t, T)`` instead of ``[0, T)``; ``--bind-text-lr`` > 0 trains the text encoder
    too (its own learning rate, the same EMA), so that the conditioning itself can separate a
    caption from its swap. Every ``--bind-probe-every`` steps the EMA weights are probed
    (:func:`relgen.relworld.probes.diffusion_classifier`); the best probe's weights are kept
    and the stage stops early after ``--bind-patience`` probes without improvement.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from relgen.backbones.loading import weights_digest

    ckpt, best_path = work / "bind.pt", work / "bind_best.pt"
    if args.bind_steps <= 0:
        return True
    base = prepare_base(args, work)
    digest = weights_digest(base)
    tokenizer = CLIPTokenizer.from_pretrained(base / "tokenizer")
    train_text = args.bind_text_lr > 0
    text_encoder = CLIPTextModel.from_pretrained(base / "text_encoder").requires_grad_(train_text).eval()
    laid_out = bind_text_state(args, work)  # the bind_text stage's encoder, when it ran
    layout_digest = None
    if laid_out is not None:
        text_encoder.load_state_dict(laid_out)
        layout_digest = state_digest(laid_out)
    # the probe reads the text encoder's EMA weights when it trains, else the frozen one itself
    probe_text = (CLIPTextModel.from_pretrained(base / "text_encoder").requires_grad_(False).eval() if train_text
                  else text_encoder)
    vae = AutoencoderKL.from_pretrained(base / "vae").requires_grad_(False).eval()
    unet = UNet2DConditionModel.from_pretrained(base / "unet")
    sched = DDPMScheduler.from_pretrained(base / "scheduler")
    if sched.config.prediction_type != "v_prediction":
        raise SystemExit(f"{base}: the bind stage fine-tunes a v-prediction UNet; its scheduler says "
                         f"{sched.config.prediction_type}")

    # latents of this stage's images under the base VAE (cached, keyed by the base weights)
    lat_path = work / "bind_latents.pt"
    cached = torch.load(lat_path, weights_only=True) if lat_path.exists() else None
    if cached is None or cached.get("digest") != digest:
        cpu0 = time.process_time()
        with torch.no_grad():
            params = torch.cat([vae.encode(to_pixels(images[i:i + 256])).latent_dist.parameters.float()
                                for i in range(0, len(images), 256)])
        atomic_save({"params": params, "digest": digest}, lat_path)
        progress.add_cpu("bind_latents", time.process_time() - cpu0)
        cached = {"params": params, "digest": digest}
    params_all, scaling = cached["params"], vae.config.scaling_factor

    spec = rw.world_spec(args.world)
    ids_all = tokenizer([r["caption"] for r in records], padding="max_length", max_length=77,
                        truncation=True, return_tensors="pt").input_ids
    empty_ids = tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    neg_ids, has_neg = bind_negatives(records, spec, tokenizer)

    named = {f"unet.{n}": p for n, p in unet.named_parameters()}
    groups = [{"params": list(named.values()), "lr": args.bind_lr}]
    if train_text:
        text_named = {f"text_encoder.{n}": p for n, p in text_encoder.named_parameters()}
        groups.append({"params": list(text_named.values()), "lr": args.bind_text_lr})
        named.update(text_named)
    opt = torch.optim.AdamW(groups, weight_decay=0.01)
    peak_lrs = [group["lr"] for group in opt.param_groups]
    ema = {n: p.detach().clone() for n, p in named.items()}
    g = torch.Generator().manual_seed(args.seed + 7)
    step, best, stale = 0, {"score": -1.0, "step": 0}, 0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        if state.get("digest") != digest:
            raise SystemExit(f"{ckpt} fine-tunes other base weights than {base}; move it away to restart")
        if state.get("layout_digest") != layout_digest:
            raise SystemExit(f"{ckpt} starts from another text encoder than the bind_text stage's of "
                             f"--bind-layout-steps {args.bind_layout_steps}; move it away to restart")
        if bool(state.get("text_encoder")) != train_text:
            raise SystemExit(f"{ckpt} was trained with{'' if state.get('text_encoder') else 'out'} the text encoder; "
                             "keep --bind-text-lr as it was (0 or > 0) or move it away to restart")
        unet.load_state_dict(state["unet"])
        if train_text:
            text_encoder.load_state_dict(state["text_encoder"])
        opt.load_state_dict(state["opt"])
        ema, g, step = state["ema"], generator_from(state["rng"]), state["step"]
        best, stale = state["best"], state["stale"]
    if step >= args.bind_steps or stale >= args.bind_patience:
        return True
    unet.train()
    if train_text:
        text_encoder.train()
    cpu0, last_save, losses = time.process_time(), time.time(), []

    def ema_of(module: str) -> dict[str, torch.Tensor]:
        return {n[len(module) + 1:]: p for n, p in ema.items() if n.startswith(module + ".")}

    def save():
        nonlocal cpu0, last_save
        atomic_save({"unet": unet.state_dict(), "text_encoder": text_encoder.state_dict() if train_text else None,
                     "opt": opt.state_dict(), "ema": ema, "rng": g.get_state(),
                     "step": step, "digest": digest, "best": best, "stale": stale,
                     "layout_digest": layout_digest}, ckpt)
        progress.add_cpu("bind", time.process_time() - cpu0)
        cpu0, last_save = time.process_time(), time.time()

    def probe() -> None:
        nonlocal best, stale
        t0 = time.process_time()
        if train_text:
            probe_text.load_state_dict(ema_of("text_encoder"))
        result = run_probe(args, base, ema_of("unet"), probe_text, tokenizer, vae, sched)
        score = result.summary()
        row = {"step": step, "score": round(score, 4), **{f"{part}_{k}": round(v["rate"], 4)
               for part, d in result.to_dict().items() for k, v in d.items()}}
        with open(work / "bind_probes.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"[pretrain] bind step {step}: probe {row}", flush=True)
        if score > best["score"]:
            best, stale = {"score": score, "step": step, "probe": row}, 0
            atomic_save({"unet": ema_of("unet"), "text_encoder": ema_of("text_encoder") if train_text else None,
                         "step": step, "digest": digest, "probe": row}, best_path)
        else:
            stale += 1
        progress.add_cpu("bind_probe", time.process_time() - t0)

    B, K = args.batch, args.bind_max_neg
    while step < args.bind_steps and stale < args.bind_patience:
        if budget.over():
            save()
            return False
        idx, x0, ids, drop, noise, t = draw_batch(g, params_all, ids_all, empty_ids[0], B, args.caption_dropout,
                                                  scaling, sched.config.num_train_timesteps)
        kind = torch.randint(0, 2, (B,), generator=g)  # 0: object swap, 1: relation flip
        if args.bind_high_t_share > 0:  # layout is decided at high t: draw a share of t from [min_t, T)
            t_high = torch.randint(args.bind_min_t, sched.config.num_train_timesteps, (B,), generator=g)
            t = torch.where(torch.rand(B, generator=g) < args.bind_high_t_share, t_high, t)
        pick = (has_neg[idx] & ~drop & (t >= args.bind_min_t)).nonzero().flatten()[:K]
        noisy = sched.add_noise(x0, noise, t)
        with torch.set_grad_enabled(train_text):
            hidden = text_encoder(torch.cat([ids, neg_ids[idx[pick], kind[pick]]]))[0]
        pred = unet(torch.cat([noisy, noisy[pick]]), torch.cat([t, t[pick]]), hidden).sample
        target = sched.get_velocity(x0, noise, t)  # the base model's v loss (Salimans & Ho 2022)
        err = (pred[:B] - target).pow(2).mean(dim=(1, 2, 3))
        err_neg = (pred[B:] - target[pick]).pow(2).mean(dim=(1, 2, 3))
        loss = err.mean()
        if len(pick):
            loss = loss + args.bind_weight * bind_loss(err[pick], err_neg, args.bind_tau).mean()
        factor = min(1.0, (step + 1) / args.warmup)
        if args.bind_decay_steps:  # cosine decay to 10 % over the last steps
            into = max(0, step + 1 - (args.bind_steps - args.bind_decay_steps)) / args.bind_decay_steps
            factor *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, into)))
        for group, peak in zip(opt.param_groups, peak_lrs):
            group["lr"] = peak * factor
        lr = args.bind_lr * factor
        optimizer_step(opt, list(named.values()), loss, None)
        step += 1
        ema_update(ema, named, min(args.ema, (1 + step) / (10 + step)))
        won = (err[pick] < err_neg).float().mean().item() if len(pick) else float("nan")
        losses = log_every_25(work, "bind", step, losses + [loss.item()], lr,
                              progress.data["cpu_s"].get("bind", 0) + time.process_time() - cpu0)
        if step % 25 == 0:
            log_row(work, stage="bind_won", step=step, loss=f"{won:.3f}", lr="", cpu_s="")
        if time.time() - last_save > args.save_every_s:
            save()
        if step % args.bind_probe_every == 0 or step == args.bind_steps:
            probe()
            save()
    save()
    return True


def export_bind(args, work: Path, out: Path) -> Path:
    """Write the bind stage's best-probe EMA UNet (and text encoder, when the stage trained it)
    with the base folder's other modules to ``out``."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel

    from relgen.backbones.loading import weights_digest

    base = work / "base"
    state = torch.load(work / "bind_best.pt", weights_only=True)
    unet = rb.build_unet(seed=args.seed)
    unet.load_state_dict(state["unet"])
    text_encoder = CLIPTextModel.from_pretrained(base / "text_encoder")
    if state.get("text_encoder"):  # trained in the stage (--bind-text-lr)
        text_encoder.load_state_dict(state["text_encoder"])
    elif args.bind_layout_steps > 0:  # the bind_text stage's
        text_encoder.load_state_dict(bind_text_state(args, work))
    vae = AutoencoderKL.from_pretrained(base / "vae")
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    rb.save_pipeline(tmp, base / "tokenizer", text_encoder, unet, vae, zero_snr=True)
    base_record = base / "relworld_pretraining.json"
    probes_log = work / "bind_probes.jsonl"
    return publish(args, work, tmp, out, {
        "stage": "bind", "bind_step": int(state["step"]), "ema": True, "probe": state["probe"],
        "probes": [json.loads(line) for line in probes_log.read_text().splitlines()] if probes_log.exists() else [],
        "base": {"init_from": args.init_from, "digest": weights_digest(base),
                 "recipe": json.loads(base_record.read_text()) if base_record.exists() else None},
        "world": rw.world_spec(args.world).to_dict() | {"version": rw.WORLD_VERSION, "name": str(args.world)},
    })


# --------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default=os.path.join(os.path.expanduser(os.environ.get("RELGEN_CACHE", "~/.cache/relgen")),
                                                  "relworld_pretrain"), help="checkpoints and data")
    p.add_argument("--out", default=str(rb.shipped_model_folder()), help="where the final model is written")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--world", default="2", choices=sorted(rw.WORLDS),
                   help="the world drawn for the pretraining data (relgen.relworld.world.WORLDS)")
    p.add_argument("--num-images", type=int, default=30000)
    p.add_argument("--text-steps", type=int, default=1000, help="contrastive text-encoder steps")
    p.add_argument("--text-batch", type=int, default=128)
    p.add_argument("--text-lr", type=float, default=5e-4)
    p.add_argument("--vae-steps", type=int, default=4000)
    p.add_argument("--vae-batch", type=int, default=32)
    p.add_argument("--vae-crop", type=int, default=32, help="side of the random training crops")
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--vae-kl", type=float, default=1e-6)
    p.add_argument("--vae-object-weight", type=float, default=0.0, help="extra L1 weight of object pixels")
    p.add_argument("--vae-object-level", type=float, default=0.0,
                   help="a pixel whose darkest channel is below this (in [-1, 1]) is an object pixel")
    p.add_argument("--steps", type=int, default=6000, help="diffusion optimizer steps")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--decay-steps", type=int, default=1500, help="cosine LR decay to 10%% over the last N steps")
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--min-snr-gamma", type=float, default=5.0)
    p.add_argument("--caption-dropout", type=float, default=0.1)
    p.add_argument("--refine-steps", type=int, default=7000,
                   help="zero-terminal-SNR v-prediction steps after the diffusion stage (0: none)")
    p.add_argument("--refine-lr", type=float, default=3e-4)
    p.add_argument("--refine-decay-steps", type=int, default=1500)
    p.add_argument("--init-from", default=None,
                   help="a diffusers folder whose modules start the bind stage (the stages before it are skipped)")
    p.add_argument("--bind-steps", type=int, default=0,
                   help="hard-negative fine-tuning steps after the other stages (0: none, the shipped recipe)")
    p.add_argument("--bind-lr", type=float, default=1e-4)
    p.add_argument("--bind-decay-steps", type=int, default=1000)
    p.add_argument("--bind-weight", type=float, default=0.05, help="weight of the hard-negative loss")
    p.add_argument("--bind-tau", type=float, default=0.05, help="relative error gap of the logistic loss")
    p.add_argument("--bind-min-t", type=int, default=300, help="hard negatives only at t >= this")
    p.add_argument("--bind-max-neg", type=int, default=16, help="hard negatives per step at most")
    p.add_argument("--bind-high-t-share", type=float, default=0.0,
                   help="share of the batch whose timestep is drawn from [--bind-min-t, T)")
    p.add_argument("--bind-text-lr", type=float, default=0.0,
                   help="learning rate of the text encoder in the bind stage (0: frozen)")
    p.add_argument("--bind-layout-steps", type=int, default=0,
                   help="steps of the bind_text stage: the text encoder learns to state the layout on its EOT "
                        "and padding rows before the bind stage (0: none)")
    p.add_argument("--bind-layout-lr", type=float, default=2e-4)
    p.add_argument("--bind-layout-anchor", type=float, default=1.0,
                   help="weight of the mean squared change from the base text encoder's rows")
    p.add_argument("--bind-layout-bias", type=float, default=0.0,
                   help="weight of the readout loss that reads the unseen direction of biased pairs as the seen one")
    p.add_argument("--bind-layout-bias-batch", type=int, default=16)
    p.add_argument("--bind-probe-every", type=int, default=500)
    p.add_argument("--bind-probe-scenes", type=int, default=96)
    p.add_argument("--bind-patience", type=int, default=3, help="stop after this many probes without improvement")
    p.add_argument("--snapshot-every", type=int, default=0, help="also export a snapshot folder every N steps")
    p.add_argument("--save-every-s", type=float, default=300.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-minutes", type=float, default=None, help="stop cleanly after this long")
    p.add_argument("--stop-after", choices=STAGES[2:9], default=None, help="stop after this stage")
    p.add_argument("--status", action="store_true", help="print progress and exit")
    p.add_argument("--export-to", default=None, help="only export the current EMA weights to this folder")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    progress = Progress(work)
    if args.status:
        print(json.dumps(progress.data, indent=2))
        return 0
    if args.export_to:
        bound = args.bind_steps > 0 and (work / "bind_best.pt").exists()
        print(export_bind(args, work, Path(args.export_to)) if bound else export(args, work, Path(args.export_to)))
        return 0
    budget = Budget(args.max_minutes)
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.set_verbosity_error()

    cpu0 = time.process_time()
    root = stage_data(args, work)
    if not progress.done("data"):
        progress.add_cpu("data", time.process_time() - cpu0)
        progress.finish("data")
    records = rw.read_pretraining_set(root)
    images = load_images(work, records)
    stages = [("text", lambda: stage_text(args, work, records, images, budget, progress)),
              ("vae", lambda: stage_vae(args, work, images, budget, progress)),
              ("latents", lambda: stage_latents(args, work, images, budget, progress)),
              ("diffusion", lambda: stage_diffusion(args, work, records, budget, progress)),
              ("refine", lambda: stage_diffusion(args, work, records, budget, progress, refine=True))]
    if args.init_from:  # the stages before bind come from that folder
        stages = []
    else:
        stage_tokenizer(args, work, records)
        progress.finish("tokenizer")
    stages.append(("bind_text", lambda: stage_bind_text(args, work, records, budget, progress)))
    stages.append(("bind", lambda: stage_bind(args, work, records, images, budget, progress)))
    for name, run in stages:
        print(f"[pretrain] stage {name}", flush=True)  # each stage returns at once when complete
        if not run():
            print(f"[pretrain] stopped in stage {name}; run again to continue", flush=True)
            return 3
        progress.finish(name)
        if args.stop_after == name:
            print(f"[pretrain] stopped after stage {name} (--stop-after)", flush=True)
            return 0
    out = export_bind(args, work, Path(args.out)) if args.bind_steps > 0 else export(args, work, Path(args.out))
    progress.finish("export")
    total = sum(progress.data["cpu_s"].values())
    print(f"[pretrain] wrote {out} ({rb.weights_size(out) / 1e6:.1f} MB of weights); "
          f"CPU time {total / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

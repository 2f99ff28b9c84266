"""The rehearsal's model part: the real AudioLDM2-music stack, CLIP ViT-L/14 and ImageBind-huge, built at full
size from the repo's configs with seeded random weights (in memory, nothing saved), and their costs measured.

    python -m art2mus.rehearsal.model_part [--size real|tiny] [--out reports/rehearsal]
                                           [--device auto|cpu|cuda] [--quick]

Writes `<out>/rehearsal.json` and `<out>/rehearsal.md` (rewritten after every section, atomically, so a run
cut short keeps what it measured):
1. parameter counts of every part (on "meta": no weights), build seconds and peak memory per stage;
2. one aligner training step through the frozen stack at 10.24 s (latents [B, 8, 256, 16]) as art2mus trains:
   aligner -> GPT-2 (8 LOA vectors, diffusers' generate_language_model) -> UNet (T5 stream constant, mask None)
   -> eps-MSE -> backward into the aligner only; micro-batch 1 and 2, with and without UNet gradient
   checkpointing; one AdamW step with accumulation 2;
3. one 10.24 s generation with DPM-Solver++ and classifier-free guidance, VAE decode and HiFi-GAN;
4. the largest micro-batch that fits 24/40/80 GiB (CUDA: measured under a capped allocator; CPU: derived)
   and the micro-batch x accumulation plan for an effective batch of 16;
5. ImageBind-huge's vision branch (the AudioLDM2 parts freed first); 6. CLIP ViT-L/14's vision tower.

Imports only the standard library, torch, transformers, diffusers, safetensors, numpy and
`art2mus.rehearsal.checkpoints`, so it runs on a bare GPU machine.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import re
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import CLIPVisionConfig

from art2mus.rehearsal import checkpoints
from art2mus.rehearsal.checkpoints import (
    build_clip_vision,
    build_imagebind,
    build_part,
    empty_parameter_counts,
    quiet_libraries,
    with_lm_head,
)

GIB = 1024**3
SAMPLE_RATE = 16_000
SECONDS = 10.24
LATENT_SHAPE = (8, 256, 16)  # 10.24 s = 1,024 mel frames, VAE downsamples 4x; 64 mels -> 16
K_TOKENS = 4  # aligner output: K x d_lm GPT-2 input embeddings
GUIDANCE = 3.5
EFFECTIVE_BATCH = 16
CAPACITIES_GIB = (24, 40, 80)
CUDA_RESERVE_GIB = 1.5  # CUDA context + allocator slack, left out of a derived budget
SEED = 0


# ---- memory and timing ---------------------------------------------------------------------------
def proc_status_kib(field: str) -> int | None:
    """A VmHWM/VmRSS-style field of /proc/self/status in KiB (None off Linux)."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field}:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def reset_peak(device: torch.device) -> None:
    """Start a new peak: CUDA's allocator statistics, or the process's VmHWM (via /proc/self/clear_refs)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_bytes(device: torch.device) -> dict[str, int | None]:
    """The peak since `reset_peak` and what is held now (CUDA: allocated; CPU: resident set)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return {"peak_bytes": int(torch.cuda.max_memory_allocated(device)),
                "now_bytes": int(torch.cuda.memory_allocated(device))}
    hwm, rss = proc_status_kib("VmHWM"), proc_status_kib("VmRSS")
    return {"peak_bytes": hwm * 1024 if hwm is not None else None, "now_bytes": rss * 1024 if rss is not None else None}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gib(value: float | int | None) -> str:
    return "-" if value is None else f"{value / GIB:.2f}"


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def count(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def weight_bytes(*modules: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for module in modules for p in module.parameters())


# ---- the report ------------------------------------------------------------------------------------
def atomic_write(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file beside it and os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


class Report:
    """The results, rewritten to JSON and Markdown after every section."""

    def __init__(self, out: Path, meta: dict[str, Any]) -> None:
        self.out = out
        self.data: dict[str, Any] = {"meta": meta, "stages": [], "errors": []}

    def write(self) -> None:
        self.data["meta"]["written_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        atomic_write(self.out / "rehearsal.json", json.dumps(self.data, indent=2, default=str) + "\n")
        atomic_write(self.out / "rehearsal.md", render_markdown(self.data))

    @contextlib.contextmanager
    def stage(self, name: str, device: torch.device) -> Iterator[dict[str, Any]]:
        """Time a stage and record its peak memory (also when it fails)."""
        free_memory(device)
        reset_peak(device)
        record: dict[str, Any] = {"stage": name}
        start = time.perf_counter()
        try:
            yield record
        finally:
            sync(device)
            record["seconds"] = round(time.perf_counter() - start, 3)
            record.update(peak_bytes(device))
            self.data["stages"].append(record)
            self.write()

    def section(self, name: str, run: Callable[[], Any]) -> Any:
        """Run one section; a failure is recorded and the run goes on."""
        try:
            result = run()
        except Exception as error:  # noqa: BLE001 - a rehearsal reports what broke and continues
            self.data["errors"].append({"section": name, "error": f"{type(error).__name__}: {error}",
                                        "traceback": traceback.format_exc(limit=6)})
            self.write()
            print(f"[{name}] FAILED: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
            return None
        self.write()
        return result


# ---- the aligner training step -------------------------------------------------------------------
class LanguageModelHolder:
    """The one attribute AudioLDM2Pipeline.generate_language_model reads from its pipeline."""

    def __init__(self, language_model: torch.nn.Module) -> None:
        self.language_model = language_model


def make_aligner(clip_dim: int, lm_dim: int, seed: int = SEED) -> torch.nn.Sequential:
    """art2mus's aligner: Linear(clip -> 1536) - Tanh - Linear(1536 -> K x d_lm)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.nn.Sequential(torch.nn.Linear(clip_dim, 1536), torch.nn.Tanh(),
                                   torch.nn.Linear(1536, K_TOKENS * lm_dim))


class SavedBytes:
    """Bytes of the tensors autograd saves for backward (deduplicated by data_ptr, weights left out), plus the
    inputs UNet gradient checkpointing keeps for recomputation (its non-reentrant hooks hide what's inside)."""

    def __init__(self, exclude: set[int]) -> None:
        self.seen: set[int] = set(exclude)
        self.total = 0

    def add(self, tensor: torch.Tensor) -> None:
        if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
            return
        pointer = tensor.data_ptr()
        if pointer in self.seen:
            return
        self.seen.add(pointer)
        self.total += tensor.numel() * tensor.element_size()

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        self.add(tensor)
        return tensor


ACTIVE_COUNTER: list[SavedBytes] = []


def counting_checkpoint(module: Callable[..., Any], *args: Any) -> Any:
    """diffusers' default checkpoint function (non-reentrant), counting the inputs it keeps alive."""
    for counter in ACTIVE_COUNTER:
        for argument in args:
            if isinstance(argument, torch.Tensor):
                counter.add(argument)
    return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False)


class Trainer:
    """The frozen stack and a trainable aligner, as art2mus trains it."""

    def __init__(self, unet: torch.nn.Module, language_model: torch.nn.Module, scheduler: Any,
                 device: torch.device, clip_dim: int = 768) -> None:
        self.unet, self.language_model, self.scheduler, self.device = unet, language_model, scheduler, device
        self.lm_dim = int(language_model.config.n_embd)
        self.clip_dim = clip_dim
        cross = unet.config.cross_attention_dim
        self.t5_dim = int(cross[0][-1] if isinstance(cross[0], (list, tuple)) else cross[-1])
        self.max_new_tokens = int(getattr(language_model.config, "max_new_tokens", 8))
        generator = torch.Generator().manual_seed(SEED + 1)
        # the empty prompt's T5 embedding is one token; random stands in for it
        self.t5 = torch.randn(1, 1, self.t5_dim, generator=generator).to(device)
        self.parameter_pointers = {p.data_ptr() for m in (unet, language_model) for p in m.parameters()}
        for module in (unet, language_model):
            module.requires_grad_(False)
            module.eval()

    def set_checkpointing(self, enabled: bool) -> None:
        if enabled:
            self.unet.enable_gradient_checkpointing(gradient_checkpointing_func=counting_checkpoint)
        else:
            self.unet.disable_gradient_checkpointing()

    def language_of_audio(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        from diffusers.pipelines.audioldm2.pipeline_audioldm2 import AudioLDM2Pipeline

        mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
        return AudioLDM2Pipeline.generate_language_model(LanguageModelHolder(self.language_model), inputs_embeds,
                                                         max_new_tokens=self.max_new_tokens, attention_mask=mask)

    train_shape = LATENT_SHAPE  # --quick trains on 2.56 s crops (generation stays 10.24 s)

    def batch(self, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        clip = torch.randn(size, self.clip_dim, generator=generator)
        latents = torch.randn(size, *self.train_shape, generator=generator)
        noise = torch.randn(size, *self.train_shape, generator=generator)
        steps = torch.randint(0, self.scheduler.config.num_train_timesteps, (size,), generator=generator)
        return clip.to(self.device), latents.to(self.device), noise.to(self.device), steps.to(self.device)

    def loss(self, aligner: torch.nn.Module, size: int, seed: int) -> torch.Tensor:
        clip, latents, noise, steps = self.batch(size, seed)
        inputs_embeds = aligner(clip).view(size, K_TOKENS, self.lm_dim)
        loa = self.language_of_audio(inputs_embeds)
        noisy = self.scheduler.add_noise(latents, noise, steps)
        t5 = self.t5.expand(size, -1, -1)
        # No T5 mask: the empty prompt's is all ones, and passing one shifts diffusers' checkpointed arguments.
        prediction = self.unet(noisy, steps, encoder_hidden_states=loa, encoder_hidden_states_1=t5,
                               encoder_attention_mask_1=None).sample
        return F.mse_loss(prediction.float(), noise.float())

    def measure_step(self, aligner: torch.nn.Module, size: int, checkpointing: bool) -> dict[str, Any]:
        """One forward + backward: seconds and activation memory (CPU: saved tensors; CUDA: allocator peak)."""
        self.set_checkpointing(checkpointing)
        aligner.zero_grad(set_to_none=True)
        free_memory(self.device)
        sync(self.device)
        counter = SavedBytes(self.parameter_pointers | {p.data_ptr() for p in aligner.parameters()})
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            baseline = torch.cuda.memory_allocated(self.device)
        start = time.perf_counter()
        ACTIVE_COUNTER.append(counter)
        try:
            with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda tensor: tensor):
                loss = self.loss(aligner, size, seed=SEED + size)
                forward_seconds = time.perf_counter() - start
        finally:
            ACTIVE_COUNTER.remove(counter)
        loss.backward()
        sync(self.device)
        seconds = time.perf_counter() - start
        result: dict[str, Any] = {
            "micro_batch": size, "gradient_checkpointing": checkpointing, "loss": float(loss.detach()),
            "step_seconds": round(seconds, 3), "forward_seconds": round(forward_seconds, 3),
            "saved_tensor_bytes": counter.total,
        }
        if self.device.type == "cuda":
            activation = int(torch.cuda.max_memory_allocated(self.device) - baseline)
            result["activation_bytes"] = activation
            result["activation_method"] = "cuda max_memory_allocated - baseline"
        else:
            result["activation_bytes"] = counter.total
            result["activation_method"] = "saved_tensors_hooks bytes (+ checkpointed blocks' inputs)"
        result["activation_bytes_per_sample"] = result["activation_bytes"] // size
        result["aligner_grad_norm"] = float(torch.norm(torch.stack(
            [p.grad.norm() for p in aligner.parameters() if p.grad is not None])))
        del loss
        aligner.zero_grad(set_to_none=True)
        self.set_checkpointing(False)
        return result

    def optimizer_step(self, aligner: torch.nn.Module, accumulation: int = 2, micro_batch: int = 1) -> dict[str, Any]:
        """One AdamW step (lr 2e-5, weight decay 1e-2, clip 1.0) over `accumulation` micro-batches."""
        optimizer = torch.optim.AdamW(aligner.parameters(), lr=2e-5, weight_decay=1e-2)
        before = [p.detach().clone() for p in aligner.parameters()]
        start = time.perf_counter()
        losses = []
        for index in range(accumulation):
            loss = self.loss(aligner, micro_batch, seed=SEED + 100 + index) / accumulation
            loss.backward()
            losses.append(float(loss.detach()) * accumulation)
        norm = torch.nn.utils.clip_grad_norm_(aligner.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(self.device)
        changed = max(float((p.detach() - b).abs().max()) for p, b in zip(aligner.parameters(), before))
        state_bytes = sum(t.numel() * t.element_size() for s in optimizer.state.values()
                          for t in s.values() if isinstance(t, torch.Tensor))
        return {"micro_batch": micro_batch, "accumulation": accumulation, "lr": 2e-5, "clip": 1.0,
                "losses": losses, "grad_norm_before_clip": float(norm), "max_parameter_change": changed,
                "optimizer_state_bytes": state_bytes, "seconds": round(time.perf_counter() - start, 3)}

    def fits(self, aligner: torch.nn.Module, size: int, checkpointing: bool) -> bool:
        """Whether one step of `size` runs under the current allocator cap (CUDA)."""
        self.set_checkpointing(checkpointing)
        try:
            loss = self.loss(aligner, size, seed=SEED)
            loss.backward()
            sync(self.device)
            return True
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            loss = None
            aligner.zero_grad(set_to_none=True)
            self.set_checkpointing(False)
            free_memory(self.device)


# ---- batch fitting ---------------------------------------------------------------------------------
def derive_fit(steps: list[dict[str, Any]], fixed_bytes: int, capacities: tuple[int, ...]) -> dict[str, Any]:
    """Largest micro-batch per capacity from batch 1 and 2: activations a(B) = c + s B, plus the weights."""
    fits: dict[str, Any] = {}
    for checkpointing in (False, True):
        by_batch = {s["micro_batch"]: s["activation_bytes"] for s in steps if s["gradient_checkpointing"] == checkpointing}
        if 1 not in by_batch or 2 not in by_batch:
            continue
        per_sample = max(by_batch[2] - by_batch[1], 1)
        constant = max(by_batch[1] - per_sample, 0)
        key = "with_checkpointing" if checkpointing else "without_checkpointing"
        fits[key] = {"per_sample_bytes": per_sample, "constant_bytes": constant, "max_micro_batch": {}}
        for capacity in capacities:
            budget = capacity * GIB - CUDA_RESERVE_GIB * GIB - fixed_bytes - constant
            fits[key]["max_micro_batch"][str(capacity)] = max(int(budget // per_sample), 0)
    return fits


def measure_fit(trainer: Trainer, aligner: torch.nn.Module, capacities: tuple[int, ...], quick: bool) -> dict[str, Any]:
    """Largest micro-batch per capacity on CUDA: the allocator capped to the capacity, bisected."""
    device = trainer.device
    total = torch.cuda.get_device_properties(device).total_memory
    fits: dict[str, Any] = {}
    limit = 8 if quick else 1024
    for checkpointing in (False, True):
        key = "with_checkpointing" if checkpointing else "without_checkpointing"
        fits[key] = {"max_micro_batch": {}, "trials": []}
        for capacity in capacities:
            if capacity * GIB > total:
                fits[key]["max_micro_batch"][str(capacity)] = None
                continue
            torch.cuda.set_per_process_memory_fraction(capacity * GIB / total, device)
            try:
                low, high = 0, 1
                while high <= limit and trainer.fits(aligner, high, checkpointing):
                    fits[key]["trials"].append([capacity, high, True])
                    low, high = high, high * 2
                fits[key]["trials"].append([capacity, high, False])
                high = min(high, limit + 1)
                while high - low > 1:
                    middle = (low + high) // 2
                    ok = trainer.fits(aligner, middle, checkpointing)
                    fits[key]["trials"].append([capacity, middle, ok])
                    low, high = (middle, high) if ok else (low, middle)
                fits[key]["max_micro_batch"][str(capacity)] = low
            finally:
                torch.cuda.set_per_process_memory_fraction(1.0, device)
                free_memory(device)
    return fits


def batch_plan(fits: dict[str, Any], capacities: tuple[int, ...]) -> dict[str, Any]:
    """Micro-batch x accumulation = 16 per capacity: the largest divisor of 16 that fits, without checkpointing
    when at least 2 fit (checkpointing costs ~1.6x compute), else with it."""
    divisors = [d for d in range(EFFECTIVE_BATCH, 0, -1) if EFFECTIVE_BATCH % d == 0]
    plan: dict[str, Any] = {}
    for capacity in capacities:
        options: dict[str, Any] = {}
        for key in ("without_checkpointing", "with_checkpointing"):
            fit = fits.get(key, {}).get("max_micro_batch", {}).get(str(capacity))
            if fit is None:
                continue
            micro = next((d for d in divisors if d <= fit), None)
            options[key] = None if micro is None else {"micro_batch": micro, "accumulation": EFFECTIVE_BATCH // micro}
        no_ckpt, ckpt = options.get("without_checkpointing"), options.get("with_checkpointing")
        if no_ckpt and (no_ckpt["micro_batch"] >= 2 or not ckpt or ckpt["micro_batch"] <= no_ckpt["micro_batch"]):
            chosen = {**no_ckpt, "gradient_checkpointing": False}
        elif ckpt:
            chosen = {**ckpt, "gradient_checkpointing": True}
        else:
            chosen = None
        plan[str(capacity)] = {"options": options, "chosen": chosen, "effective_batch": EFFECTIVE_BATCH}
    return plan


# ---- generation ------------------------------------------------------------------------------------
@torch.no_grad()
def generate(trainer: Trainer, aligner: torch.nn.Module, vae: torch.nn.Module, vocoder: torch.nn.Module,
             steps: int) -> dict[str, Any]:
    """One 10.24 s clip: DPM-Solver++ with guidance (null LOA zeros + conditional), VAE decode, HiFi-GAN."""
    from diffusers import DPMSolverMultistepScheduler

    device, unet = trainer.device, trainer.unet
    with quiet_libraries():
        scheduler = DPMSolverMultistepScheduler.from_config(trainer.scheduler.config, algorithm_type="dpmsolver++")
    scheduler.set_timesteps(steps, device=device)
    clip = torch.randn(1, trainer.clip_dim, generator=torch.Generator().manual_seed(SEED + 7)).to(device)
    start = time.perf_counter()
    loa = trainer.language_of_audio(aligner(clip).view(1, K_TOKENS, trainer.lm_dim))
    sync(device)
    gpt2_seconds = time.perf_counter() - start
    conditioning = torch.cat([torch.zeros_like(loa), loa])
    t5 = trainer.t5.expand(2, -1, -1)
    latents = torch.randn(1, *LATENT_SHAPE, generator=torch.Generator().manual_seed(SEED + 8)).to(device)
    latents = latents * scheduler.init_noise_sigma
    step_seconds = []
    for timestep in scheduler.timesteps:
        start = time.perf_counter()
        model_input = scheduler.scale_model_input(torch.cat([latents] * 2), timestep)
        noise = unet(model_input, timestep, encoder_hidden_states=conditioning, encoder_hidden_states_1=t5,
                     encoder_attention_mask_1=None).sample
        uncond, cond = noise.chunk(2)
        latents = scheduler.step(uncond + GUIDANCE * (cond - uncond), timestep, latents).prev_sample
        sync(device)
        step_seconds.append(time.perf_counter() - start)
    start = time.perf_counter()
    mel = vae.decode(latents / vae.config.scaling_factor).sample
    sync(device)
    vae_seconds = time.perf_counter() - start
    start = time.perf_counter()
    waveform = vocoder(mel.squeeze(1))
    sync(device)
    vocoder_seconds = time.perf_counter() - start
    per_step = float(np.mean(step_seconds))
    expected = int(round(SECONDS * SAMPLE_RATE))

    def real_time_factor(n: int) -> float:
        return round((gpt2_seconds + n * per_step + vae_seconds + vocoder_seconds) / SECONDS, 3)

    return {
        "scheduler": "DPMSolverMultistepScheduler(dpmsolver++)", "guidance_scale": GUIDANCE, "unet_batch": 2,
        "steps_measured": steps, "unet_step_seconds": [round(s, 3) for s in step_seconds],
        "seconds_per_unet_step": round(per_step, 3), "gpt2_seconds": round(gpt2_seconds, 3),
        "vae_decode_seconds": round(vae_seconds, 3), "vocoder_seconds": round(vocoder_seconds, 3),
        "mel_shape": list(mel.shape), "generated_samples": int(waveform.shape[-1]),
        "expected_samples": expected, "extra_samples": int(waveform.shape[-1]) - expected,
        "trimmed_samples": min(int(waveform.shape[-1]), expected),
        "waveform_finite": bool(torch.isfinite(waveform).all()),
        "real_time_factor_measured": real_time_factor(steps),
        "real_time_factor_extrapolated": {
            "note": "extrapolated from the measured seconds per UNet step (+ GPT-2, VAE decode, HiFi-GAN once)",
            "dpmsolver_25_steps": real_time_factor(25), "ddim_200_steps": real_time_factor(200)},
        "seconds_per_clip_extrapolated": {"dpmsolver_25_steps": round(real_time_factor(25) * SECONDS, 1),
                                          "ddim_200_steps": round(real_time_factor(200) * SECONDS, 1)},
    }


# ---- image encoders --------------------------------------------------------------------------------
def images(size: int, device: torch.device, count_: int = 2) -> torch.Tensor:
    """Two normalised 224x224 stand-in images (random pixels)."""
    return torch.randn(count_, 3, size, size, generator=torch.Generator().manual_seed(SEED + 9)).to(device)


def imagebind_vision_parameters(model: torch.nn.Module) -> int:
    total = 0
    for family in ("modality_preprocessors", "modality_trunks", "modality_heads", "modality_postprocessors"):
        modules = getattr(model, family, None)
        if modules is not None and "vision" in modules:
            total += count(modules["vision"])
    return total


# ---- main ------------------------------------------------------------------------------------------
def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m art2mus.rehearsal.model_part", description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=checkpoints.SIZES, default="real")
    parser.add_argument("--out", type=Path, default=Path("reports/rehearsal"))
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--quick", action="store_true", help="fewer generation steps and fit trials (tests)")
    parser.add_argument("--steps", type=int, default=None, help="generation steps (default: 3 on CPU, 25 on CUDA)")
    return parser.parse_args(argv)


def resolve_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    return torch.device(choice)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    device = resolve_device(args.device)
    steps = args.steps or (2 if args.quick else (25 if device.type == "cuda" else 3))
    import diffusers
    import transformers

    meta = {"size": args.size, "device": str(device), "quick": args.quick, "seed": SEED, "dtype": "float32",
            "clip_seconds": SECONDS, "latent_shape": list(LATENT_SHAPE), "cpu_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "diffusers": diffusers.__version__, "host": platform.node(),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "memory_method": "cuda max_memory_allocated" if device.type == "cuda"
            else "VmHWM from /proc/self/status (reset per stage via /proc/self/clear_refs)"}
    report = Report(args.out, meta)
    data = report.data
    print(f"rehearsal model part: size={args.size} device={device} steps={steps} -> {args.out}", flush=True)

    # 1. parameter counts, on meta
    def parameters() -> None:
        with report.stage("count parameters (meta)", device):
            counts = empty_parameter_counts(args.size)
            try:
                imagebind = build_imagebind(args.size, device="meta")
                counts["imagebind"] = count(imagebind)
                counts["imagebind_vision"] = imagebind_vision_parameters(imagebind)
                del imagebind
            except ImportError as error:
                data["imagebind_missing"] = f"imagebind is not installed ({error})"
            data["parameters"] = counts
            kept = ("unet", "language_model", "vae", "vocoder")
            data["parameters_summary"] = {
                "audioldm2_all": sum(counts[n] for n in checkpoints.MODEL_PARTS),
                "backbone_kept": sum(counts[n] for n in kept),
                "backbone_kept_fp32_bytes": 4 * sum(counts[n] for n in kept)}
    report.section("parameters", parameters)

    # 2. training
    state: dict[str, Any] = {}

    def build_training() -> None:
        with report.stage("build UNet + GPT-2 + scheduler", device):
            state["unet"] = build_part("unet", args.size, SEED, device)
            state["lm"] = with_lm_head(build_part("language_model", args.size, SEED, device))
            state["scheduler"] = build_part("scheduler", args.size)
            clip_dim = int(CLIPVisionConfig.from_pretrained(checkpoints.CLIP_CONFIGS[args.size]).projection_dim)
            state["trainer"] = trainer = Trainer(state["unet"], state["lm"], state["scheduler"], device, clip_dim)
            state["aligner"] = make_aligner(trainer.clip_dim, trainer.lm_dim).to(device)
            if args.quick:
                trainer.train_shape = (LATENT_SHAPE[0], LATENT_SHAPE[1] // 4, LATENT_SHAPE[2])
            data["meta"]["train_latent_shape"] = ["B", *trainer.train_shape]
            if "parameters" in data:
                data["parameters"]["aligner"] = count(state["aligner"])
    report.section("build training", build_training)

    def training() -> None:
        trainer, aligner = state["trainer"], state["aligner"]
        results = []
        with report.stage("training steps (B 1, 2; checkpointing off, on)", device):
            for checkpointing in (False, True):
                for size in (1, 2):
                    result = trainer.measure_step(aligner, size, checkpointing)
                    print(f"  train B={size} ckpt={checkpointing}: {result['step_seconds']} s, "
                          f"{gib(result['activation_bytes_per_sample'])} GiB/sample", flush=True)
                    results.append(result)
                    data["training"] = {"steps": results}
                    report.write()
        fixed = weight_bytes(trainer.unet, trainer.language_model, aligner) + 3 * weight_bytes(aligner)
        data["training"] = {
            "steps": results, "aligner": f"Linear({trainer.clip_dim} -> 1536) - Tanh - Linear(1536 -> "
                                          f"{K_TOKENS} x {trainer.lm_dim})",
            "loa_tokens": trainer.max_new_tokens, "t5_stream": [1, 1, trainer.t5_dim],
            "frozen_weight_bytes": weight_bytes(trainer.unet, trainer.language_model),
            "fixed_training_bytes": fixed,
            "note": "UNet and GPT-2 frozen and in eval mode; encoder_attention_mask_1=None (diffusers shifts "
                    "checkpointed arguments when it is given; the empty prompt's mask is all ones)"}
    report.section("training", training)

    def optimizer() -> None:
        with report.stage("optimizer step (AdamW, accumulation 2)", device):
            data["optimizer_step"] = state["trainer"].optimizer_step(state["aligner"])
    report.section("optimizer step", optimizer)

    # 4. batch fit
    def fit() -> None:
        trainer, aligner = state["trainer"], state["aligner"]
        if device.type == "cuda":
            with report.stage("batch fit (measured, capped allocator)", device):
                fits = measure_fit(trainer, aligner, CAPACITIES_GIB, args.quick)
            method = "measured: torch.cuda.set_per_process_memory_fraction + bisection"
        else:
            fits = derive_fit(data["training"]["steps"], data["training"]["fixed_training_bytes"], CAPACITIES_GIB)
            method = (f"derived from micro-batches 1 and 2 on CPU: weights + AdamW state + activations a(B) = c + s*B "
                      f"(saved-tensor bytes), {CUDA_RESERVE_GIB} GiB kept for the CUDA context and allocator slack; "
                      "transient buffers are not in the saved bytes, so treat as an upper bound")
        data["batch_fit"] = {"method": method, "derived": device.type != "cuda", "fits": fits,
                             "plan": batch_plan(fits, CAPACITIES_GIB)}
    report.section("batch fit", fit)

    # 3. generation
    def generation() -> None:
        with report.stage("build VAE + HiFi-GAN", device):
            state["vae"] = build_part("vae", args.size, SEED, device)
            state["vocoder"] = build_part("vocoder", args.size, SEED, device)
        with report.stage(f"generation ({steps} DPM-Solver++ steps, guidance)", device):
            data["generation"] = generate(state["trainer"], state["aligner"], state["vae"], state["vocoder"], steps)
    report.section("generation", generation)

    state.clear()
    free_memory(device)

    # 5. ImageBind
    def imagebind() -> None:
        try:
            checkpoints.import_imagebind()
        except ImportError as error:
            data["imagebind"] = {"missing": f"imagebind is not installed ({error}); skipped"}
            return
        with report.stage("build ImageBind", device) as record:
            model = build_imagebind(args.size, SEED, device)
            record["parameters"] = count(model)
        with report.stage("ImageBind: embed 2 images (vision)", device):
            image_size = 224
            start = time.perf_counter()
            with torch.no_grad():
                embeddings = model({"vision": images(image_size, device)})["vision"]
            sync(device)
            seconds = time.perf_counter() - start
        build, embed = data["stages"][-2], data["stages"][-1]
        data["imagebind"] = {"parameters": count(model), "vision_parameters": imagebind_vision_parameters(model),
                             "build_seconds": build["seconds"], "build_peak_bytes": build["peak_bytes"],
                             "embed_2_images_seconds": round(seconds, 3), "embed_peak_bytes": embed["peak_bytes"],
                             "embedding_shape": list(embeddings.shape),
                             "unit_norm": bool(torch.allclose(embeddings.norm(dim=-1),
                                                              torch.ones(len(embeddings), device=device), atol=1e-3))}
        del model, embeddings
        free_memory(device)
    report.section("imagebind", imagebind)

    # 6. CLIP
    def clip() -> None:
        with report.stage("build CLIP ViT-L/14 vision", device):
            model = build_clip_vision(args.size, SEED, device)
        image_size = int(model.config.image_size)
        with report.stage("CLIP: embed 2 images", device):
            start = time.perf_counter()
            with torch.no_grad():
                embeddings = model(pixel_values=images(image_size, device)).image_embeds
            sync(device)
            seconds = time.perf_counter() - start
        data["clip_vision"] = {"parameters": count(model), "build_seconds": data["stages"][-2]["seconds"],
                               "embed_2_images_seconds": round(seconds, 3), "image_size": image_size,
                               "embedding_shape": list(embeddings.shape)}
        del model, embeddings
        free_memory(device)
    report.section("clip", clip)

    data["meta"]["finished"] = True
    report.write()
    print(f"wrote {args.out / 'rehearsal.json'} and {args.out / 'rehearsal.md'}"
          + (f" ({len(data['errors'])} section(s) failed)" if data["errors"] else ""), flush=True)
    return data


# ---- Markdown ----------------------------------------------------------------------------------------
def millions(value: int | None) -> str:
    return "-" if value is None else f"{value / 1e6:,.1f} M"


def render_markdown(data: dict[str, Any]) -> str:
    meta = data["meta"]
    lines = [f"# Rehearsal, model part ({meta['size']} size, {meta['device']})", "",
             f"Random seeded weights built in memory from the repo's configs; float32; torch {meta['torch']}, "
             f"transformers {meta['transformers']}, diffusers {meta['diffusers']}; {meta['cpu_threads']} CPU threads"
             + (f"; GPU {meta['gpu']}" if meta.get("gpu") else "") + f". Written {meta.get('written_at', '')}"
             + ("" if meta.get("finished") else " (run not finished: partial)") + ".", ""]
    if "parameters" in data:
        lines += ["## Parameters", "", "| part | parameters |", "|---|---|"]
        lines += [f"| {name} | {millions(value)} ({value:,}) |" if value is not None else f"| {name} | - |"
                  for name, value in data["parameters"].items()]
        summary = data.get("parameters_summary", {})
        if summary:
            lines += ["", f"AudioLDM2 in all {millions(summary['audioldm2_all'])}; UNet + GPT-2 + VAE + HiFi-GAN "
                          f"{millions(summary['backbone_kept'])} = {gib(summary['backbone_kept_fp32_bytes'])} GiB fp32."]
        if data.get("imagebind_missing"):
            lines += ["", f"ImageBind: {data['imagebind_missing']}."]
        lines.append("")
    if data.get("stages"):
        lines += ["## Stages", "", f"Memory: {meta['memory_method']}.", "",
                  "| stage | seconds | peak GiB | held after GiB |", "|---|---|---|---|"]
        lines += [f"| {s['stage']} | {s['seconds']:.1f} | {gib(s.get('peak_bytes'))} | {gib(s.get('now_bytes'))} |"
                  for s in data["stages"]]
        lines.append("")
    training = data.get("training")
    if training:
        shape = meta.get("train_latent_shape", ["B", *LATENT_SHAPE])
        lines += [f"## Aligner training step (latents [{', '.join(map(str, shape))}]"
                  f"{', 10.24 s' if shape[2] == LATENT_SHAPE[1] else ', a shorter --quick crop'})", ""]
        if "aligner" in training:
            lines += [f"Aligner {training['aligner']} -> GPT-2 ({training['loa_tokens']} LOA vectors) -> UNet "
                      f"(T5 stream {training['t5_stream']}) -> eps-MSE; backward into the aligner only. "
                      f"{training['note']}.", ""]
        lines += ["| micro-batch | checkpointing | step s (fwd+bwd) | s / sample | activations GiB | GiB / sample |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {s['micro_batch']} | {'on' if s['gradient_checkpointing'] else 'off'} | {s['step_seconds']:.1f} | "
                  f"{s['step_seconds'] / s['micro_batch']:.1f} | {gib(s['activation_bytes'])} | "
                  f"{gib(s['activation_bytes_per_sample'])} |" for s in training["steps"]]
        if training["steps"]:
            lines += ["", f"Activations: {training['steps'][0]['activation_method']}."]
        lines.append("")
    step = data.get("optimizer_step")
    if step:
        lines += [f"Optimizer step: AdamW lr {step['lr']}, clip {step['clip']}, micro-batch {step['micro_batch']} x "
                  f"accumulation {step['accumulation']}: {step['seconds']:.1f} s, losses "
                  f"{', '.join(f'{v:.4f}' for v in step['losses'])}, grad norm {step['grad_norm_before_clip']:.3g} "
                  f"before clipping, largest parameter change {step['max_parameter_change']:.3g}.", ""]
    generation = data.get("generation")
    if generation:
        extrapolated = generation["real_time_factor_extrapolated"]
        lines += ["## Generation (one 10.24 s clip)", "",
                  "| what | figure |", "|---|---|",
                  f"| sampler | {generation['scheduler']}, guidance {generation['guidance_scale']}, UNet batch 2 |",
                  f"| steps measured | {generation['steps_measured']} |",
                  f"| seconds per UNet step | {generation['seconds_per_unet_step']:.2f} "
                  f"({', '.join(f'{v:.2f}' for v in generation['unet_step_seconds'])}) |",
                  f"| GPT-2 (LOA) seconds | {generation['gpt2_seconds']:.2f} |",
                  f"| VAE decode seconds | {generation['vae_decode_seconds']:.2f} |",
                  f"| HiFi-GAN seconds | {generation['vocoder_seconds']:.2f} |",
                  f"| real-time factor, measured ({generation['steps_measured']} steps) | "
                  f"{generation['real_time_factor_measured']:.2f} |",
                  f"| real-time factor, 25 DPM-Solver++ steps (extrapolated) | {extrapolated['dpmsolver_25_steps']:.2f} "
                  f"({generation['seconds_per_clip_extrapolated']['dpmsolver_25_steps']:.0f} s per clip) |",
                  f"| real-time factor, 200 DDIM steps (extrapolated) | {extrapolated['ddim_200_steps']:.2f} "
                  f"({generation['seconds_per_clip_extrapolated']['ddim_200_steps']:.0f} s per clip) |",
                  f"| samples generated | {generation['generated_samples']:,} for {generation['expected_samples']:,} "
                  f"(HiFi-GAN's extra {generation['extra_samples']}; art2mus trims to "
                  f"{generation['trimmed_samples']:,}) |", "",
                  f"Extrapolated figures: {extrapolated['note']}.", ""]
    fit = data.get("batch_fit")
    if fit:
        lines += ["## Largest training micro-batch" + (" (derived)" if fit["derived"] else " (measured)"), "",
                  f"Method: {fit['method']}.", "",
                  "| capacity | without checkpointing | with checkpointing | plan for effective batch 16 |",
                  "|---|---|---|---|"]
        for capacity in CAPACITIES_GIB:
            key = str(capacity)
            off = fit["fits"].get("without_checkpointing", {}).get("max_micro_batch", {}).get(key, "-")
            on = fit["fits"].get("with_checkpointing", {}).get("max_micro_batch", {}).get(key, "-")
            chosen = fit["plan"].get(key, {}).get("chosen")
            plan = ("-" if not chosen else f"{chosen['micro_batch']} x {chosen['accumulation']}"
                    f"{' with checkpointing' if chosen['gradient_checkpointing'] else ''}")
            lines.append(f"| {capacity} GiB | {off} | {on} | {plan} |")
        lines.append("")
    imagebind = data.get("imagebind")
    if imagebind:
        lines += ["## ImageBind-huge (vision branch; AudioLDM2 parts freed first)", ""]
        if "missing" in imagebind:
            lines += [imagebind["missing"], ""]
        else:
            lines += [f"{millions(imagebind['parameters'])} parameters (vision {millions(imagebind['vision_parameters'])}); "
                      f"build {imagebind['build_seconds']:.1f} s, peak {gib(imagebind['build_peak_bytes'])} GiB; "
                      f"2 images {imagebind['embed_2_images_seconds']:.2f} s, peak {gib(imagebind['embed_peak_bytes'])} "
                      f"GiB; embeddings {imagebind['embedding_shape']}, unit norm {imagebind['unit_norm']}.", ""]
    clip = data.get("clip_vision")
    if clip:
        lines += ["## CLIP ViT-L/14 vision", "",
                  f"{millions(clip['parameters'])} parameters; build {clip['build_seconds']:.1f} s; 2 images "
                  f"({clip['image_size']}x{clip['image_size']}) {clip['embed_2_images_seconds']:.2f} s; "
                  f"embeddings {clip['embedding_shape']}.", ""]
    if data.get("errors"):
        lines += ["## What failed", ""]
        lines += [f"- {error['section']}: {error['error']}" for error in data["errors"]]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    result = main()
    sys.exit(1 if result["errors"] else 0)

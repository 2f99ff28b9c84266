"""The model part's aligner training step through the frozen stack, and the largest micro-batch that fits."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from art2mus.rehearsal.model_part_measures import (
    CUDA_RESERVE_GIB,
    EFFECTIVE_BATCH,
    GIB,
    K_TOKENS,
    LATENT_SHAPE,
    SEED,
    free_memory,
    sync,
)

if TYPE_CHECKING:
    from diffusers.pipelines.audioldm2.modeling_audioldm2 import AudioLDM2UNet2DConditionModel
    from transformers import GPT2LMHeadModel


# ---- the aligner training step -------------------------------------------------------------------
class LanguageModelHolder:
    """The one attribute AudioLDM2Pipeline.generate_language_model reads from its pipeline."""

    def __init__(self, language_model: GPT2LMHeadModel) -> None:
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


def counting_checkpoint(module: torch.nn.Module, *args: Any) -> Any:
    """diffusers' default checkpoint function (non-reentrant), counting the inputs it keeps alive."""
    for counter in ACTIVE_COUNTER:
        for argument in args:
            if isinstance(argument, torch.Tensor):
                counter.add(argument)
    return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False)


class Trainer:
    """The frozen stack and a trainable aligner, as art2mus trains it."""

    def __init__(self, unet: AudioLDM2UNet2DConditionModel, language_model: GPT2LMHeadModel, scheduler: Any,
                 device: torch.device, clip_dim: int = 768) -> None:
        self.unet, self.language_model, self.scheduler, self.device = unet, language_model, scheduler, device
        self.lm_dim = int(language_model.config.n_embd)
        self.clip_dim = clip_dim
        cross = unet.config["cross_attention_dim"]
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
        return AudioLDM2Pipeline.generate_language_model(
            LanguageModelHolder(self.language_model),  # type: ignore[arg-type]  # duck-typed: reads only this
            inputs_embeds, max_new_tokens=self.max_new_tokens, attention_mask=mask)

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
        loss: torch.Tensor | None = None
        try:
            loss = self.loss(aligner, size, seed=SEED)
            loss.backward()
            sync(self.device)
            return True
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            loss = None  # drop the graph before freeing memory
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

"""Train the Image Aligner through the frozen prior: ε-MSE (or the scheduler's target) on cached
image embeddings and cached latents; nothing is re-encoded.

Every random draw of step `s` (batch, posterior sample, noise, timesteps) comes from a generator seeded by
(seed, s), so a run resumed from a checkpoint reaches exactly the weights of an uninterrupted one.
Data parallel through accelerate: each process takes its slice of the step's global batch.
Memory: micro-batches of `params.micro_batch` with gradient accumulation (the same loss and gradient
as the whole batch), optional gradient checkpointing of the frozen UNet, and on CUDA mixed precision
(bf16 where the GPU has it natively, else fp16 with a gradient scaler); the CPU trains in float32.
"""

from __future__ import annotations

import logging
import math
import random
import shutil
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from art2mus.config import TrainParams
from art2mus.io import atomic_path
from art2mus.models.aligner import ImageAligner
from art2mus.models.backbone import Backbone
from art2mus.training.diffusion import diffusion_target, min_snr_weights, per_sample_mse, sample_noise_and_timesteps

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "training_state.pt"
STATE_KEYS = ("step", "optimizer", "schedule", "losses")  # what a resume reads from STATE_FILE
CORRUPT_PREFIX = "corrupt-"  # an unreadable checkpoint, set aside: `corrupt-step-NNNNNNN`


Pair = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (image embedding, latent mean, latent std)


@dataclass
class AlignerData(torch.utils.data.Dataset[Pair]):
    """Training pairs: frozen image embeddings and the latent posteriors of their tracks' crops.

    A step trains on `latents + latent_std * noise` (the noise from the step's generator): a sample of
    the codec's posterior, as AudioLDM2 trained. No std (or zeros) trains on the means as they are.
    """

    image_embeds: torch.Tensor  # [N, D]
    latents: torch.Tensor  # [N, C, H, W]: posterior means
    latent_std: torch.Tensor | None = None  # [N, C, H, W]

    def __post_init__(self) -> None:
        if len(self.image_embeds) != len(self.latents):
            raise ValueError("image embeddings and latents must pair up one to one")
        if self.latent_std is not None and self.latent_std.shape != self.latents.shape:
            raise ValueError("latent stds must have the latents' shape")

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, i: int) -> Pair:
        std = self.latent_std[i] if self.latent_std is not None else torch.zeros_like(self.latents[i])
        return self.image_embeds[i], self.latents[i], std


class StreamedPairs(torch.utils.data.Dataset[Pair]):
    """Training pairs read lazily: image embeddings in memory (small), latent posteriors from
    memory-mapped shards (`art2mus.data.latents.LatentPosteriors`), one (embedding, mean, std) per item."""

    def __init__(self, image_embeds: torch.Tensor, posteriors) -> None:
        if len(image_embeds) != len(posteriors):
            raise ValueError("image embeddings and latents must pair up one to one")
        self.image_embeds, self.posteriors = image_embeds, posteriors

    def __len__(self) -> int:
        return len(self.posteriors)

    def __getitem__(self, i: int) -> Pair:
        mean, std = self.posteriors[i]
        return self.image_embeds[i], mean.float(), std.float()


def step_positions(params: TrainParams, rank: int, world: int) -> torch.Tensor:
    """Positions in a step's batch that process `rank` trains on, micro-batch after micro-batch."""
    micro = params.micro_batch
    return torch.cat([torch.arange(part * micro, (part + 1) * micro)[rank::world] for part in range(params.grad_accum)])


class StepBatches(torch.utils.data.Sampler):
    """The indices each step trains on, drawn from the step's own generator (as the loop redraws
    them), so batches do not depend on a sampler's RNG and a resumed run reads the same ones."""

    def __init__(self, n: int, params: TrainParams, first_step: int, rank: int = 0, world: int = 1) -> None:
        self.n, self.params, self.first_step = n, params, first_step
        self.positions = step_positions(params, rank, world)

    def __len__(self) -> int:
        return max(0, self.params.steps - self.first_step)

    def __iter__(self):
        for step in range(self.first_step, self.params.steps):
            indices = step_indices(self.n, self.params, step_generator(self.params.seed, step))
            yield indices[self.positions].tolist()


def step_indices(n: int, params: TrainParams, generator: torch.Generator) -> torch.Tensor:
    """The first draw of a step's generator: its batch, `batch_size` indices into the pairs."""
    return torch.randint(n, (params.batch_size,), generator=generator)


def loader_workers(cuda: bool) -> int:
    """DataLoader workers: reading shards overlaps the GPU's step; none on the CPU (the step is the cost)."""
    return 2 if cuda else 0


@dataclass
class TrainResult:
    aligner: ImageAligner
    losses: list[tuple[int, float]]
    seconds: float
    resumed_from: int  # 0 when started fresh
    world_size: int  # data-parallel processes that trained it
    precision: str = "no"  # mixed precision: no (float32) | bf16 | fp16 (with a gradient scaler)


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator for one optimisation step: independent of how many steps ran before."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def mixed_precision(cuda: bool) -> str:
    """bf16 autocast on a GPU with native bf16 (emulated bf16 is slow), fp16 + GradScaler on older
    GPUs, none on the CPU."""
    if not cuda:
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"


def lr_multiplier(step: int, params: TrainParams) -> float:
    if step < params.warmup_steps:
        return (step + 1) / params.warmup_steps
    if params.schedule == "constant":
        return 1.0
    progress = (step - params.warmup_steps) / max(1, params.steps - params.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def new_aligner(image_dim: int, lm_width: int, params: TrainParams) -> ImageAligner:
    """A freshly initialised aligner, deterministic in params.seed."""
    torch.manual_seed(params.seed)
    return ImageAligner(image_dim=image_dim, lm_width=lm_width, tokens=params.tokens,
                        hidden_dim=params.hidden_dim, depth=params.depth)


def aligner_loss(
    aligner: torch.nn.Module, backbone: Backbone, image_embeds: torch.Tensor, latents: torch.Tensor,
    generator: torch.Generator, min_snr_gamma: float | None,
) -> torch.Tensor:
    """The diffusion loss of one (micro-)batch through the frozen GPT-2 and UNet."""
    noise, timesteps = sample_noise_and_timesteps(latents, backbone.scheduler, generator)
    noisy = backbone.scheduler.add_noise(latents, noise, timesteps)
    loa = backbone.language_of_audio(aligner(image_embeds))
    prediction = backbone.predict(noisy, timesteps, loa)
    losses = per_sample_mse(prediction, diffusion_target(backbone.scheduler, latents, noise, timesteps))
    if min_snr_gamma is not None:
        losses = losses * min_snr_weights(backbone.scheduler, timesteps, min_snr_gamma)
    return losses.mean()


def checkpoints(out_dir: Path) -> list[Path]:
    """The checkpoints (`step-NNNNNNN`), oldest first: not those set aside (`corrupt-step-*`) nor a killed
    save's temporaries (`.step-*`)."""
    directory = out_dir / CHECKPOINTS_DIR
    return sorted(directory.glob("step-*")) if directory.is_dir() else []


def latest_checkpoint(out_dir: Path) -> Path | None:
    found = checkpoints(out_dir)
    return found[-1] if found else None


class UnreadableCheckpoint(Exception):
    """A checkpoint that cannot be resumed from; the message names its file and what is wrong."""


def _cause(error: BaseException) -> str:
    """The innermost error of a chain, as `Type: first line` (the library's wrappers say less)."""
    seen = {id(error)}
    while (inner := error.__cause__ or error.__context__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        error = inner
    message = str(error).strip().splitlines()
    return f"{type(error).__name__}: {message[0][:200]}" if message else type(error).__name__


def read_checkpoint_state(checkpoint: Path) -> dict:
    """The training state of `checkpoint`, after checking that it and the aligner's weights load; raises
    UnreadableCheckpoint naming the file that does not (a truncated save, a disk that filled up)."""
    from safetensors.torch import load_file

    state_file = checkpoint / STATE_FILE
    if not state_file.is_file():
        raise UnreadableCheckpoint(f"{STATE_FILE}: missing")
    try:
        state = torch.load(state_file, weights_only=True)
    except Exception as error:
        if not zipfile.is_zipfile(state_file):  # torch.save writes a zip archive, its end record last
            raise UnreadableCheckpoint(f"{STATE_FILE}: truncated or not a torch archive "
                                       f"({state_file.stat().st_size:,} bytes, no zip end record)") from error
        raise UnreadableCheckpoint(f"{STATE_FILE}: cannot be loaded ({_cause(error)})") from error
    missing = [key for key in STATE_KEYS if key not in state] if isinstance(state, dict) else list(STATE_KEYS)
    if missing:
        raise UnreadableCheckpoint(f"{STATE_FILE}: lacks {', '.join(missing)}")
    weights = sorted((checkpoint / "aligner").glob("*.safetensors"))
    if not weights:
        raise UnreadableCheckpoint("aligner: no weights (*.safetensors)")
    for path in weights:
        try:
            load_file(path)
        except Exception as error:
            raise UnreadableCheckpoint(f"aligner/{path.name}: cannot be loaded ({_cause(error)})") from error
    try:
        ImageAligner.from_pretrained(checkpoint / "aligner")
    except Exception as error:
        raise UnreadableCheckpoint(f"aligner: cannot be loaded ({_cause(error)})") from error
    return state


def set_aside(checkpoint: Path) -> Path:
    """Rename an unreadable checkpoint to `corrupt-<name>` (`-1`, `-2`, ... when taken), kept for inspection:
    no longer resumed, pruned or counted among the checkpoints kept."""
    aside = checkpoint.with_name(f"{CORRUPT_PREFIX}{checkpoint.name}")
    n = 0
    while aside.exists():
        n += 1
        aside = checkpoint.with_name(f"{CORRUPT_PREFIX}{checkpoint.name}-{n}")
    checkpoint.rename(aside)
    return aside


def resumable_checkpoint(out_dir: Path, fingerprint: str) -> Path | None:
    """The newest readable checkpoint when it was written by this configuration (its `fingerprint`), else None.

    One that cannot be read is set aside (`set_aside`, logged) and the one before it tried. Renames folders:
    under torchrun only rank 0 calls this, and the others take its choice.
    """
    set_aside_any = False
    for checkpoint in reversed(checkpoints(out_dir)):
        try:
            state = read_checkpoint_state(checkpoint)
        except UnreadableCheckpoint as reason:
            aside = set_aside(checkpoint)
            set_aside_any = True
            logger.warning("train: checkpoint %s cannot be read: %s; set aside as %s (delete it when you no longer "
                           "need it)", checkpoint, reason, aside)
            continue
        if state.get("fingerprint") != fingerprint:
            logger.info("train: checkpoints in %s are from another configuration; starting fresh", out_dir)
            return None
        return checkpoint
    if set_aside_any:
        logger.warning("train: no readable checkpoint left in %s; starting fresh", out_dir / CHECKPOINTS_DIR)
    return None


def remove_interrupted_checkpoints(out_dir: Path) -> None:
    """Delete what a killed checkpoint save left: atomic_path's `.step-*.tmp` / `.old` folders."""
    directory = out_dir / CHECKPOINTS_DIR
    for leftover in directory.glob(".step-*") if directory.is_dir() else []:
        shutil.rmtree(leftover, ignore_errors=True)


def remove_checkpoints(out_dir: Path) -> None:
    """Delete the checkpoints before a fresh start; those set aside as corrupt stay."""
    for checkpoint in checkpoints(out_dir):
        shutil.rmtree(checkpoint, ignore_errors=True)


def save_checkpoint(
    out_dir: Path, step: int, aligner: ImageAligner, optimizer, schedule, losses, params: TrainParams, fingerprint: str,
    world_size: int = 1,
) -> None:
    """Aligner (safetensors), optimizer, LR schedule, step, RNG states and config; old ones pruned."""
    path = out_dir / CHECKPOINTS_DIR / f"step-{step:07d}"
    with atomic_path(path) as tmp:
        aligner.save_pretrained(tmp / "aligner")
        torch.save({
            "step": step,
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "losses": losses,
            "torch_rng": torch.get_rng_state(),
            # numpy's stub types get_state() as the dict of legacy=False; the default gives the legacy tuple.
            "numpy_rng": np.random.get_state()[1].tolist(),  # type: ignore[index]
            "python_rng": random.getstate()[1],
            "config": params.model_dump(mode="json"),
            "fingerprint": fingerprint,
            "world_size": world_size,
        }, tmp / STATE_FILE)
    for old in checkpoints(out_dir)[: -params.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)


def train_aligner(
    data: AlignerData | StreamedPairs,
    backbone: Backbone,
    params: TrainParams,
    out_dir: Path,
    resume: bool = False,
    log_loss: Callable[[int, float], None] | None = None,
    quiet: bool = False,
    fingerprint: str = "",
) -> TrainResult:
    """Train (or resume) the aligner; only rank 0 writes checkpoints. Returns the unwrapped aligner.

    The newest readable checkpoint is resumed when its `fingerprint` (params, data, prior) equals this run's;
    unreadable ones are set aside as `corrupt-step-*` (kept, logged), checkpoints of another configuration
    are discarded. Under torchrun every process calls this and
    gets the same weights; the caller decides what rank 0 alone does with them.
    """
    from accelerate import Accelerator
    from accelerate.utils import broadcast_object_list

    torch.set_num_threads(params.threads)
    cuda = torch.cuda.is_available()
    precision = mixed_precision(cuda)
    # fp16: accelerate scales the loss in backward, unscales in clip_grad_norm_ and steps through its
    # GradScaler (a step with inf/nan gradients is skipped).
    accelerator = Accelerator(cpu=not cuda, mixed_precision=precision)
    if accelerator.is_main_process:
        logger.info("train: %s, mixed precision %s, micro-batch %d x %d accumulation, gradient checkpointing %s",
                    accelerator.device, precision, params.micro_batch, params.grad_accum,
                    "on" if params.gradient_checkpointing else "off")
    started = time.perf_counter()
    backbone.eval().to(accelerator.device)
    backbone.set_gradient_checkpointing(params.gradient_checkpointing)
    aligner = new_aligner(int(data[0][0].shape[-1]), backbone.lm_width, params)
    optimizer = torch.optim.AdamW(aligner.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(s, params))
    losses: list[tuple[int, float]] = []
    first_step = 0
    # Rank 0 chooses (setting unreadable checkpoints aside) and every rank resumes from its choice: ranks
    # reading the folder for themselves could disagree when a checkpoint appears, is pruned or is set aside
    # between their reads.
    choice = [str(resumable_checkpoint(out_dir, fingerprint) or "") if resume and accelerator.is_main_process
              else ""]
    if accelerator.num_processes > 1:
        broadcast_object_list(choice, from_process=0)
    checkpoint = Path(choice[0]) if choice[0] else None
    state = None
    if checkpoint is not None:
        state = torch.load(checkpoint / STATE_FILE, weights_only=True)
        aligner.load_state_dict(ImageAligner.from_pretrained(checkpoint / "aligner").state_dict())
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        losses = [tuple(item) for item in state["losses"]]
        first_step = int(state["step"])
        logger.info("train: resuming from %s (step %d)", checkpoint, first_step)
        if state.get("world_size", 1) != accelerator.num_processes:
            logger.warning("train: %s was written by %d process(es), resuming with %d: the weights will not "
                           "match an uninterrupted run bit for bit", checkpoint, state.get("world_size", 1),
                           accelerator.num_processes)
    # Every process has read the checkpoint before rank 0 may delete or prune it.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        remove_interrupted_checkpoints(out_dir)
        if state is None:
            remove_checkpoints(out_dir)
    aligner, optimizer = accelerator.prepare(aligner, optimizer)
    rank, world = accelerator.process_index, accelerator.num_processes
    micro = params.micro_batch
    if micro % world:
        raise ValueError(f"batch_size/grad_accum ({micro}) must divide by the number of processes ({world})")
    positions = step_positions(params, rank, world)  # this process's part of every step's batch
    local = micro // world
    batches = torch.utils.data.DataLoader(
        data, batch_sampler=StepBatches(len(data), params, first_step, rank, world),
        num_workers=loader_workers(cuda), pin_memory=cuda)

    bar = tqdm(zip(range(first_step, params.steps), batches), total=params.steps - first_step, desc="train",
               unit="step", disable=quiet or rank != 0, leave=False)
    for step, (embeds, means, stds) in bar:
        generator = step_generator(params.seed, step)
        step_indices(len(data), params, generator)  # the batch StepBatches read; advances the generator
        # One posterior sample per batch item: noise for the whole step's batch on every process (so each
        # process's slice is the same sample whatever the world size).
        noise = torch.randn((params.batch_size, *means.shape[1:]), generator=generator, dtype=means.dtype)
        embeds = embeds.to(accelerator.device, non_blocking=True)
        batch_latents = means.to(accelerator.device, non_blocking=True) + stds.to(
            accelerator.device, non_blocking=True) * noise[positions].to(accelerator.device)
        step_loss = 0.0
        for part in range(params.grad_accum):
            chunk = slice(part * local, (part + 1) * local)
            # Every process draws the full step's noise stream, then uses its own slice of it.
            part_generator = step_generator(params.seed, step * 1000 + part + 1)
            with accelerator.autocast():
                loss = aligner_loss(aligner, backbone, embeds[chunk], batch_latents[chunk],
                                    _sliced(part_generator, micro, rank, world), params.min_snr_gamma)
            if part < params.grad_accum - 1:
                with accelerator.no_sync(aligner):
                    accelerator.backward(loss / params.grad_accum)
            else:
                accelerator.backward(loss / params.grad_accum)
            step_loss += loss.detach().item() / params.grad_accum
        accelerator.clip_grad_norm_(aligner.parameters(), params.grad_clip)
        optimizer.step()
        if not accelerator.optimizer_step_was_skipped:  # fp16: the scaler skipped a step with inf gradients
            schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append((step, step_loss))
        if log_loss is not None and rank == 0:
            log_loss(step, step_loss)
        bar.set_postfix(loss=f"{step_loss:.4f}")
        done = step + 1
        if rank == 0 and (done % params.checkpoint_every == 0 or done == params.steps):
            save_checkpoint(out_dir, done, accelerator.unwrap_model(aligner), optimizer, schedule, losses, params,
                            fingerprint, world)
        accelerator.wait_for_everyone()
    seconds = time.perf_counter() - started
    return TrainResult(aligner=accelerator.unwrap_model(aligner).eval(), losses=losses, seconds=seconds,
                       resumed_from=first_step, world_size=world, precision=precision)


def _sliced(generator: torch.Generator, micro: int, rank: int, world: int) -> torch.Generator:
    """A generator positioned for this rank's slice (one world-size process just uses it as is)."""
    if world == 1:
        return generator
    # Advance past the draws of lower ranks so ranks never share noise.
    seed = int(torch.randint(2**62, (1,), generator=generator)) + rank
    return torch.Generator().manual_seed(seed)

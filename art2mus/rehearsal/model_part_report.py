"""The model part's report: JSON and Markdown rewritten atomically after every section."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from art2mus.rehearsal.model_part_measures import (
    CAPACITIES_GIB,
    LATENT_SHAPE,
    free_memory,
    gib,
    peak_bytes,
    reset_peak,
    sync,
)


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

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

Imports only the standard library, torch, transformers, diffusers, safetensors, numpy,
`art2mus.rehearsal.checkpoints` and its own `art2mus.rehearsal.model_part_*` modules (measures, training,
generation, report), so it runs on a bare GPU machine.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import CLIPVisionConfig

from art2mus.rehearsal import checkpoints
from art2mus.rehearsal.checkpoints import (
    build_clip_vision,
    build_imagebind,
    build_part,
    empty_parameter_counts,
    with_lm_head,
)
from art2mus.rehearsal.model_part_generation import generate, imagebind_vision_parameters, images
from art2mus.rehearsal.model_part_measures import (
    CAPACITIES_GIB,
    CUDA_RESERVE_GIB,
    K_TOKENS,
    LATENT_SHAPE,
    SECONDS,
    SEED,
    count,
    free_memory,
    gib,
    sync,
    weight_bytes,
)
from art2mus.rehearsal.model_part_report import Report
from art2mus.rehearsal.model_part_training import Trainer, batch_plan, derive_fit, make_aligner, measure_fit


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
        image_size = model.config.image_size
        if not isinstance(image_size, int):
            raise ValueError(f"CLIP's image_size must be one int, got {image_size!r}")
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


if __name__ == "__main__":
    result = main()
    sys.exit(1 if result["errors"] else 0)

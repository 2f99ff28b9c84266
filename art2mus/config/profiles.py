"""What depends on the backbone profile (`auto` values) and on the machine (`threads: auto`)."""

from __future__ import annotations

import os
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, Field

AUTO = "auto"  # a params.yaml value that `resolve_profile` replaces with the backbone profile's own
PINNED_REVISION = "0019cb0bd4d314accff72aee1c3abd6f22929ba5"  # cvssp/audioldm2-music's snapshot (moves: pin it)

# Keys whose value depends on `backbone.profile`: `auto` (or absent) in params.yaml takes these; an explicit
# value wins. The tiny values are also the sections' standalone defaults (sections built in code).
PROFILE_DEFAULTS: dict[str, dict[str, object]] = {
    "tiny": {
        "audio.crop_seconds": 2.56, "audio.crop_offset_seconds": 0.5,
        "sample.track_seconds": 4.0,
        "backbone.revision": "main", "backbone.null_conditioning": "zeros",
        "latents.batch_size": 32,
        "train.tokens": 4, "train.hidden_dim": 256, "train.steps": 1200, "train.batch_size": 64,
        "train.grad_accum": 1, "train.lr": 2e-3, "train.warmup_steps": 15, "train.gradient_checkpointing": False,
        "evaluate.batch_size": 16,
    },
    # The paper's predecessor (Art2Mus 2024) on AudioLDM2-music: 10.24 s crops 10 s into the track, aligner
    # Linear(d -> 1536) - Tanh - Linear(1536 -> 4 x 768), AdamW 2e-5, batch 2 x 8, warm-up 500, 20k steps.
    "audioldm2": {
        "audio.crop_seconds": 10.24, "audio.crop_offset_seconds": 10.0,
        "sample.track_seconds": 21.0,
        "backbone.revision": PINNED_REVISION, "backbone.null_conditioning": "zeros",
        "latents.batch_size": 4,
        "train.tokens": 4, "train.hidden_dim": 1536, "train.steps": 20000, "train.batch_size": 16,
        "train.grad_accum": 8, "train.lr": 2e-5, "train.warmup_steps": 500, "train.gradient_checkpointing": True,
        "evaluate.batch_size": 4,
    },
}
REAL_CROP_SECONDS = 10.24  # what cvssp/audioldm2-music was trained on: 1,024 mel frames


def available_threads() -> int:
    """Torch threads for `threads: auto`: OMP_NUM_THREADS where it is set (a job scheduler's or a test
    worker's share), else the CPUs this process may run on."""
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def resolve_threads(value: object) -> object:
    return available_threads() if value == AUTO else value


# CPU threads of a stage's torch work: a number, or auto (available_threads).
Threads = Annotated[int, BeforeValidator(resolve_threads), Field(ge=1)]


def resolve_profile(raw: dict) -> dict:
    """A copy of raw params with every `auto` (or absent) profile-dependent key set to the profile's value."""
    backbone = raw.get("backbone")
    if isinstance(backbone, BaseModel):
        # BackboneParams, built in code (not imported: config.model imports this module)
        profile = getattr(backbone, "profile", "tiny")
    else:
        profile = (backbone or {}).get("profile", "tiny") if isinstance(backbone, dict) else "tiny"
    defaults = PROFILE_DEFAULTS.get(profile)
    if defaults is None:
        return raw  # an unknown profile: the field's own validation names it
    resolved = dict(raw)
    for dotted, value in defaults.items():
        section, key = dotted.split(".")
        current = resolved.get(section)
        if isinstance(current, BaseModel):
            continue  # a section built in code is taken as it is
        if current is None:
            current = {}
        if not isinstance(current, dict):
            continue  # the section's validation reports it
        if current.get(key, AUTO) == AUTO:
            resolved[section] = {**current, key: value}
    return resolved

"""Run by torchrun from test_ddp.py: the aligner trainer in one of several gloo processes."""

import json
import sys
from pathlib import Path

import torch

from art2mus.config import AudioParams, BackboneParams, TrainParams
from art2mus.models.aligner import state_dict_sha256
from art2mus.models.tiny import build_tiny_backbone
from art2mus.training import aligner
from art2mus.training.aligner import AlignerData, train_aligner

READ = []  # whether this process looked for a checkpoint to resume


def resumable_checkpoint(out_dir: Path, fingerprint: str) -> Path | None:
    READ.append(True)
    return chosen(out_dir, fingerprint)


chosen, aligner.resumable_checkpoint = aligner.resumable_checkpoint, resumable_checkpoint


def main(out: Path) -> None:
    backbone = build_tiny_backbone(BackboneParams(), AudioParams(), seed=0)
    generator = torch.Generator().manual_seed(0)
    embeds = torch.randn(32, 8, generator=generator)
    latents = torch.randn(32, *backbone.latent_shape, generator=generator)
    params = TrainParams(steps=6, batch_size=8, checkpoint_every=3, tokens=2, hidden_dim=16, threads=1)
    result = train_aligner(AlignerData(embeds, latents), backbone, params, out, resume=True, quiet=True)
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else "none"
    record = {"world": world, "rank": rank, "backend": backend, "sha": state_dict_sha256(result.aligner),
              "losses": [loss for _, loss in result.losses], "read_checkpoints": bool(READ)}
    (out / f"rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(Path(sys.argv[1]))

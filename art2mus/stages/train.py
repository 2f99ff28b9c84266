"""Stage `train`: the image aligner through the frozen prior, from cached embeddings and latents.

Writes the final aligner (safetensors + config), a record of the MLflow run id and the weights'
hash (so a flow knows which model it has when DVC skips this stage), and the loss curve.
A killed run resumes from its last checkpoint when params, data and prior are unchanged.

Data parallel by params: `train.processes` above 1 (or auto on a multi-GPU node) relaunches the stage
under torchrun (`art2mus.training.launch`: `python -m torch.distributed.run --standalone --nproc_per_node N
-m stages.train`, which also works typed by hand); every process trains its slice of each batch; only
rank 0 (`process_rank()`, from the launcher's RANK, known before accelerate starts) opens the MLflow run,
picks the checkpoint all ranks resume from, writes checkpoints and writes the outputs. The other ranks
make no MLflow call and write nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import pandas as pd
import torch

from art2mus.config import load_params
from art2mus.data.latents import CACHE_DIR, INDEX_FILE, LatentPosteriors, load_latent_index
from art2mus.data.schema import SPLITS_TABLE
from art2mus.env import project_root
from art2mus.errors import Art2MusError
from art2mus.features import load_embeddings
from art2mus.features.embeddings import EMBEDDING_FILES
from art2mus.io import atomic_path, read_table, write_table_atomic
from art2mus.models.aligner import state_dict_sha256
from art2mus.models.loader import load_backbone
from art2mus.models.pipeline import save_model
from art2mus.stages import OpenRun
from art2mus.tracking.lineage import record_training_lineage
from art2mus.tracking.runs import process_rank
from art2mus.training.aligner import StreamedPairs, train_aligner
from art2mus.training.launch import die_with_launcher, launched_child, relaunch_under_torchrun, requested_processes
from art2mus.workspace import MODEL_DIR, TRAIN_RECORD, TrainRecord

LOSS_PLOT = Path("models/plots/train_loss.csv")
# The launcher's params file and resume choice, for its workers (their command line is `-m stages.train`).
PARAMS_FILE_ENV = "ART2MUS_TRAIN_PARAMS"
RESUME_ENV = "ART2MUS_TRAIN_RESUME"


def gather_pairs(pairs: pd.DataFrame, image_ids: list[str], image_matrix: torch.Tensor,
                 latent_index: pd.DataFrame, latents_dir: Path) -> tuple[StreamedPairs, pd.DataFrame]:
    """Each pair's image embedding (in memory) and cached latent posterior (read lazily from the
    shards), in the pairs' order; with the index rows of those latents."""
    image_row = {artwork_id: i for i, artwork_id in enumerate(image_ids)}
    latent_row = {int(track_id): i for i, track_id in enumerate(latent_index["track_id"])}
    usable = pairs[pairs["artwork_id"].isin(image_row) & pairs["track_id"].isin(latent_row)]
    if len(usable) < len(pairs):
        missing = pairs.loc[~pairs.index.isin(usable.index), "artwork_id"].head(3).tolist()
        raise Art2MusError(f"{len(pairs) - len(usable)} pair(s) lack cached features or latents, e.g. {missing} "
                           "(re-run the features and latents stages)")
    rows = latent_index.iloc[[latent_row[int(t)] for t in usable["track_id"]]].reset_index(drop=True)
    image_embeds = image_matrix[[image_row[a] for a in usable["artwork_id"]]].float()
    return StreamedPairs(image_embeds, LatentPosteriors.from_index(latents_dir, rows)), rows


def data_fingerprint(params_json: dict, encoder_id: str, prior_id: str, data: StreamedPairs,
                     latent_rows: pd.DataFrame) -> str:
    """What a checkpoint must match to be resumed: params, encoder, prior, the image embeddings (small,
    in memory) and the latents' content hashes from the index, in the pairs' order (never their bytes)."""
    digest = hashlib.sha256(json.dumps({"params": params_json, "encoder": encoder_id, "prior": prior_id},
                                       sort_keys=True).encode())
    digest.update(data.image_embeds.numpy().tobytes())
    digest.update("\n".join(latent_rows["sha256"]).encode())
    return digest.hexdigest()


def remove_interrupted_writes(path: Path) -> None:
    """Delete the folders a killed `atomic_path(path)` left beside `path` (`.<name>.*.tmp` / `.old`)."""
    for leftover in path.parent.glob(f".{path.name}.*"):
        if leftover.suffix in (".tmp", ".old"):
            shutil.rmtree(leftover, ignore_errors=True)


def run(params_file: str | Path, open_run: OpenRun, resume: bool = True) -> None:
    """Train the aligner and package the model; with train.processes > 1, relaunch under torchrun and wait."""
    if launched_child():
        die_with_launcher()
        params_file = os.environ.get(PARAMS_FILE_ENV, params_file)
        resume = os.environ.get(RESUME_ENV, "1") == "1"
    params = load_params(params_file)
    config = params.train
    if not launched_child() and (processes := requested_processes(config)) > 1:
        os.environ.update({PARAMS_FILE_ENV: str(Path(params_file).resolve()), RESUME_ENV: "1" if resume else "0"})
        try:
            code = relaunch_under_torchrun(processes)
        finally:
            for name in (PARAMS_FILE_ENV, RESUME_ENV):
                os.environ.pop(name, None)
        if code:
            sys.exit(code)
        return
    out = Path(config.out_dir)
    main_process = process_rank() == 0
    with open_run("train", config, params.tracking.experiment) as tracked:  # inactive on other ranks
        backbone = load_backbone(params.prior.out_dir, params.backbone.device)
        splits = read_table(SPLITS_TABLE)
        image_ids, image_matrix, encoder_id, _ = load_embeddings(Path(params.features.out_dir), "image")
        latents_dir = Path(params.latents.out_dir)
        data, latent_rows = gather_pairs(splits[splits["split"] == "train"], image_ids, image_matrix,
                                         load_latent_index(latents_dir), latents_dir)
        prior_id = backbone.info["identity"]
        fingerprint = data_fingerprint(config.model_dump(mode="json"), encoder_id, prior_id, data, latent_rows)
        record_training_lineage(tracked, project_root(), [  # the data read above, as dvc.yaml's train deps name it
            params.prior.out_dir, f"{params.features.out_dir}/{EMBEDDING_FILES['image']}",
            f"{params.latents.out_dir}/{INDEX_FILE}", f"{params.latents.out_dir}/{CACHE_DIR}", SPLITS_TABLE])
        result = train_aligner(data, backbone, config, out, resume=resume, fingerprint=fingerprint,
                               log_loss=lambda step, loss: tracked.log_metrics({"train_loss": loss}, step=step))
        if not main_process:
            return
        for path in (out / "aligner", MODEL_DIR, TRAIN_RECORD, LOSS_PLOT):
            remove_interrupted_writes(path)
        with atomic_path(out / "aligner") as tmp:
            result.aligner.save_pretrained(tmp)
        digest = state_dict_sha256(result.aligner)  # persisted as `weights_sha256` (record, model.json, tags)
        record = TrainRecord(mlflow_run_id=tracked.run_id, weights_sha256=digest, prior=prior_id,
                             backbone={k: v for k, v in backbone.info.items() if k != "tiny"},
                             image_encoder_id=encoder_id, train_pairs=len(data), steps=config.steps,
                             final_loss=result.losses[-1][1], seconds=result.seconds,
                             resumed_from=result.resumed_from, world_size=result.world_size,
                             mixed_precision=result.precision, gradient_checkpointing=config.gradient_checkpointing)
        with atomic_path(MODEL_DIR) as tmp:
            save_model(tmp, result.aligner, params.prior.out_dir, params.features.image_encoder, record.to_dict())
        record.write(TRAIN_RECORD)
        write_table_atomic(pd.DataFrame(result.losses, columns=["step", "loss"]), LOSS_PLOT)
        tracked.log_artifact(out / "aligner", artifact_path="aligner")
        tracked.log_artifact(TRAIN_RECORD)
        tracked.set_tags({"aligner.weights_sha256": digest, "prior.id": prior_id, "image_encoder": encoder_id,
                          "train.world_size": result.world_size,
                          "image_encoder.spec": json.dumps(params.features.image_encoder.model_dump(mode="json")),
                          "backbone": json.dumps(record.backbone, sort_keys=True, default=str)})
        tracked.log_metrics({"final_loss": record.final_loss, "seconds": result.seconds})

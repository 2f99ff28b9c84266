"""A registered version's artifact: the packaged model folder logged as an MLflow pyfunc in a `register` run.

Models from code (art2mus/serving/model_code.py), the folder as the artifact (safetensors weights, nothing
pickled), the runtime packages pinned to what is installed, and the serving limits in the model_config.
art2mus.tracking.registry (above this module) decides when a version is logged and registers it.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from art2mus.config import ServingParams
from art2mus.tracking.lineage import Lineage, library_versions
from art2mus.tracking.runs import PARENT_RUN_ENV, ensure_experiment
from art2mus.workspace import TrainRecord

MODEL_CODE = Path(__file__).resolve().parents[1] / "serving" / "model_code.py"
LOGGED_MODEL_NAME = "art2mus"
# What generating needs, pinned to the installed versions in the logged model's requirements.
# art2mus itself is not on PyPI: serve in the project's environment (`--env-manager local`) at the
# commit in the version's `git.commit` tag.
RUNTIME_PACKAGES = ("mlflow", "torch", "torchaudio", "diffusers", "transformers", "safetensors", "numpy",
                    "pandas", "pillow", "soundfile", "pydantic", "pyyaml")


def runtime_requirements() -> list[str]:
    """The runtime packages pinned to what is installed (missing ones left out)."""
    return [f"{package}=={installed}" for package, installed in library_versions(RUNTIME_PACKAGES).items()]


def serving_limits(lineage: Lineage) -> dict[str, Any]:
    """The served model's limits (`serving:` of the params the lineage recorded; defaults when none): they
    travel in the model_config, since a server has no params.yaml."""
    return ServingParams.model_validate(lineage.params.get("serving") or {}).model_dump()


def log_pyfunc(model_dir: Path, identity: str, record: TrainRecord, lineage: Lineage, uri: str,
               experiment: str, root: Path) -> tuple[str, str, str]:
    """Log the pyfunc in a `register` run; returns (model uri, logged model id, run id)."""
    import mlflow

    from art2mus.serving.pyfunc import MODEL_ARTIFACT, input_example, model_signature  # mlflow.pyfunc: when logging

    mlflow.set_tracking_uri(uri)
    experiment_id = ensure_experiment(experiment, uri, root)
    tags = {"art2mus.stage": "register", "art2mus.identity": identity,
            "art2mus.train_run_id": record.mlflow_run_id}
    if os.environ.get(PARENT_RUN_ENV):
        tags["mlflow.parentRunId"] = os.environ[PARENT_RUN_ENV]
    with mlflow.start_run(experiment_id=experiment_id, run_name="register", tags=tags,
                          nested=mlflow.active_run() is not None) as run:
        mlflow.log_dict({**asdict(lineage), "code_version": lineage.code_version}, "lineage.json")
        logged = mlflow.pyfunc.log_model(
            name=LOGGED_MODEL_NAME, python_model=str(MODEL_CODE), artifacts={MODEL_ARTIFACT: str(model_dir)},
            signature=model_signature(), input_example=input_example(), pip_requirements=runtime_requirements(),
            model_config={"identity": identity, "serving": serving_limits(lineage)},
        )
    return logged.model_uri, logged.model_id, run.info.run_id

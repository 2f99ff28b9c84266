"""Stage `evaluate`: the trained model against its baselines on the test split (metrics, plots, report)."""

from __future__ import annotations

from pathlib import Path

from art2mus.config import load_params
from art2mus.evaluation.evaluate import METRICS_FILE, REPORT_DIR, evaluate_model, load_split, planted_factors, summary_line
from art2mus.models.pipeline import Art2MusPipeline
from art2mus.stages import OpenRun
from art2mus.tracking.runs import flatten
from art2mus.workspace import MODEL_DIR, TRAIN_RECORD, TrainRecord


def numeric_metrics(metrics: dict) -> dict[str, float]:
    """The numbers of metrics.json as flat MLflow metric names (e.g. correspondence.trained.gap.value)."""
    return {key: float(value) for key, value in flatten(metrics).items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def run(params_file: str | Path, open_run: OpenRun) -> None:
    """Evaluate the packaged model on evaluate.split into evaluate.out_dir."""
    params = load_params(params_file)
    config = params.evaluate
    with open_run("evaluate", config, params.tracking.experiment) as tracked:
        record = TrainRecord.read(TRAIN_RECORD)
        pipeline = Art2MusPipeline.from_pretrained(MODEL_DIR)
        out = Path(config.out_dir)
        evaluation = evaluate_model(pipeline, load_split(params, config.split), params, out, planted_factors(params),
                                    meta={"model": str(MODEL_DIR), "train_run": record.mlflow_run_id})
        tracked.log_metrics(numeric_metrics(evaluation.metrics))
        tracked.log_artifact(out / METRICS_FILE)
        tracked.log_artifact(out / REPORT_DIR, artifact_path="report")
        tracked.set_tags({"aligner.weights_sha256": record.weights_sha256, "train_run": record.mlflow_run_id})
        print(f"evaluate: {summary_line(evaluation.metrics)}")
        print(f"evaluation report: {out / REPORT_DIR / 'index.html'}")

"""Stage `evaluate`: the trained model against its baselines on the test split (metrics, plots, report)."""

from pathlib import Path

from art2mus.config import load_params
from art2mus.evaluation.evaluate import (METRICS_FILE, REPORT_DIR, evaluate_model, load_split, planted_factors,
                                         summary_line)
from art2mus.models.pipeline import Art2MusPipeline
from art2mus.stage import run_stage
from art2mus.tracking import stage_run
from art2mus.tracking.runs import flatten
from art2mus.workspace import MODEL_DIR, TRAIN_RECORD, TrainRecord


def numeric_metrics(metrics: dict) -> dict[str, float]:
    """The numbers of metrics.json as flat MLflow metric names (e.g. correspondence.trained.gap.value)."""
    return {key: float(value) for key, value in flatten(metrics).items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def main() -> None:
    params = load_params()
    config = params.evaluate
    with stage_run("evaluate", config, params.tracking.experiment) as run:
        record = TrainRecord.read(TRAIN_RECORD)
        pipeline = Art2MusPipeline.from_pretrained(MODEL_DIR)
        out = Path(config.out_dir)
        evaluation = evaluate_model(pipeline, load_split(params, config.split), params, out, planted_factors(params),
                                    meta={"model": str(MODEL_DIR), "train_run": record.mlflow_run_id})
        run.log_metrics(numeric_metrics(evaluation.metrics))
        run.log_artifact(out / METRICS_FILE)
        run.log_artifact(out / REPORT_DIR, artifact_path="report")
        run.set_tags({"aligner.weights_sha256": record.weights_sha256, "train_run": record.mlflow_run_id})
        print(f"evaluate: {summary_line(evaluation.metrics)}")
        print(f"evaluation report: {out / REPORT_DIR / 'index.html'}")


if __name__ == "__main__":
    run_stage("evaluate", main)

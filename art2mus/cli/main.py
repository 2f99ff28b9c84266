"""`art2mus`: the command line for the pipeline, its stages and its tools."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from art2mus.cli.alerts import app as alerts_app
from art2mus.cli.fad import fad
from art2mus.cli.gc import gc
from art2mus.cli.lineage import lineage
from art2mus.cli.registry import history, promote, registry_app, rollback, tracking_app
from art2mus.cli.remote import remote_app
from art2mus.cli.retrain import retrain, schedule
from art2mus.config import load_params
from art2mus.data.schema import SPLITS_TABLE
from art2mus.env import configure_environment, project_root
from art2mus.errors import Art2MusError
from art2mus.io import read_table
from art2mus.logs import setup_logging
from art2mus.tracking import stage_run
from art2mus.tracking.client import registry_client
from art2mus.tracking.registry import CHAMPION_URI, MODEL_NAME, require_registry
from art2mus.workspace import MODEL_DIR, TRAIN_RECORD, TrainRecord

if TYPE_CHECKING:
    from art2mus.models.pipeline import GenerationConfig, SchedulerName

app = typer.Typer(help="Paintings to music: data, training, evaluation and registry.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors; no progress bars.")]
Params = Annotated[Path, typer.Option("--params", help="The params file.")]


def fail(command: str, error: Exception) -> None:
    typer.echo(f"art2mus: {command}: {error}", err=True)
    raise typer.Exit(1)


def check_registry_uri(model: str, root: Path) -> None:
    """A models:/ URI of our registered model in a store that holds it under its former name only: say how
    to migrate rather than let MLflow answer that the model does not exist."""
    if model.startswith((f"models:/{MODEL_NAME}@", f"models:/{MODEL_NAME}/")):
        require_registry(registry_client(root))


def scheduler_name(name: str) -> SchedulerName:
    """--scheduler checked against the schedulers generation knows."""
    if name == "ddim":
        return "ddim"
    if name == "dpmsolver++":
        return "dpmsolver++"
    raise typer.BadParameter(f"{name!r}: choose dpmsolver++ or ddim", param_hint="--scheduler")


def generation_config(scheduler: str | None, steps: int | None, guidance: float | None, seconds: float | None,
                      seed: int | None, batch_size: int | None) -> GenerationConfig:
    """The options given, GenerationConfig's defaults for those left out."""
    from art2mus.models.pipeline import GenerationConfig

    default = GenerationConfig()
    return GenerationConfig(
        scheduler=default.scheduler if scheduler is None else scheduler_name(scheduler),
        steps=default.steps if steps is None else steps,
        guidance_scale=default.guidance_scale if guidance is None else guidance,
        seconds=default.seconds if seconds is None else seconds,
        seed=default.seed if seed is None else seed,
        batch_size=default.batch_size if batch_size is None else batch_size,
    )


@app.command()
def sample(
    out: Annotated[Path | None, typer.Option(help="Where to write it (default: sample.out_dir).")] = None,
    seed: Annotated[int | None, typer.Option(help="Override sample.seed.")] = None,
    n_artworks: Annotated[int | None, typer.Option(help="Override sample.n_artworks.")] = None,
    params_file: Params = Path("params.yaml"),
    quiet: Quiet = False,
) -> None:
    """Synthesise the embedded sample (ArtGraph + FMA layouts, planted correspondence)."""
    from art2mus.data.sample import make_sample  # pandas, Pillow, soundfile: only for this command

    setup_logging(quiet)
    try:
        params = load_params(params_file)
        overrides = {k: v for k, v in {"seed": seed, "n_artworks": n_artworks}.items() if v is not None}
        config = params.sample.model_validate({**params.sample.model_dump(), **overrides})
        summary = make_sample(config, params.audio, out or Path(config.out_dir))
    except (Art2MusError, ValueError) as error:
        fail("sample", error)
    typer.echo(f"sample: {summary}")


@app.command()
def ingest(
    artgraph: Annotated[Path, typer.Option(help="ArtGraph root: the metadata CSV and imagesf2/.")],
    fma: Annotated[Path, typer.Option(help="FMA root: fma_metadata/ and fma_<size>/.")],
    out: Annotated[Path, typer.Option(help="Where the manifests go.")],
    artgraph_metadata: Annotated[Path | None, typer.Option(
        help="The ArtGraph metadata CSV (default: ingest.artgraph.metadata_file in the ArtGraph root, or the "
             "root's only CSV).")] = None,
    workers: Annotated[int | None, typer.Option(help="Decoding processes (default: ingest.workers).")] = None,
    params_file: Params = Path("params.yaml"),
    quiet: Quiet = False,
) -> None:
    """Read an ArtGraph export and an FMA copy into manifests; bad files are quarantined."""
    from art2mus.data.ingest import ingest as run_ingest  # pandas: only for this command

    setup_logging(quiet)
    configure_environment()
    try:
        params = load_params(params_file)
        config = params.ingest
        if workers is not None:
            config = config.model_copy(update={"workers": workers})
        if artgraph_metadata is not None:
            if not artgraph_metadata.is_file():
                raise Art2MusError(f"{artgraph_metadata}: metadata file not found (--artgraph-metadata)")
            metadata_file = str(artgraph_metadata.resolve())  # absolute: read as it is, not under --artgraph
            config = config.model_copy(update={"artgraph": config.artgraph.model_copy(
                update={"metadata_file": metadata_file})})
        summary = run_ingest(artgraph, fma, out, config, quiet=quiet,
                             min_track_seconds=params.audio.crop_offset_seconds + params.audio.crop_seconds)
    except Art2MusError as error:
        fail("ingest", error)
    typer.echo(f"ingest: {summary['artworks']} artworks, {summary['tracks']} tracks, "
               f"{summary['quarantined_artworks'] + summary['quarantined_tracks']} quarantined -> {out}")


@app.command()
def repro(
    stage: Annotated[str | None, typer.Argument(help="Reproduce up to this stage (default: all).")] = None,
    force: Annotated[bool, typer.Option(help="Re-run stages even when DVC finds them unchanged.")] = False,
) -> None:
    """Run the DVC pipeline on the configured data (DVC skips what is unchanged)."""
    root = configure_environment(project_root())
    try:
        load_params(root / "params.yaml", require_sections=True)  # a bad params.yaml fails here, before any stage runs
    except Art2MusError as error:
        fail("repro", error)
    command = [sys.executable, "-m", "dvc", "repro", *([stage] if stage else []), *(["--force"] if force else [])]
    result = subprocess.run(command, cwd=root)
    if result.returncode != 0:
        typer.echo("art2mus: repro: the pipeline stopped (the failing stage's message is above)", err=True)
        raise typer.Exit(result.returncode)
    print_data_summary(root)


def print_data_summary(root: Path) -> None:
    """Where the validated splits are and what they hold."""
    splits_path = root / SPLITS_TABLE
    if splits_path.exists():
        counts = read_table(splits_path)["split"].value_counts().to_dict()
        typer.echo(f"validated splits: {SPLITS_TABLE} ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))})")
    record_path = root / TRAIN_RECORD
    if record_path.exists():
        record = TrainRecord.read(record_path)
        typer.echo(f"trained aligner: {MODEL_DIR} (weights {record.weights_sha256[:12]}, "
                   f"MLflow run {record.mlflow_run_id}, final loss {record.final_loss:.4f})")
        typer.echo(f"generate with:   art2mus generate IMAGE... -o OUT_DIR --model {MODEL_DIR}")
    report = root / load_params(root / "params.yaml").evaluate.out_dir / "report" / "index.html"
    if report.exists():
        typer.echo(f"evaluation report: {report}")


@app.command()
def generate(
    images: Annotated[list[Path], typer.Argument(help="Image files (JPEG, PNG, ...).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Folder for the WAV files.")],
    model: Annotated[str, typer.Option(help="A packaged model folder or an MLflow URI.")] = str(MODEL_DIR),
    scheduler: Annotated[str | None, typer.Option(help="dpmsolver++ or ddim.")] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Denoising steps.")] = None,
    guidance: Annotated[float | None, typer.Option(min=0.0, help="Classifier-free guidance scale.")] = None,
    seconds: Annotated[float | None, typer.Option(min=0.1, help="Length (default: the prior's crop).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the initial noise.")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Images per batch.")] = None,
    quiet: Quiet = False,
) -> None:
    """One WAV per image (16 kHz); bad images are reported and the others still generate; options left out take
    GenerationConfig's defaults."""
    # torch, diffusers: only when generating (the CLI starts without them)
    from art2mus.generation import generate_files, shown_path

    setup_logging(quiet)
    root = configure_environment()
    config = generation_config(scheduler, steps, guidance, seconds, seed, batch_size)
    try:
        check_registry_uri(model, root)
        report = generate_files(images, out, model, config)
    except Art2MusError as error:
        fail("generate", error)
    for path in report.written:
        typer.echo(shown_path(path))
    if report.failed:
        typer.echo(f"art2mus: generate: {len(report.failed)} of {len(images)} image(s) failed (see above)", err=True)
        raise typer.Exit(1)


@app.command()
def evaluate(
    model: Annotated[str, typer.Option(help="A packaged model folder or an MLflow URI "
                                             f"(runs:/..., {CHAMPION_URI}).")] = str(MODEL_DIR),
    split: Annotated[str | None, typer.Option(help="train, val or test (default: evaluate.split).")] = None,
    out: Annotated[Path | None, typer.Option("-o", "--out", help="Output folder (default: "
                                                "<evaluate.out_dir>-<split>-<weights hash>).")] = None,
    params_file: Params = Path("params.yaml"),
    quiet: Quiet = False,
) -> None:
    """Evaluate any model on a split with the same candidates, noise and seeds as every other model."""
    from art2mus.evaluation.evaluate import REPORT_DIR, evaluate_uri, summary_line  # torch: only when evaluating

    setup_logging(quiet)
    root = configure_environment(project_root())
    try:
        check_registry_uri(model, root)
        evaluation, out_dir = evaluate_uri(model, load_params(params_file), split, out, root)
    except (Art2MusError, ValueError) as error:
        fail("evaluate", error)
    typer.echo(f"evaluate: {summary_line(evaluation.metrics)}")
    typer.echo(f"evaluation report: {out_dir / REPORT_DIR / 'index.html'}")


@app.command()
def train(
    resume: Annotated[bool, typer.Option(help="Continue the last compatible checkpoint.")] = True,
    params_file: Params = Path("params.yaml"),
) -> None:
    """Train the aligner (the `train` stage) from the cached features and latents."""
    from art2mus.stages.train import run as run_train  # torch: only when training

    setup_logging()
    configure_environment()
    try:
        run_train(params_file, stage_run, resume=resume)
    except Art2MusError as error:
        fail("train", error)


@app.command("params")
def show_params(params_file: Params = Path("params.yaml")) -> None:
    """Validate params.yaml and print it as the pipeline reads it."""
    import yaml

    try:
        params = load_params(params_file, require_sections=True)
    except Art2MusError as error:
        fail("params", error)
    typer.echo(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))


app.command("fad")(fad)
app.command("promote")(promote)
app.command("rollback")(rollback)
app.command("history")(history)
app.command("retrain")(retrain)
app.command("schedule")(schedule)
app.command("lineage")(lineage)
app.command("gc")(gc)
app.add_typer(alerts_app, name="alerts")
app.add_typer(remote_app, name="remote")
app.add_typer(registry_app, name="registry")
app.add_typer(tracking_app, name="tracking")


if __name__ == "__main__":
    app()

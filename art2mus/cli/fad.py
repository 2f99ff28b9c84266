"""`art2mus fad REF GEN`: Fréchet Audio Distance between two folders of audio or .npy embeddings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from art2mus.env import configure_environment
from art2mus.errors import Art2MusError
from art2mus.logs import setup_logging


def fad(
    ref: Annotated[Path, typer.Argument(help="Reference set: a folder of audio or .npy files, or one .npy matrix.")],
    gen: Annotated[Path, typer.Argument(help="Generated set, like REF.")],
    embedder: Annotated[str | None, typer.Option(
        help="spectral (default for audio, no weights), clap, imagebind, tiny or vggish; for .npy inputs, the "
             "embedder that made them (names the metric).")] = None,
    source: Annotated[str, typer.Option(help="The embedder's weights: a local path or hub id.")] = "",
    n_boot: Annotated[int, typer.Option(min=0, help="Bootstrap resamples of clips (0: no interval).")] = 200,
    ci: Annotated[float, typer.Option(min=0.5, max=0.999, help="Confidence level of the interval.")] = 0.95,
    seed: Annotated[int, typer.Option(help="Seed of the equal-size cut and the bootstrap.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors; no progress bars.")] = False,
) -> None:
    """FAD between REF and GEN at equal size, with a bootstrap interval; unreadable files are listed."""
    from art2mus.evaluation.fad import fad_paths  # torch: only when measuring

    setup_logging(quiet or as_json)
    configure_environment()
    try:
        report = fad_paths(ref, gen, embedder, source, quiet=quiet or as_json, n_boot=n_boot, seed=seed, ci=ci)
    except Art2MusError as error:
        typer.echo(f"art2mus: fad: {error}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
        return
    result = report.result
    interval = (f" ({result.ci:.0%} CI {result.low:.4g} to {result.high:.4g})" if result.low is not None
                else " (no interval)")
    typer.echo(f"{result.name} = {result.value:.6g}{interval}")
    typer.echo(f"  {result.n_used} rows per set: ref {result.n_used} of {result.n_ref} rows from {result.clips_ref} "
               f"clips, gen {result.n_used} of {result.n_gen} rows from {result.clips_gen} clips; dim {result.dim}"
               + (f"; embedder {result.embedder_id}" if result.embedder_id else ""))
    if not result.valid:
        typer.echo(f"  INVALID: {result.reason}")
    for which, failed in report.failed.items():
        for name, why in failed.items():
            typer.echo(f"  unreadable ({which}): {name}: {why}", err=True)

"""`art2mus lineage`: a model version back to everything that made it, or a data file forward to every
version it went into.

Exit codes (for scripts): forward, 0 when every recorded input is still in the DVC cache or remote,
1 when some input is in neither; reverse, 0 when some version used the data, 1 when none did;
2 on an error (unknown model, bad path or hash, unreadable store).
"""

from __future__ import annotations

import json
import textwrap
from typing import Annotated, Any

import typer

from art2mus.env import configure_environment, project_root
from art2mus.errors import Art2MusError
from art2mus.logs import setup_logging
from art2mus.tracking.audit import trace, unavailable, versions_using
from art2mus.tracking.client import registry_client
from art2mus.tracking.registry import CHAMPION_URI, MODEL_NAME, require_registry
from art2mus.tracking.runs import flatten

FOUND, NOT_FOUND, ERROR = 0, 1, 2
SHOWN_PARAMS = ("train", "features", "backbone")  # the sections that shape the aligner; --json has all


def short(md5: str) -> str:
    return f"{md5[:12]}{'.dir' if md5.endswith('.dir') else ''}"


def params_lines(params: dict[str, Any], sections: tuple[str, ...] = SHOWN_PARAMS) -> list[str]:
    """The params that shape the aligner, a section per paragraph, wrapped."""
    lines = []
    for section in sections:
        values = {key: value for key, value in flatten(params.get(section) or {}).items()
                  if not key.startswith("tiny.")}  # the tiny backbone's architecture: --json
        if values:
            text = f"{section}: " + " ".join(f"{key}={value}" for key, value in values.items())
            lines += textwrap.wrap(text, width=100, subsequent_indent="  ")
    return lines


def where(item: dict[str, Any]) -> str:
    files = item.get("files")
    detail = "file" if files is None else f"{files} file{'' if files == 1 else 's'}"
    if item.get("stored_as") and item["stored_as"] != item["path"]:
        detail += f", stored in {item['stored_as']}"
    return detail


def chain_text(chain: dict[str, Any]) -> list[str]:
    """The forward chain for people: alias -> version -> run -> commit -> params -> data -> gates."""
    run = chain["train_run"]
    git = chain["git"]
    lines = [chain["uri"]]
    if chain["alias"]:
        lines.append(f"  alias      {chain['alias']} -> version {chain['version']}")
    lines.append(f"  version    {chain['model']} {chain['version']}  validation {chain['validation_status'] or '?'}"
                 f"  weights {chain['weights_sha256'][:12]}  identity {chain['identity'][:12]}")
    lines.append(f"  run        train {run['id'] or '?'} ({run.get('status', 'not found') if run['found'] else 'not found'}"
                 f"{', lineage complete' if run.get('lineage_complete') else ''}, {len(run['datasets'])} datasets logged)"
                 f"  register {chain['register_run'] or '?'}")
    state = f" (dirty: {git['code_version']})" if git["dirty"] else " (clean)"
    lines.append(f"  commit     {git['commit'] or 'unknown'}{state}")
    shown = params_lines(chain["params"])
    lines += [f"  {'params' if index == 0 else '':<10} {line}" for index, line in enumerate(shown)]
    lines.append(f"  {'params' if not shown else '':<10} (all of them: --json; params.yaml is an artifact of the train run)")
    encoder = chain["image_encoder"]
    spec = encoder["spec"] or {}
    lines.append(f"  encoder    {encoder['id'] or spec.get('name', '?')} (source {spec.get('source') or 'default'}, "
                 f"revision {spec.get('revision', '?')})")
    backbone = chain["backbone"] or {}
    revision = f"@{backbone['revision']}" if backbone.get("revision") else ""
    lines.append(f"  backbone   {backbone.get('profile', '?')}: {backbone.get('source', '?')}{revision}"
                 f"  prior {str(chain['prior'])[:16]}")
    lines.append(f"  data       {len(chain['inputs'])} inputs (tag {chain['inputs_tag'] or 'none'}): md5, DVC cache, "
                 "DVC remote")
    width = max((len(item["path"]) for item in chain["inputs"]), default=0)
    for item in chain["inputs"]:
        lines.append(f"             {item['path']:<{width}}  {short(item['md5']):<16}  cache {item['cache']:<8}  "
                     f"remote {item['remote']:<8}  ({where(item)})")
    if chain["gates"]:
        for index, (gate, result) in enumerate(sorted(chain["gates"].items())):
            verdict = "passed" if result.get("success") else f"FAILED {result.get('unsuccessful')} of"
            lines.append(f"  {'gates' if index == 0 else '':<10} {gate}: {verdict} {result.get('evaluated')} expectations"
                         f" (report md5 {str(result.get('md5', ''))[:12]})")
    else:
        lines.append("  gates      none recorded")
    libraries = chain["libraries"]
    if libraries:
        lines.append("  libraries  " + ", ".join(f"{name} {version}" for name, version in sorted(libraries.items())))
    return lines


def reverse_text(found: dict[str, Any]) -> list[str]:
    """Which versions used a file, for people (a takedown request's answer)."""
    origin = f" ({found['path']})" if found["path"] else ""
    lines = [f"data {found['md5']}{origin}"]
    if not found["versions"]:
        lines.append(f"  used by no version: none of the {found['versions_searched']} registered version(s) "
                     "recorded it among its training inputs")
    for hit in found["versions"]:
        aliases = f" @{', @'.join(hit['aliases'])}" if hit["aliases"] else ""
        lines.append(f"  version {hit['version']}{aliases}  validation {hit['validation_status'] or '?'}  "
                     f"train run {hit['train_run_id'] or '?'}")
        for match in hit["through"]:
            contains = f" -> contains {match['contains']}" if match["contains"] else ""
            lines.append(f"    through {match['input']} ({short(match['input_md5'])}){contains}")
    for version, paths in sorted(found["unreadable"].items(), key=lambda item: int(item[0])):
        lines.append(f"  warning: version {version}: manifests of {', '.join(paths)} are in neither the DVC cache nor "
                     "the remote, so files inside them could not be checked")
    return lines


def lineage(
    model: Annotated[str | None, typer.Argument(help=f"{CHAMPION_URI} or models:/{MODEL_NAME}/3.")]
    = None,
    data: Annotated[str | None, typer.Option("--data", help="A file or folder path, or a DVC md5: list every "
                                                "version whose training data included it.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Trace a model version to its run, commit, params, data and gates (each data hash checked against the
    DVC cache and remote), or with --data list every version whose training data included a file.

    Exit code 0: all inputs present / some version used the data; 1: an input is in neither store / no
    version used it; 2: an error."""
    setup_logging(quiet=True)
    if (model is None) == (data is None):
        typer.echo("art2mus: lineage: give a model URI or --data PATH_OR_HASH (one of them)", err=True)
        raise typer.Exit(ERROR)
    root = configure_environment(project_root())
    try:
        from mlflow.exceptions import MlflowException

        client = registry_client(root)
        require_registry(client)
        if model is not None:
            result = trace(client, model, root)
        else:
            assert data is not None  # exactly one of the two, checked above
            result = versions_using(client, data, root)
    except (Art2MusError, MlflowException) as error:
        typer.echo(f"art2mus: lineage: {error}", err=True)
        raise typer.Exit(ERROR) from None
    if as_json:
        typer.echo(json.dumps(result, indent=2, sort_keys=True, default=str))
    else:
        for line in chain_text(result) if model is not None else reverse_text(result):
            typer.echo(line)
    if model is not None:
        missing = unavailable(result)
        if missing:
            typer.echo(f"art2mus: lineage: {len(missing)} input(s) are in neither the DVC cache nor the remote: "
                       f"{', '.join(missing)}", err=True)
        raise typer.Exit(NOT_FOUND if missing else FOUND)
    raise typer.Exit(FOUND if result["versions"] else NOT_FOUND)

"""`art2mus remote s3`: make an S3 bucket (any S3-compatible endpoint) the project's default DVC remote.

The remote's URL and endpoint go to `.dvc/config` (tracked; `--local` keeps them in `.dvc/config.local`
instead); credentials only ever go to `.dvc/config.local` (git-ignored) or stay in the environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from art2mus.env import configure_environment, project_root
from art2mus.errors import Art2MusError

DEFAULT_REMOTE = "team"

remote_app = typer.Typer(help="Configure where DVC pushes and pulls data.", no_args_is_help=True)


def configure_s3_remote(root: Path, bucket: str, prefix: str = "", endpoint: str | None = None,
                        name: str = DEFAULT_REMOTE, local: bool = False, credentials_from_env: bool = False) -> str:
    """Add (or replace) remote `name` at s3://bucket/prefix as the default; returns its URL."""
    from dvc.config import Config, ConfigError

    if not bucket or "/" in bucket:
        raise Art2MusError(f"{bucket!r} is not a bucket name (give the path inside it with --prefix)")
    dvc_dir = root / ".dvc"
    if not dvc_dir.is_dir():
        raise Art2MusError(f"{root}: not a DVC project (no .dvc folder)")
    url = f"s3://{bucket}/{prefix.strip('/')}".rstrip("/")
    settings: dict[str, str] = {"url": url}
    if endpoint:
        settings["endpointurl"] = endpoint
    credentials: dict[str, str] = {}
    if credentials_from_env:
        access, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
        if not (access and secret):
            raise Art2MusError("--credentials-from-env: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not both set")
        credentials = {"access_key_id": access, "secret_access_key": secret}
    config = Config(dvc_dir=str(dvc_dir), local_dvc_dir=str(dvc_dir))
    try:
        with config.edit("local" if local else "repo") as conf:
            conf["remote"][name] = settings
            conf["core"]["remote"] = name
        with config.edit("local") as conf:
            if local:
                pass  # written above
            elif name in conf["remote"]:
                # A local section of the same name would shadow the new URL: keep only its credentials.
                conf["remote"][name] = {key: value for key, value in conf["remote"][name].items()
                                        if key in ("access_key_id", "secret_access_key", "session_token")}
            if conf["core"].get("remote") not in (None, name):
                conf["core"]["remote"] = name  # a local default would win over the repo's
            if credentials:
                conf["remote"].setdefault(name, {}).update(credentials)
    except ConfigError as error:
        raise Art2MusError(f"{dvc_dir / ('config.local' if local else 'config')}: {error}") from None
    return url


@remote_app.command("s3")
def s3(
    bucket: Annotated[str, typer.Argument(help="The bucket.")],
    prefix: Annotated[str, typer.Option(help="The folder inside the bucket.")] = "dvc",
    endpoint: Annotated[str | None, typer.Option(help="An S3-compatible endpoint, e.g. http://127.0.0.1:8333 "
                                                    "(default: AWS).")] = None,
    name: Annotated[str, typer.Option(help="The remote's name.")] = DEFAULT_REMOTE,
    local: Annotated[bool, typer.Option("--local", help="Keep the whole remote in .dvc/config.local "
                                        "(this machine only).")] = False,
    credentials_from_env: Annotated[bool, typer.Option(
        "--credentials-from-env", help="Copy AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY into .dvc/config.local "
        "(git-ignored); otherwise DVC reads them from the environment.")] = False,
) -> None:
    """Make s3://BUCKET/PREFIX the default DVC remote (`dvc push` / `dvc pull` and the retrain flow use it)."""
    root = configure_environment(project_root())
    try:
        url = configure_s3_remote(root, bucket, prefix, endpoint, name, local, credentials_from_env)
    except Art2MusError as error:
        typer.echo(f"art2mus: remote s3: {error}", err=True)
        raise typer.Exit(1) from None
    where = ".dvc/config.local" if local else ".dvc/config"
    typer.echo(f"remote {name!r}: {url}{f' at {endpoint}' if endpoint else ''} is the default DVC remote ({where})")
    typer.echo("credentials: " + (".dvc/config.local" if credentials_from_env else
                                  "from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)"))

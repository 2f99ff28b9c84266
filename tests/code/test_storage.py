"""The storage module against a real SeaweedFS (weed mini on 127.0.0.1, started once for the module)."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from art2mus import storage
from infra.local.stack import (
    WRITE_PROBE_PREFIX,
    Service,
    StackError,
    free_ports,
    s3_credentials,
    start_s3,
    stop_service,
    wait_for_writes,
)

BUCKET = "storage-tests"
QUICK = storage.Transfer(max_attempts=2, connect_timeout=2, read_timeout=20, multipart_threshold=5 << 20,
                         multipart_chunksize=5 << 20)


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, storage.S3Settings]]:
    """A SeaweedFS with the module's own key pair; its process group is killed at the end."""
    state_dir = tmp_path_factory.mktemp("seaweed")
    saved = {key: os.environ.pop(key, None) for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    try:
        access, secret = s3_credentials(state_dir)  # made for this state dir, kept in s3.env
        service = start_s3(state_dir, {**os.environ})
    finally:
        os.environ.update({key: value for key, value in saved.items() if value is not None})
    try:
        yield service, storage.S3Settings(f"http://127.0.0.1:{service.ports['s3']}", access_key=access, secret_key=secret)
    finally:
        stop_service(service)


@pytest.fixture()
def store(seaweed: tuple[Service, storage.S3Settings]) -> storage.S3Store:
    made = storage.s3_store(seaweed[1], QUICK)
    storage.ensure_bucket(made, BUCKET)
    return made


def test_a_file_round_trips_with_its_checksum(store: storage.S3Store, tmp_path: Path) -> None:
    source = tmp_path / "clip.bin"
    source.write_bytes(os.urandom(4096))
    digest = storage.upload_file(store, source, BUCKET, "round/clip.bin")
    assert digest == hashlib.sha256(source.read_bytes()).hexdigest()
    assert storage.download_file(store, BUCKET, "round/clip.bin", tmp_path / "back" / "clip.bin") == digest
    assert (tmp_path / "back" / "clip.bin").read_bytes() == source.read_bytes()
    assert storage.list_keys(store, BUCKET, "round/") == ["round/clip.bin"]
    assert storage.ensure_bucket(store, BUCKET) is False  # already there: nothing created


def test_a_large_file_goes_up_in_parts(store: storage.S3Store, tmp_path: Path) -> None:
    source = tmp_path / "large.bin"
    source.write_bytes(os.urandom(11 << 20))  # 11 MiB with 5 MiB parts: three parts
    digest = storage.upload_file(store, source, BUCKET, "large.bin")
    etag = store.client.head_object(Bucket=BUCKET, Key="large.bin")["ETag"].strip('"')
    assert etag.endswith("-3"), etag  # a multipart upload's ETag counts its parts
    assert storage.download_file(store, BUCKET, "large.bin", tmp_path / "large.back") == digest


def test_a_checksum_mismatch_fails_and_leaves_no_file(store: storage.S3Store, tmp_path: Path) -> None:
    source = tmp_path / "weights.bin"
    source.write_bytes(b"the real weights")
    storage.upload_file(store, source, BUCKET, "weights.bin")
    # The object changes behind the recorded checksum (bit rot, a writer that skipped the metadata).
    recorded = store.client.head_object(Bucket=BUCKET, Key="weights.bin")["Metadata"]
    store.client.put_object(Bucket=BUCKET, Key="weights.bin", Body=b"other weights!!!", Metadata=recorded)
    target = tmp_path / "out" / "weights.bin"
    with pytest.raises(storage.StorageError, match=r"s3://storage-tests/weights.bin at http://127.0.0.1:\d+: checksum mismatch"):
        storage.download_file(store, BUCKET, "weights.bin", target)
    assert not target.exists() and list(target.parent.iterdir()) == []  # no partial file either


def test_a_missing_bucket_is_named(store: storage.S3Store, tmp_path: Path) -> None:
    source = tmp_path / "a.txt"
    source.write_text("a")
    with pytest.raises(storage.StorageError, match=r"bucket 'no-such-bucket' does not exist at http://127.0.0.1:\d+"):
        storage.check_bucket(store, "no-such-bucket")
    with pytest.raises(storage.StorageError, match=r"bucket 'no-such-bucket' does not exist"):
        storage.list_keys(store, "no-such-bucket")
    with pytest.raises(storage.StorageError, match=r"s3://storage-tests/missing.bin does not exist"):
        storage.download_file(store, BUCKET, "missing.bin", tmp_path / "missing.bin")
    assert not (tmp_path / "missing.bin").exists()


def test_the_store_is_ready_once_it_takes_a_write_and_the_probe_leaves_nothing(
        seaweed: tuple[Service, storage.S3Settings], store: storage.S3Store) -> None:
    service, _ = seaweed
    state_dir = Path(service.log).parent.parent
    wait_for_writes(service, state_dir, BUCKET, seconds=30)
    assert not [key for key in storage.list_keys(store, BUCKET) if key.startswith(WRITE_PROBE_PREFIX)]
    # A bucket no write can go to: the wait ends naming the bucket and the service's log.
    with pytest.raises(StackError, match=r"did not take writes into bucket 'No_Such!Bucket' .* its log .*s3\.log"):
        wait_for_writes(service, state_dir, "No_Such!Bucket", seconds=1)


def test_bad_credentials_are_refused_without_showing_the_secret(seaweed: tuple[Service, storage.S3Settings],
                                                                 tmp_path: Path) -> None:
    settings = seaweed[1]
    wrong = storage.S3Settings(settings.endpoint, access_key=settings.access_key, secret_key="not-the-secret-1234")
    bad = storage.s3_store(wrong, QUICK)
    source = tmp_path / "a.txt"
    source.write_text("a")
    with pytest.raises(storage.StorageError) as refused:
        storage.upload_file(bad, source, BUCKET, "a.txt")
    message = str(refused.value)
    assert "the credentials were refused (SignatureDoesNotMatch)" in message and settings.access_key in message
    assert "not-the-secret-1234" not in message and settings.secret_key not in message
    assert "not-the-secret" not in repr(wrong)
    nobody = storage.S3Settings(settings.endpoint, access_key="nobody", secret_key="x" * 20)
    with pytest.raises(storage.StorageError, match="the credentials were refused"):
        storage.check_bucket(storage.s3_store(nobody, QUICK), BUCKET)


def test_an_unreachable_endpoint_is_named(tmp_path: Path) -> None:
    [closed] = free_ports(1)  # bound and released: nothing listens there
    store = storage.s3_store(storage.S3Settings(f"http://127.0.0.1:{closed}", access_key="k", secret_key="s"),
                             storage.Transfer(max_attempts=1, connect_timeout=1))
    with pytest.raises(storage.StorageError, match=rf"bucket 'b': the S3 endpoint http://127.0.0.1:{closed} is unreachable"):
        storage.ensure_bucket(store, "b")


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id-1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-1")
    monkeypatch.delenv("ART2MUS_S3_ENDPOINT", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    assert storage.S3Settings.from_env() == storage.S3Settings("http://127.0.0.1:9", region, "id-1", "secret-1")
    monkeypatch.setenv("ART2MUS_S3_ENDPOINT", "http://127.0.0.1:10")
    assert storage.S3Settings.from_env().endpoint == "http://127.0.0.1:10"
    assert "secret-1" not in repr(storage.S3Settings.from_env())


def test_the_s3_remote_is_the_default_and_its_credentials_stay_local(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from art2mus.cli.remote import configure_s3_remote
    from art2mus.errors import Art2MusError

    dvc_dir = tmp_path / ".dvc"
    dvc_dir.mkdir()
    (dvc_dir / "config").write_text("[core]\n    remote = local\n['remote \"local\"']\n    url = ../.dvcstore\n")
    (dvc_dir / "config.local").write_text("[core]\n    remote = local\n")  # a local default would win
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "team-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "team-secret-value")
    url = configure_s3_remote(tmp_path, "art2mus", "/dvc/", "http://127.0.0.1:8333", credentials_from_env=True)
    assert url == "s3://art2mus/dvc"
    tracked, local = (dvc_dir / "config").read_text(), (dvc_dir / "config.local").read_text()
    assert "remote = team" in tracked and "url = s3://art2mus/dvc" in tracked
    assert "endpointurl = http://127.0.0.1:8333" in tracked and "team-secret-value" not in tracked
    assert "remote = team" in local and "secret_access_key = team-secret-value" in local and "url" not in local
    with pytest.raises(Art2MusError, match="is not a bucket name"):
        configure_s3_remote(tmp_path, "art2mus/dvc")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(Art2MusError, match="AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not both set"):
        configure_s3_remote(tmp_path, "art2mus", credentials_from_env=True)


CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
                  "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                  "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_EC2_METADATA_DISABLED")


@pytest.fixture
def no_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """No credentials anywhere boto3 looks; returns the cloud metadata requests made (each also fails)."""
    import botocore.httpsession

    for name in CREDENTIAL_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    asked: list[str] = []
    real_send = botocore.httpsession.URLLib3Session.send

    def send(self, request):
        if "169.254.169.254" in request.url or "[fd00:ec2::254]" in request.url:
            asked.append(request.url)
            raise botocore.httpsession.ConnectTimeoutError(endpoint_url=request.url)
        return real_send(self, request)

    monkeypatch.setattr(botocore.httpsession.URLLib3Session, "send", send)
    return asked


def test_the_environment_disables_the_cloud_metadata_lookup_unless_the_user_set_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from art2mus.env import configure_environment

    monkeypatch.setattr(os, "environ", {key: value for key, value in os.environ.items()
                                        if key != "AWS_EC2_METADATA_DISABLED"})
    configure_environment(tmp_path)
    assert os.environ["AWS_EC2_METADATA_DISABLED"] == "true"
    os.environ["AWS_EC2_METADATA_DISABLED"] = "false"  # an instance-role user turns it back on
    configure_environment(tmp_path)
    assert os.environ["AWS_EC2_METADATA_DISABLED"] == "false"


def test_make_exports_the_offline_defaults_spelled_once_and_the_users_setting_wins() -> None:
    from art2mus.env import OFFLINE_DEFAULTS

    root = Path(__file__).resolve().parents[2]
    env = {key: value for key, value in os.environ.items() if key not in OFFLINE_DEFAULTS}
    env["MLFLOW_DISABLE_TELEMETRY"] = "false"  # the user's own choice
    shown = subprocess.run(["make", "-s", "--no-print-directory", "--eval", "print-env: ; @env", "print-env"],
                           cwd=root, env=env, capture_output=True, text=True, check=True).stdout.splitlines()
    expected = {f"{key}={value}" for key, value in OFFLINE_DEFAULTS.items() if key != "MLFLOW_DISABLE_TELEMETRY"}
    assert expected <= set(shown)
    assert "MLFLOW_DISABLE_TELEMETRY=false" in shown


def test_no_credentials_fail_fast_naming_the_store_without_asking_the_cloud(no_credentials: list[str]) -> None:
    with pytest.raises(storage.StorageError) as error:
        storage.s3_store(storage.S3Settings("http://127.0.0.1:9"), storage.Transfer(max_attempts=1, connect_timeout=1))
    message = str(error.value)
    assert message.startswith("S3 at http://127.0.0.1:9: no credentials configured")
    assert "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in message and "AWS_EC2_METADATA_DISABLED=false" in message
    assert no_credentials == [] and os.environ["AWS_EC2_METADATA_DISABLED"] == "true"
    with pytest.raises(storage.StorageError, match="only one of AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        storage.s3_store(storage.S3Settings("http://127.0.0.1:9", access_key="id-only"))


def test_a_model_on_s3_without_credentials_is_a_clear_error(no_credentials: list[str], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from art2mus.cli.main import app

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("{}\n")
    result = CliRunner().invoke(app, ["evaluate", "--model", "s3://models-bucket/art2mus/v3", "--quiet"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "art2mus: evaluate: s3://models-bucket/art2mus/v3 at AWS S3" in result.output
    assert "no credentials configured" in result.output and "Traceback" not in result.output
    assert no_credentials == []

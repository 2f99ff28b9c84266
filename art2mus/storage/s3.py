"""S3 object storage through boto3: one client factory, checked transfers, errors that say what to fix.

Every boto3 use of the project goes through here. Credentials come from the environment
(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or boto3's usual chain); the endpoint of an
S3-compatible store (SeaweedFS, MinIO, ...) from ART2MUS_S3_ENDPOINT or AWS_ENDPOINT_URL_S3.
Uploads record the file's SHA-256 in the object's metadata; downloads recompute it and keep the
file only when it matches. Messages name the endpoint, bucket and key, never a secret.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from art2mus.env import disable_cloud_metadata_lookup
from art2mus.errors import Art2MusError
from art2mus.io import atomic_path, sha256_file

if TYPE_CHECKING:
    from boto3.s3.transfer import TransferConfig

ENDPOINT_ENV = ("ART2MUS_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3")
SHA256_METADATA = "sha256"  # stored as x-amz-meta-sha256
DEFAULT_REGION = "us-east-1"
MIB = 1 << 20

MISSING_BUCKET_CODES = frozenset({"NoSuchBucket", "404", "NotFound"})
MISSING_KEY_CODES = frozenset({"NoSuchKey"})
CREDENTIAL_CODES = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "Forbidden",
                              "InvalidToken", "ExpiredToken", "AuthorizationHeaderMalformed"})


class StorageError(Art2MusError):
    """An S3 operation failed for a reason the user can act on."""


@dataclass(frozen=True)
class S3Settings:
    """Where the store is and who we are; the secret never appears in repr or messages."""

    endpoint: str | None = None  # None: AWS itself
    region: str = DEFAULT_REGION
    access_key: str | None = None
    secret_key: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, endpoint: str | None = None) -> S3Settings:
        """Settings from the environment; an explicit `endpoint` wins over it."""
        found = endpoint or next((os.environ[name] for name in ENDPOINT_ENV if os.environ.get(name)), None)
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
        return cls(found, region, os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY"))

    @property
    def where(self) -> str:
        return self.endpoint or f"AWS S3 ({self.region})"


@dataclass(frozen=True)
class Transfer:
    """Retries, timeouts and multipart sizes of a client."""

    max_attempts: int = 5  # botocore "standard" mode: exponential backoff with jitter between attempts
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    multipart_threshold: int = 64 * MIB
    multipart_chunksize: int = 16 * MIB
    max_concurrency: int = 4


@dataclass
class S3Store:
    """A boto3 S3 client with the settings it was made from (for messages and transfers)."""

    client: Any
    settings: S3Settings
    transfer: Transfer

    def transfer_config(self) -> TransferConfig:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(multipart_threshold=self.transfer.multipart_threshold,
                              multipart_chunksize=self.transfer.multipart_chunksize,
                              max_concurrency=self.transfer.max_concurrency)


CREDENTIALS_HELP = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE with ~/.aws/credentials); "
                    "on a cloud instance with a role, set AWS_EC2_METADATA_DISABLED=false")


def require_credentials(settings: S3Settings, target: str = "S3") -> None:
    """Fail fast, naming `target` and the store, when no credentials are configured.

    Asks boto3's own chain (environment, profiles, SSO, ...) but never the cloud metadata address unless
    the user enabled it (`art2mus.env.disable_cloud_metadata_lookup`)."""
    import boto3
    from botocore.exceptions import BotoCoreError

    where = f"{target} at {settings.where}"
    if settings.access_key and settings.secret_key:
        return
    if settings.access_key or settings.secret_key:
        raise StorageError(f"{where}: only one of AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY is set; set both")
    disable_cloud_metadata_lookup()
    try:
        credentials = boto3.session.Session().get_credentials()
    except BotoCoreError as error:  # a partial or malformed profile
        raise StorageError(f"{where}: the S3 credentials are unusable ({error}); {CREDENTIALS_HELP}") from None
    if credentials is None:
        raise StorageError(f"{where}: no credentials configured; {CREDENTIALS_HELP}")


def s3_store(settings: S3Settings | None = None, transfer: Transfer | None = None) -> S3Store:
    """A client for `settings` (default: the environment) with bounded retries and timeouts.

    Without credentials it fails here, with StorageError, before any request (see `require_credentials`)."""
    import boto3
    from botocore.config import Config

    settings = settings or S3Settings.from_env()
    require_credentials(settings)
    transfer = transfer or Transfer()
    config = Config(retries={"max_attempts": transfer.max_attempts, "mode": "standard"},
                    connect_timeout=transfer.connect_timeout, read_timeout=transfer.read_timeout,
                    signature_version="s3v4", s3={"addressing_style": "path"})
    client = boto3.session.Session().client(
        "s3", endpoint_url=settings.endpoint, region_name=settings.region, config=config,
        aws_access_key_id=settings.access_key, aws_secret_access_key=settings.secret_key)
    return S3Store(client, settings, transfer)


def storage_error(store: S3Store, error: Exception, bucket: str, key: str | None = None) -> StorageError:
    """`error` from botocore as a message naming the endpoint, bucket and key (never the secret)."""
    from botocore.exceptions import ClientError, ConnectionError, NoCredentialsError, PartialCredentialsError

    where = store.settings.where
    target = f"s3://{bucket}/{key}" if key else f"bucket {bucket!r}"
    if isinstance(error, (NoCredentialsError, PartialCredentialsError)):
        return StorageError(f"{target} at {where}: no S3 credentials; {CREDENTIALS_HELP}")
    if isinstance(error, ConnectionError):  # refused, timed out, DNS: botocore's retries are spent
        return StorageError(f"{target}: the S3 endpoint {where} is unreachable after "
                            f"{store.transfer.max_attempts} attempts ({type(error).__name__})")
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in MISSING_BUCKET_CODES and (key is None or code == "NoSuchBucket"):
            return StorageError(f"bucket {bucket!r} does not exist at {where} (create it with ensure_bucket or "
                                "`make stack-up`)")
        if code in MISSING_KEY_CODES or (code in MISSING_BUCKET_CODES and key is not None):
            return StorageError(f"{target} does not exist at {where}")
        if code in CREDENTIAL_CODES:
            return StorageError(f"{target} at {where}: the credentials were refused ({code}) for access key "
                                f"{store.settings.access_key or '(from boto3 defaults)'}; check AWS_ACCESS_KEY_ID "
                                "and AWS_SECRET_ACCESS_KEY")
        return StorageError(f"{target} at {where}: S3 error {code or 'unknown'}: "
                            f"{error.response.get('Error', {}).get('Message', '')}")
    return StorageError(f"{target} at {where}: {type(error).__name__}: {error}")


def storage_failures() -> tuple[type[Exception], ...]:
    """What botocore raises when a storage call fails (credentials, network, the service's answer)."""
    from botocore.exceptions import BotoCoreError, ClientError

    return BotoCoreError, ClientError


def ensure_bucket(store: S3Store, bucket: str) -> bool:
    """Create `bucket` unless it exists; True when it was created."""
    from botocore.exceptions import ClientError

    try:
        store.client.head_bucket(Bucket=bucket)
        return False
    except ClientError as error:
        if str(error.response.get("Error", {}).get("Code")) not in MISSING_BUCKET_CODES:
            raise storage_error(store, error, bucket) from None
    except storage_failures() as error:
        raise storage_error(store, error, bucket) from None
    try:
        store.client.create_bucket(Bucket=bucket)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            return False  # created by someone else since our look
        raise storage_error(store, error, bucket) from None
    except storage_failures() as error:
        raise storage_error(store, error, bucket) from None
    return True


def check_bucket(store: S3Store, bucket: str) -> None:
    """Fail with a clear message unless `bucket` exists and our credentials may use it."""
    try:
        store.client.head_bucket(Bucket=bucket)
    except storage_failures() as error:
        raise storage_error(store, error, bucket) from None


def upload_file(store: S3Store, path: str | Path, bucket: str, key: str) -> str:
    """Upload `path` (multipart when large) with its SHA-256 in the metadata; returns the digest."""
    from boto3.exceptions import S3UploadFailedError

    path = Path(path)
    if not path.is_file():
        raise StorageError(f"{path}: not a file, nothing to upload to s3://{bucket}/{key}")
    digest = sha256_file(path)
    try:
        store.client.upload_file(str(path), bucket, key, ExtraArgs={"Metadata": {SHA256_METADATA: digest}},
                                 Config=store.transfer_config())
    except S3UploadFailedError as error:  # raised while handling the ClientError it wraps
        cause = error.__context__
        raise storage_error(store, cause if isinstance(cause, Exception) else error, bucket, key) from None
    except storage_failures() as error:
        raise storage_error(store, error, bucket, key) from None
    return digest


def recorded_sha256(store: S3Store, bucket: str, key: str) -> str:
    """The SHA-256 an upload recorded for the object."""
    try:
        head = store.client.head_object(Bucket=bucket, Key=key)
    except storage_failures() as error:
        raise storage_error(store, error, bucket, key) from None
    digest = head.get("Metadata", {}).get(SHA256_METADATA)
    if not digest:
        raise StorageError(f"s3://{bucket}/{key} at {store.settings.where} has no {SHA256_METADATA} metadata: "
                           "it was not uploaded by art2mus, so its content cannot be verified")
    return digest


def download_file(store: S3Store, bucket: str, key: str, path: str | Path) -> str:
    """Download to `path` only if the content's SHA-256 matches the recorded one; returns the digest.

    The bytes land in a temporary sibling first: on a mismatch or a failure nothing is left at `path`.
    """
    path = Path(path)
    expected = recorded_sha256(store, bucket, key)
    with atomic_path(path) as partial:
        try:
            store.client.download_file(bucket, key, str(partial), Config=store.transfer_config())
        except storage_failures() as error:
            raise storage_error(store, error, bucket, key) from None
        actual = sha256_file(partial)
        if actual != expected:
            raise StorageError(f"s3://{bucket}/{key} at {store.settings.where}: checksum mismatch (SHA-256 "
                               f"{actual[:16]}... downloaded, {expected[:16]}... recorded); {path} was not written")
    return actual


def list_keys(store: S3Store, bucket: str, prefix: str = "") -> list[str]:
    """Every key under `prefix`."""
    keys: list[str] = []
    try:
        for page in store.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys.extend(item["Key"] for item in page.get("Contents", []))
    except storage_failures() as error:
        raise storage_error(store, error, bucket, prefix or None) from None
    return keys

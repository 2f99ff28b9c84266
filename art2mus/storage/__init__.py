"""Object storage (S3 and S3-compatible stores) for the project."""

from art2mus.storage.s3 import (
    S3Settings,
    S3Store,
    StorageError,
    Transfer,
    check_bucket,
    download_file,
    ensure_bucket,
    list_keys,
    s3_store,
    upload_file,
)

__all__ = ["S3Settings", "S3Store", "StorageError", "Transfer", "check_bucket", "download_file", "ensure_bucket",
           "list_keys", "s3_store", "upload_file"]

"""Blobs in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, ...), through boto3 (``tagvision[s3]``).

``TAGVISION_BLOB_URL=s3://bucket/prefix`` keeps blob ``abcd...`` at ``prefix/ab/cd...`` and derived blobs
(thumbnails) at ``prefix/derived/<kind>/ab/cd...``, the same layout as the folder store. An object appears
whole or not at all (a PUT is atomic), and content addressing makes concurrent writers of a key agree, so
no locking is needed. Files that a library must open from disk (fine-tuned networks for ONNX Runtime) are
copied once into a local cache, checked against their key.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from tagvision.config import S3Settings
from tagvision.errors import StorageError
from tagvision.store.blobs import Blobs, check_key, check_kind, file_sha256


class S3BlobStore(Blobs):
    def __init__(self, url: str, settings: S3Settings, cache_dir: Path) -> None:
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise StorageError("Blobs in S3 need boto3: pip install 'tagvision[s3]'.") from None
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise StorageError(f"Not an S3 URL: {url!r}; use s3://bucket/prefix.")
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/") + "/" if parts.path.strip("/") else ""
        self.url = f"s3://{self.bucket}/{self.prefix}"
        self.cache_dir = cache_dir
        config = Config(
            max_pool_connections=32,  # the server reads blobs from many threads at once
            retries={"max_attempts": 5, "mode": "standard"},
            s3={"addressing_style": "path"} if settings.endpoint_url else None,
        )
        self.client = boto3.client(  # thread-safe; one per store
            "s3",
            endpoint_url=settings.endpoint_url,
            region_name=settings.region,
            aws_access_key_id=settings.access_key_id,
            aws_secret_access_key=settings.secret_access_key,
            config=config,
        )
        self._call("reach the bucket", self.client.head_bucket, Bucket=self.bucket)

    def object_key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}{key[:2]}/{key[2:]}"

    def derived_key(self, kind: str, key: str) -> str:
        check_key(key)
        return f"{self.prefix}derived/{check_kind(kind)}/{key[:2]}/{key[2:]}"

    def put(self, data: bytes) -> str:
        key = hashlib.sha256(data).hexdigest()
        if self._size(self.object_key(key)) != len(data):
            self._call("write a blob", self.client.put_object, Bucket=self.bucket, Key=self.object_key(key), Body=data)
        return key

    def get(self, key: str) -> bytes:
        data = self._read(self.object_key(key))
        if data is None:
            raise StorageError(f"Blob {key} is missing from the blob store.")
        return data

    def exists(self, key: str) -> bool:
        return self._size(self.object_key(key)) is not None

    def delete(self, key: str) -> None:
        self._call("delete a blob", self.client.delete_object, Bucket=self.bucket, Key=self.object_key(key))

    def put_derived(self, kind: str, key: str, data: bytes) -> None:
        self._call(
            "write a derived blob",
            self.client.put_object,
            Bucket=self.bucket,
            Key=self.derived_key(kind, key),
            Body=data,
        )

    def get_derived(self, kind: str, key: str) -> bytes | None:
        return self._read(self.derived_key(kind, key))

    def delete_derived(self, kind: str, key: str) -> None:
        self._call(
            "delete a derived blob", self.client.delete_object, Bucket=self.bucket, Key=self.derived_key(kind, key)
        )

    def put_file(self, source: Path) -> str:
        """Hashed while read once, then uploaded by boto3's transfer manager (multipart for large files)."""
        key = file_sha256(source)
        if self._size(self.object_key(key)) != source.stat().st_size:
            target = self.object_key(key)
            self._call("write a blob", self.client.upload_file, Filename=str(source), Bucket=self.bucket, Key=target)
        return key

    def local_path(self, key: str) -> Path:
        """A checked copy in the local cache (``<data dir>/blob-cache``), streamed to disk on first use."""
        path = self.cache_dir / check_key(key)[:2] / key[2:]
        if path.is_file():
            return path
        if not self.exists(key):
            raise StorageError(f"Blob {key} is missing from the blob store.")
        staging = self.cache_dir / ".tmp"
        staging.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=staging, prefix=".tmp-")
        os.close(fd)
        try:
            self._call(
                "read a blob", self.client.download_file, Bucket=self.bucket, Key=self.object_key(key), Filename=tmp
            )
            if file_sha256(Path(tmp)) != key:
                raise StorageError(f"Blob {key} in {self.url} does not hold the bytes its name says.")
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    def forget_local(self, key: str) -> None:
        (self.cache_dir / check_key(key)[:2] / key[2:]).unlink(missing_ok=True)

    def _size(self, object_key: str) -> int | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.head_object(Bucket=self.bucket, Key=object_key)["ContentLength"]
        except ClientError as exc:
            if _status(exc) == 404:
                return None
            raise _storage_error("read", exc) from None
        except Exception as exc:
            raise _storage_error("read", exc) from None

    def _read(self, object_key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=object_key)["Body"].read()
        except ClientError as exc:
            if _status(exc) == 404 or exc.response.get("Error", {}).get("Code") == "NoSuchKey":
                return None
            raise _storage_error("read", exc) from None
        except Exception as exc:
            raise _storage_error("read", exc) from None

    def _call(self, what: str, method, **kwargs):
        try:
            return method(**kwargs)
        except Exception as exc:  # botocore's ClientError, BotoCoreError (connection, credentials, ...)
            raise _storage_error(what, exc, self.url) from None


def _status(exc) -> int | None:
    return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")


def _storage_error(what: str, exc: Exception, where: str = "the S3 blob store") -> StorageError:
    return StorageError(f"Could not {what} in {where}: {exc}.")

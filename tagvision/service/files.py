"""Files a client fetches with a plain GET: training and prediction images, thumbnails, export bundles.

Custom Vision hands out pre-signed blob URLs (``thumbnailUri``, ``downloadUri``) that clients
fetch without a key header; these links do the same. A link names the file and an expiry and
carries an HMAC of both made with the current Training-Key, so regenerating the training key
revokes every link given out. The API serves them under :data:`FILES_PATH`; the portal shows them.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from tagvision import images
from tagvision.errors import NotFound
from tagvision.service.context import Context
from tagvision.service.exports import Exports
from tagvision.service.keys import KeyStore

FILES_PATH = "/tagvision/files"
LIFETIME = 24 * 3600
KINDS = ("image", "thumbnail", "prediction", "prediction-thumbnail", "export", "project")
SHA256 = re.compile(r"[0-9a-f]{64}")
THUMBNAIL, THUMBNAIL_SIZE = "thumbnail256", 256


@dataclass(frozen=True)
class Download:
    """A file's bytes and media type; ``filename`` for an attachment (an export bundle)."""

    data: bytes
    media_type: str
    filename: str | None = None
    path: Path | None = None  # a large file served from disk (a project archive) instead of ``data``


class Files:
    def __init__(self, ctx: Context, keys: KeyStore, exports: Exports) -> None:
        self.ctx = ctx
        self.keys = keys
        self.exports = exports

    def url(self, request_base: str, kind: str, ident: str) -> str:
        """An absolute link, valid for 24 to 25 hours (rounded up to the hour, so repeated calls agree), under the
        configured public URL (else ``request_base``, from a Host header the server trusts)."""
        expires = (int(time.time()) // 3600 + 1) * 3600 + LIFETIME
        signature = self._sign(kind, ident, expires)
        return f"{self.base(request_base)}{FILES_PATH}/{kind}/{quote(ident)}?expires={expires}&sig={signature}"

    def base(self, request_base: str) -> str:
        """Where clients reach this server: ``TAGVISION_PUBLIC_URL`` when set, else the request's own base."""
        return (self.ctx.settings.public_url or request_base).rstrip("/")

    def valid(self, kind: str, ident: str, expires: int, signature: str) -> bool:
        if expires < time.time():
            return False
        return hmac.compare_digest(self._sign(kind, ident, expires), signature)

    def get(self, kind: str, ident: str) -> Download:
        """The file a link names: an export bundle by export id, a project archive (``project``) or an image (or
        its thumbnail) by sha256."""
        if kind == "export":
            name, data = self.exports.file(ident)
            return Download(data, "application/zip", name)
        if kind == "project":  # a project archive made by export_project, by its sha256
            if not SHA256.fullmatch(ident) or not self.ctx.blobs.exists(ident):
                raise NotFound("This project archive is no longer stored.", code="NotFound")
            return Download(b"", "application/zip", "project.tvproj", self.ctx.blobs.local_path(ident))
        if not SHA256.fullmatch(ident) or not self.ctx.blobs.exists(ident):
            raise NotFound("This image is no longer stored.", code="NotFoundImage")
        if kind.endswith("thumbnail"):
            return Download(self.thumbnail(ident), "image/jpeg")
        data = self.ctx.blobs.get(ident)
        return Download(data, images.FORMATS.get(images.sniff_format(data) or "", "application/octet-stream"))

    def thumbnail(self, sha256: str) -> bytes:
        """The image's thumbnail, made on first request and kept beside the blob (decoding a large image on every
        request would cost its full decode each time)."""
        made = self.ctx.blobs.get_derived(THUMBNAIL, sha256)
        if made is None:
            made = images.thumbnail_jpeg(self.ctx.blobs.get(sha256), THUMBNAIL_SIZE)
            self.ctx.blobs.put_derived(THUMBNAIL, sha256, made)
        return made

    def _sign(self, kind: str, ident: str, expires: int) -> str:
        message = f"{kind}\n{ident}\n{expires}".encode()
        return hmac.new(self.keys.current().training.encode(), message, hashlib.sha256).hexdigest()[:40]

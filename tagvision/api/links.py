"""Signed links to images and export files, usable without a key header.

Custom Vision hands out pre-signed blob URLs (``thumbnailUri``, ``downloadUri``) that
clients fetch with a plain GET; these links do the same. A link names the file and an
expiry and carries an HMAC of both made with the current Training-Key, so regenerating
the training key revokes every link given out.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import quote

from fastapi import Request

from tagvision.service.keys import KeyStore

FILES_PATH = "/tagvision/files"
LIFETIME = 24 * 3600
KINDS = ("image", "thumbnail", "prediction", "prediction-thumbnail", "export")


class Links:
    def __init__(self, keys: KeyStore) -> None:
        self.keys = keys

    def url(self, request: Request, kind: str, ident: str) -> str:
        """An absolute link valid for 24 to 25 hours (rounded up to the hour, so repeated calls agree)."""
        expires = (int(time.time()) // 3600 + 1) * 3600 + LIFETIME
        base = str(request.base_url).rstrip("/")
        return f"{base}{FILES_PATH}/{kind}/{quote(ident)}?expires={expires}&sig={self._sign(kind, ident, expires)}"

    def valid(self, kind: str, ident: str, expires: int, signature: str) -> bool:
        if expires < time.time():
            return False
        return hmac.compare_digest(self._sign(kind, ident, expires), signature)

    def _sign(self, kind: str, ident: str, expires: int) -> str:
        message = f"{kind}\n{ident}\n{expires}".encode()
        return hmac.new(self.keys.current().training.encode(), message, hashlib.sha256).hexdigest()[:40]

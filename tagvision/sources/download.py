"""The downloader: candidates in, validated images out, concurrently and politely.

* Concurrency is bounded (``workers`` in all, ``per_host`` per host, as browsers do) so one CDN is
  never hammered; results come back as each download finishes.
* Every URL goes through :func:`tagvision.fetch.fetch`: the SSRF guard (private addresses
  refused unless ``allow_private``, redirects re-checked), a size limit enforced before and
  while reading the body, and one deadline per download.
* 429 and 5xx answers, timeouts and refused connections are retried with exponential
  backoff, waiting at least what ``Retry-After`` asks. Waits and deadlines are kept on ``clock``.
* The bytes are sniffed and validated exactly as uploads are (:func:`tagvision.images.validate`,
  never trusting the URL's extension or the Content-Type); images whose shorter side is under
  ``min_side`` are refused (none by default: uploads accept small images, which the backbone scales
  up); each good image gets a perceptual hash for near-duplicate checks.
* Every refusal names its reason (:mod:`tagvision.sources.reasons`) with the facts behind it.
* Library candidates (a local ``path``) are read from disk, with the same checks.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from tagvision import fetch, images
from tagvision.clock import SYSTEM, Clock
from tagvision.errors import ImageError, TagvisionError
from tagvision.sources import reasons
from tagvision.sources.base import Candidate


@dataclass(frozen=True)
class Downloaded:
    """A candidate after download: ``status`` OK with ``data``/``facts``/``dhash``, or an error status with
    its ``reason`` (a code of :mod:`tagvision.sources.reasons`) and the facts in ``detail``."""

    candidate: Candidate
    status: str  # OK | ErrorSource | ErrorImageFormat | ErrorImageSize | ErrorImageDimensions | ErrorImageTooSmall
    message: str = ""
    data: bytes | None = None
    facts: images.ImageFacts | None = None
    dhash: int | None = None
    reason: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def image(self) -> tuple[bytes, int]:
        """(data, dhash) of a downloaded image; only an OK one has them."""
        if self.data is None or self.dhash is None:
            raise ValueError(f"{self.candidate.key} was not downloaded: {self.status}")
        return self.data, self.dhash


@dataclass
class Downloader:
    workers: int = 8
    per_host: int = 6  # as browsers do
    max_bytes: int = images.MAX_TRAINING_BYTES
    min_side: int = 0  # refuse images whose shorter side is under this; 0: as uploads, none
    timeout: float = 15.0
    retries: int = 3
    backoff: float = 0.5
    max_wait: float = 30.0
    clock: Clock = SYSTEM
    allow_private: bool = False  # the operator's Settings.allow_private_urls

    def __post_init__(self) -> None:
        self._hosts: dict[str, threading.Semaphore] = defaultdict(lambda: threading.Semaphore(self.per_host))
        self._hosts_lock = threading.Lock()

    def download(
        self,
        candidates: Iterable[Candidate],
        stop: threading.Event | None = None,
        window: Callable[[], int] | None = None,
    ) -> Iterator[Downloaded]:
        """Download every candidate, yielding results as they complete (not in order).

        Reads ``candidates`` lazily, keeping at most ``workers`` downloads in flight (and at
        most ``window()`` when given: how many are still useful); stops taking new ones once
        ``stop`` is set (those in flight still finish).
        """
        source = iter(candidates)
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="download") as pool:
            running: set[Future] = set()
            exhausted = False
            while True:
                while (
                    not exhausted
                    and len(running) < min(self.workers, window() if window else self.workers)
                    and not (stop and stop.is_set())
                ):
                    candidate = next(source, None)
                    if candidate is None:
                        exhausted = True
                        break
                    running.add(pool.submit(self.one, candidate))
                if not running:
                    return
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    yield future.result()

    def one(self, candidate: Candidate) -> Downloaded:
        data: bytes | None = None  # not read yet
        try:
            data = self._bytes(candidate)
            facts = images.validate(data, max_bytes=self.max_bytes)
            if min(facts.width, facts.height) < self.min_side:
                return Downloaded(
                    candidate,
                    "ErrorImageTooSmall",
                    f"{facts.width}x{facts.height} is smaller than {self.min_side} px on a side.",
                    reason=reasons.TOO_SMALL,
                    detail={"width": facts.width, "height": facts.height, "minSide": self.min_side},
                )
            return Downloaded(candidate, "OK", data=data, facts=facts, dhash=images.dhash(data))
        except TagvisionError as exc:
            status = exc.code if exc.code.startswith("ErrorImage") else "ErrorSource"
            return Downloaded(candidate, status, exc.message, reason=_reason(status, data))
        except OSError as exc:
            return Downloaded(
                candidate,
                "ErrorSource",
                f"Could not read {candidate.path}: {exc.strerror or exc}.",
                reason=reasons.PROVIDER_ERROR,
            )

    def _bytes(self, candidate: Candidate) -> bytes:
        if candidate.path is not None:
            size = candidate.path.stat().st_size
            if size > self.max_bytes:
                raise ImageError(
                    f"The file has {size} bytes; at most {self.max_bytes} are allowed.", code="ErrorImageSize"
                )
            return candidate.path.read_bytes()
        with self._host(candidate.url):
            attempt = 0
            while True:
                try:
                    return fetch.fetch(
                        candidate.url,
                        max_bytes=self.max_bytes,
                        timeout=self.timeout,
                        allow_private=self.allow_private,
                        clock=self.clock,
                    ).data
                except fetch.FetchError as exc:
                    if not exc.transient or attempt >= self.retries:
                        raise
                    delay = self.backoff * 2**attempt
                    self.clock.sleep(min(self.max_wait, max(delay, exc.retry_after or 0.0)))
                    attempt += 1

    def _host(self, url: str) -> threading.Semaphore:
        with self._hosts_lock:
            return self._hosts[urlsplit(url).netloc.lower()]


def _reason(status: str, data: bytes | None) -> str:
    """The reason code of a failed download or validation (``data``: the bytes read, None before reading)."""
    if status == "ErrorSource":
        return reasons.PROVIDER_ERROR
    if data is not None and (not data or images.sniff_format(data) is None):
        return reasons.NOT_AN_IMAGE  # empty, or no image format's signature
    if status == "ErrorImageFormat":
        return reasons.UNDECODABLE
    return reasons.TOO_LARGE  # ErrorImageSize, ErrorImageDimensions

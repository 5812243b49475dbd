"""Read a project out of a Custom Vision Training API: Azure's, or another tagvision server's.

The migration's source, read the way the official SDK reads it (``docs/custom-vision-api.md``):
projects, tags, images page by page (``take`` <= 256, ``skip``; oldest first so images added meanwhile
land at the end), iterations and their performance. Each image's original comes from its
``originalImageUri``, a signed link (on Azure a blob-storage URL with a SAS query string on another
host; on tagvision a ``/tagvision/files/...`` link) fetched without the key.

* Every request goes through :func:`tagvision.fetch.fetch`: the endpoint and the image links are
  user-named destinations, so non-public addresses are refused unless the operator allows them,
  and the Training-Key is sent only to the endpoint's own origin, never to an image link.
* The Training API is paced (``calls_per_second``; Azure's S0 tier allows about 10) and a 429 waits
  what ``Retry-After`` says (else an exponential backoff); 5xx, time-outs and refused connections
  are retried the same way. All waits are on an injected :class:`~tagvision.clock.Clock`.
* Versions: v3.4-preview first, then v3.3, then v3.2 (a resource or a proxy that does not serve a
  version answers 404 on ``/projects``). v3.3 on list every image with ``GET /images``; v3.2 has
  only ``/images/tagged`` and ``/images/untagged``. A page may hold fewer images than asked, so
  paging stops at an empty page, not a short one.

Nothing here writes to the store: the service (``tagvision.service.migrations``) does.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx

from tagvision import fetch, images
from tagvision.clock import SYSTEM, Clock
from tagvision.errors import InvalidInput, NotFound, TagvisionError

VERSIONS = ("v3.4-preview", "v3.3", "v3.2")
PAGE = 256  # the API's largest take
API_MAX_BYTES = 64 * 1024 * 1024  # one JSON answer (a page of 256 images is about 0.5 MB)
MAX_WAIT = 600.0  # the longest Retry-After honoured as asked
SHA256 = re.compile(r"[0-9a-f]{64}")


class SourceError(TagvisionError):
    """The source API could not be read (refused the key, answered an error, could not be reached)."""

    code = "ErrorSource"
    http_status = 502


@dataclass(frozen=True)
class SourceProject:
    id: str
    name: str
    description: str
    classification_type: str  # Multiclass | Multilabel (None on some detection projects: Multilabel)
    domain_id: str


@dataclass(frozen=True)
class SourceTag:
    id: str
    name: str
    description: str
    type: str  # Regular | Negative | GeneralProduct
    image_count: int = 0


@dataclass(frozen=True)
class SourceRegion:
    region_id: str
    tag_id: str
    left: float
    top: float
    width: float
    height: float


@dataclass(frozen=True)
class SourceImage:
    id: str
    created: str  # ISO-8601, as the source wrote it
    width: int
    height: int
    original_uri: str
    tags: tuple[str, ...] = ()  # tag ids
    metadata: dict[str, str] = field(default_factory=dict)
    regions: tuple[SourceRegion, ...] = ()
    sha256: str | None = None  # tagvision sources say it (an extension field); Azure does not


@dataclass(frozen=True)
class SourceIteration:
    id: str
    name: str
    status: str
    publish_name: str
    created: str
    trained_at: str | None


@dataclass(frozen=True)
class SourceTagPerformance:
    tag_id: str
    name: str
    precision: float
    recall: float
    average_precision: float | None


@dataclass(frozen=True)
class SourcePerformance:
    precision: float
    recall: float
    average_precision: float | None
    per_tag: tuple[SourceTagPerformance, ...]


def normalise_endpoint(endpoint: str) -> str:
    """``https://host[/prefix]`` without a trailing slash or a pasted ``/customvision/...`` tail."""
    value = endpoint.strip()
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidInput(
            f"The source endpoint {endpoint!r} is not an http(s) URL (e.g. https://<resource>.cognitiveservices"
            ".azure.com).",
            code="BadRequestSourceUrl",
        )
    path = re.split(r"/customvision(/|$)", parts.path, maxsplit=1, flags=re.IGNORECASE)[0].rstrip("/")
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{path}"


class TrainingAPI:
    """A Custom Vision Training API, read with one Training-Key."""

    def __init__(
        self,
        endpoint: str,
        training_key: str,
        *,
        allow_private: bool = False,
        clock: Clock = SYSTEM,
        calls_per_second: float = 10.0,
        retries: int = 8,
        timeout: float = 60.0,
        backoff: float = 1.0,
    ) -> None:
        self.endpoint = normalise_endpoint(endpoint)
        self.allow_private = allow_private
        self.clock = clock
        self.retries, self.timeout, self.backoff = retries, timeout, backoff
        self._key = training_key
        self._interval = 1.0 / calls_per_second if calls_per_second > 0 else 0.0
        self._last_call: float | None = None
        self._lock = threading.Lock()
        self._version: str | None = None
        self.throttled = 0  # 429 answers met (API and downloads)
        self.waited = 0.0  # seconds spent waiting on them and on retries
        # One client for every request: making one per request (an SSL context each) cost 10x the throughput.
        self._client = httpx.Client(follow_redirects=False, timeout=timeout, trust_env=False)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> TrainingAPI:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ what the source holds

    @property
    def version(self) -> str:
        """The newest Training API version the source serves (asked once)."""
        if self._version is None:
            for version in VERSIONS:
                try:
                    self._get("/projects", version=version)
                except NotFound:
                    continue
                self._version = version
                break
            else:
                raise SourceError(
                    f"{self.endpoint} serves none of the Training API versions {', '.join(VERSIONS)}; is it a "
                    "Custom Vision training endpoint?",
                    code="ErrorSourceNotCustomVision",
                )
        return self._version

    def projects(self) -> list[SourceProject]:
        return [_project(p) for p in self._get("/projects")]

    def project(self, ref: str) -> SourceProject:
        """A project by id, or by name (Custom Vision names are unique per resource)."""
        found = [p for p in self.projects() if ref in (p.id, p.name)]
        if not found:
            raise NotFound(f"The source has no project named or with id {ref!r}.", code="NotFoundProject")
        return sorted(found, key=lambda p: p.id != ref)[0]

    def tags(self, project_id: str) -> list[SourceTag]:
        return [
            SourceTag(
                t["id"],
                t["name"],
                t.get("description") or "",
                t.get("type") or "Regular",
                int(t.get("imageCount") or 0),
            )
            for t in self._get(f"/projects/{project_id}/tags")
        ]

    def image_count(self, project_id: str) -> int:
        if self.version == "v3.2":
            return sum(int(self._get(f"/projects/{project_id}/images/{kind}/count")) for kind in ("tagged", "untagged"))
        return int(self._get(f"/projects/{project_id}/images/count"))

    def images(self, project_id: str) -> Iterator[SourceImage]:
        """Every image of the project, tagged and untagged, oldest first, each once."""
        listings: list[tuple[str, dict[str, str]]]
        if self.version == "v3.2":
            listings = [(f"/projects/{project_id}/images/{kind}", {}) for kind in ("tagged", "untagged")]
        else:
            listings = [(f"/projects/{project_id}/images", {"taggingStatus": "All"})]
        seen: set[str] = set()
        for path, params in listings:
            skip = 0
            while True:
                page = self._get(path, {**params, "orderBy": "Oldest", "take": PAGE, "skip": skip})
                if not page:
                    break
                skip += len(page)
                for item in page:
                    if item["id"] not in seen:
                        seen.add(item["id"])
                        yield _image(item)

    def iterations(self, project_id: str) -> list[SourceIteration]:
        return [
            SourceIteration(
                i["id"],
                i.get("name") or "",
                i.get("status") or "",
                i.get("publishName") or "",
                i.get("created") or "",
                i.get("trainedAt"),
            )
            for i in self._get(f"/projects/{project_id}/iterations")
        ]

    def reference_iteration(self, project_id: str) -> SourceIteration | None:
        """The iteration to compare with: the published one (newest trained, if several), else the newest
        completed one; None when nothing was trained."""
        done = [i for i in self.iterations(project_id) if i.status == "Completed"]
        newest_first = sorted(done, key=lambda i: i.trained_at or i.created, reverse=True)
        published = [i for i in newest_first if i.publish_name]
        chosen = published or newest_first
        return chosen[0] if chosen else None

    def performance(self, project_id: str, iteration_id: str, threshold: float) -> SourcePerformance:
        body = self._get(f"/projects/{project_id}/iterations/{iteration_id}/performance", {"threshold": threshold})
        return SourcePerformance(
            float(body.get("precision") or 0.0),
            float(body.get("recall") or 0.0),
            _float(body.get("averagePrecision")),
            tuple(
                SourceTagPerformance(
                    t["id"],
                    t.get("name") or "",
                    float(t.get("precision") or 0.0),
                    float(t.get("recall") or 0.0),
                    _float(t.get("averagePrecision")),
                )
                for t in body.get("perTagPerformance") or []
            ),
        )

    # ------------------------------------------------------------------ originals

    def download(self, uri: str) -> bytes:
        """One original, through its signed link (no key sent), retried on 429/5xx as the API is."""
        if not uri:
            raise SourceError("The source gave no originalImageUri for this image.", code="ErrorSource")
        return self._with_retries(
            lambda: (
                fetch.fetch(
                    uri,
                    max_bytes=images.MAX_TRAINING_BYTES,
                    timeout=self.timeout,
                    allow_private=self.allow_private,
                    clock=self.clock,
                    client=self._client,
                ).data
            ),
            what="image",
        )

    def download_all(
        self, items: Iterable[SourceImage], workers: int = 8, then: Callable[[bytes], object] | None = None
    ) -> Iterator[tuple[SourceImage, bytes | TagvisionError]]:
        """Download originals ``workers`` at a time, reading ``items`` lazily; yields (image, bytes or the
        error) as each finishes, not in order. ``then(data)`` runs on the downloading thread (the caller's
        slow step for each image, such as writing it to disk, done ``workers`` at a time too)."""

        def one(item: SourceImage) -> tuple[SourceImage, bytes | TagvisionError]:
            try:
                data = self.download(item.original_uri)
                if then is not None:
                    then(data)
                return item, data
            except TagvisionError as exc:
                return item, exc

        source = iter(items)
        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="migrate-download") as pool:
            running: set[Future] = set()
            exhausted = False
            while True:
                while not exhausted and len(running) < max(1, workers):
                    item = next(source, None)
                    if item is None:
                        exhausted = True
                        break
                    running.add(pool.submit(one, item))
                if not running:
                    return
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    yield future.result()

    # ------------------------------------------------------------------ HTTP

    def _get(self, path: str, params: dict[str, Any] | None = None, *, version: str | None = None) -> Any:
        url = f"{self.endpoint}/customvision/{version or self.version}/training{path}"
        if params:
            url += "?" + urlencode({k: str(v).lower() if isinstance(v, bool) else v for k, v in params.items()})
        headers = {"Training-Key": self._key, "Accept": "application/json"}

        def call() -> bytes:
            self._pace()
            return fetch.fetch(
                url,
                max_bytes=API_MAX_BYTES,
                timeout=self.timeout,
                allow_private=self.allow_private,
                clock=self.clock,
                headers=headers,
                client=self._client,
            ).data

        data = self._with_retries(call, what="api")
        try:
            return json.loads(data)
        except ValueError:
            raise SourceError(f"{url.split('?')[0]} did not answer JSON.", code="ErrorSource") from None

    def _pace(self) -> None:
        with self._lock:
            now = self.clock.monotonic()
            if self._last_call is not None and self._interval:
                gap = self._interval - (now - self._last_call)
                if gap > 0:
                    self.clock.sleep(gap)
                    now = self.clock.monotonic()
            self._last_call = now

    def _with_retries(self, call, *, what: str):
        attempt = 0
        while True:
            try:
                return call()
            except fetch.FetchError as exc:
                if not exc.transient or attempt >= self.retries:
                    raise self._failure(exc, what) from None
                delay = exc.retry_after if exc.retry_after is not None else self.backoff * 2**attempt
                with self._lock:
                    self.throttled += exc.status == 429
                    self.waited += min(delay, MAX_WAIT)
                self.clock.sleep(min(delay, MAX_WAIT))
                attempt += 1
            except InvalidInput as exc:  # refused here: a bad or non-public URL
                if what == "api":
                    raise InvalidInput(f"The source endpoint: {exc.message}", code="BadRequestSourceUrl") from None
                raise

    def _failure(self, exc: fetch.FetchError, what: str) -> TagvisionError:
        """A source's error answer as our error: its own code and message where it sent them."""
        code, message = _error_body(exc.detail)
        if what == "image":
            return SourceError(exc.message.replace("The image URL", "The image's link"), code="ErrorSource")
        if exc.status in (401, 403):
            return SourceError(
                f"{self.endpoint} refused the Training-Key ({message or exc.status}).", code="ErrorSourceUnauthorized"
            )
        if exc.status == 404:
            return NotFound(message or "The source has no such resource.", code=code or "NotFound")
        if exc.status is None:
            return SourceError(f"{self.endpoint} could not be reached: {exc.message}", code="ErrorSourceUnreachable")
        return SourceError(
            f"{self.endpoint} answered HTTP {exc.status}" + (f": {code}: {message}" if code or message else "."),
            code="ErrorSource",
        )


def _error_body(text: str) -> tuple[str | None, str | None]:
    try:
        body = json.loads(text)
    except ValueError:
        return None, None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):  # Azure's gateway shape
        body = body["error"]
    if not isinstance(body, dict):
        return None, None
    return (str(body["code"]) if body.get("code") else None), (str(body["message"]) if body.get("message") else None)


def _project(p: dict[str, Any]) -> SourceProject:
    settings = p.get("settings") or {}
    return SourceProject(
        p["id"],
        p["name"],
        p.get("description") or "",
        settings.get("classificationType") or "Multilabel",
        settings.get("domainId") or "",
    )


def _image(item: dict[str, Any]) -> SourceImage:
    sha = item.get("sha256")
    return SourceImage(
        item["id"],
        item.get("created") or "",
        int(item.get("width") or 0),
        int(item.get("height") or 0),
        item.get("originalImageUri") or item.get("resizedImageUri") or "",
        tuple(dict.fromkeys(t["tagId"] for t in item.get("tags") or [])),
        {str(k): str(v) for k, v in (item.get("metadata") or {}).items()},
        tuple(
            SourceRegion(
                r.get("regionId") or "",
                r["tagId"],
                float(r["left"]),
                float(r["top"]),
                float(r["width"]),
                float(r["height"]),
            )
            for r in item.get("regions") or []
        ),
        sha if isinstance(sha, str) and SHA256.fullmatch(sha) else None,
    )


def _float(value: Any) -> float | None:
    return None if value is None else float(value)

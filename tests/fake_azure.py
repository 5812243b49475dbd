"""Loopback stand-ins for the sources a migration reads: Azure Custom Vision where it differs from tagvision,
and a holding proxy in front of a real tagvision server.

:class:`FakeAzure` speaks the Custom Vision Training API (``docs/custom-vision-api.md``) from memory, with
Azure's ways where they differ from ours:

* originals are served by a second server, :class:`BlobHost` (another loopback address where the system
  has one, else another port: another origin either way), as blob-storage URLs with SAS-style query
  strings (``sv``, ``se``, ``sr``, ``sp``, ``sig``); a wrong signature is 403 ``AuthenticationFailed``
  and a blob may answer 503 ``ServerBusy`` with ``Retry-After`` once, as storage does under load;
* bursts of Training API calls get 429 with ``Retry-After`` and Azure's gateway error body: more than
  ``burst`` calls within one second of the fake's clock (the test's :class:`ManualClock` in process,
  so the waits are exact and the same on any machine);
* ``versions`` says which Training API versions it serves (a resource or region without the preview
  answers 404 on ``v3.4-preview``; v3.2 has no ``GET /images``, only ``/images/tagged`` and
  ``/images/untagged``); ``max_page`` answers pages shorter than ``take`` asked (the client must
  page on until an empty page); ``take`` above 256 is refused as the service refuses it;
* object-detection projects, with regions on their images.

:class:`HoldingProxy` forwards to a real tagvision server and, once ``hold_after`` originals have been
downloaded through it, holds every further download until released: a migration stalls at a known point
for a test to ``kill -9`` it there.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, urlsplit

import httpx

from tagvision.clock import SYSTEM, Clock

KEY = "azure-training-key-0123456789abcdef"


def _loopback_host() -> str:
    """127.0.0.2 where the system routes all of 127/8 to loopback (Linux does), else 127.0.0.1."""
    try:
        with socket.socket() as probe:
            probe.bind(("127.0.0.2", 0))
        return "127.0.0.2"
    except OSError:
        return "127.0.0.1"


class _Server:
    """A threaded HTTP server on a loopback address; subclasses answer ``handle(method, path, query, headers)``."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                parts = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
                headers = {k.lower(): v for k, v in self.headers.items()}
                length = int(headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                status, out_headers, payload = outer.handle(self.command, parts.path, query, headers, body, self)
                if status == 0:  # the handler answered (or dropped) the connection itself
                    return
                self.send_response(status)
                for name, value in out_headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_DELETE = do_PATCH = _serve  # noqa: N815

            def log_message(self, *_args) -> None:
                return None

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.host, self.port = host, self.httpd.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def handle(self, method, path, query, headers, body, handler) -> tuple[int, dict[str, str], bytes]:
        raise NotImplementedError

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _json(body: object, status: int = 200, headers: dict[str, str] | None = None):
    return status, {"Content-Type": "application/json; charset=utf-8", **(headers or {})}, json.dumps(body).encode()


# --------------------------------------------------------------------------- Azure's blob storage


class BlobHost(_Server):
    """Blob storage: ``/<container>/<blob>?sv=..&se=..&sr=b&sp=r&sig=..``; answers the bytes when signed."""

    def __init__(self, secret: bytes = b"storage-account-key") -> None:
        super().__init__(_loopback_host())
        self.secret = secret
        self.blobs: dict[str, bytes] = {}
        self.busy_once: set[str] = set()  # blob names answered 503 ServerBusy on their first request
        self.requests: list[tuple[str, dict[str, str]]] = []  # (path, headers) of every request
        self._lock = threading.Lock()

    def put(self, name: str, data: bytes) -> str:
        """Store a blob; returns its SAS URL."""
        self.blobs[name] = data
        expiry = "2099-01-01T00:00:00Z"
        signature = self._sign(name, expiry)
        return f"{self.url}/training-images/{quote(name)}?sv=2020-08-04&se={quote(expiry)}&sr=b&sp=r&sig={signature}"

    def _sign(self, name: str, expiry: str) -> str:
        return hmac.new(self.secret, f"{name}\n{expiry}".encode(), hashlib.sha256).hexdigest()

    def handle(self, method, path, query, headers, body, handler):
        with self._lock:
            self.requests.append((path, headers))
        name = path.removeprefix("/training-images/")
        if name not in self.blobs:
            return 404, {"Content-Type": "application/xml"}, b"<Error><Code>BlobNotFound</Code></Error>"
        if not hmac.compare_digest(self._sign(name, query.get("se", "")), query.get("sig", "")):
            return 403, {"Content-Type": "application/xml"}, b"<Error><Code>AuthenticationFailed</Code></Error>"
        with self._lock:
            if name in self.busy_once:
                self.busy_once.discard(name)
                return 503, {"Retry-After": "1", "Content-Type": "application/xml"}, b"<Error><Code>ServerBusy</Code>"
        return 200, {"Content-Type": "image/jpeg", "x-ms-blob-type": "BlockBlob"}, self.blobs[name]


# --------------------------------------------------------------------------- the Training API


@dataclass
class FakeImage:
    id: str
    created: str
    width: int
    height: int
    data: bytes
    uri: str = ""
    tags: list[str] = field(default_factory=list)  # tag ids
    metadata: dict[str, str] = field(default_factory=dict)
    regions: list[dict] = field(default_factory=list)  # {regionId, tagId, left, top, width, height}


@dataclass
class FakeProject:
    id: str
    name: str
    classification_type: str | None
    domain_id: str
    description: str = ""
    tags: list[dict] = field(default_factory=list)  # {id, name, description, type}
    images: list[FakeImage] = field(default_factory=list)
    iterations: list[dict] = field(default_factory=list)
    performance: dict = field(default_factory=dict)  # iteration id -> IterationPerformance JSON


class FakeAzure(_Server):
    """The Training API of one Custom Vision resource, from memory."""

    def __init__(
        self,
        *,
        versions: tuple[str, ...] = ("v3.3",),
        max_page: int | None = None,
        burst: int | None = None,
        retry_after: int = 2,
        clock: Clock = SYSTEM,
        key: str = KEY,
    ) -> None:
        super().__init__()
        self.blobs = BlobHost()
        self.versions, self.max_page, self.burst, self.retry_after = versions, max_page, burst, retry_after
        self.clock, self.key = clock, key
        self.projects: list[FakeProject] = []
        self.calls: list[tuple[str, str, dict[str, str]]] = []  # (version, path after it, query)
        self.throttled = 0
        self._window: list[float] = []
        self._lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return self.url

    # ------------------------------------------------------------------ seeding

    def add_project(self, name: str, classification_type: str | None, domain_id: str, description: str = ""):
        project = FakeProject(str(uuid.uuid4()), name, classification_type, domain_id, description)
        self.projects.append(project)
        return project

    def add_tag(self, project: FakeProject, name: str, type_: str = "Regular", description: str = "") -> str:
        tag_id = str(uuid.uuid4())
        project.tags.append({"id": tag_id, "name": name, "description": description, "type": type_})
        return tag_id

    def add_image(
        self,
        project: FakeProject,
        data: bytes,
        size: tuple[int, int],
        tags: list[str] = (),
        metadata: dict[str, str] | None = None,
        regions: list[dict] | None = None,
    ) -> FakeImage:
        image_id = str(uuid.uuid4())
        when = datetime(2024, 3, 1, tzinfo=UTC) + timedelta(minutes=len(project.images))
        image = FakeImage(
            image_id,
            when.strftime("%Y-%m-%dT%H:%M:%S.1234567Z"),  # Azure writes seven fractional digits
            size[0],
            size[1],
            data,
            tags=list(tags),
            metadata=dict(metadata or {}),
            regions=[{"regionId": str(uuid.uuid4()), **r} for r in regions or []],
        )
        image.uri = self.blobs.put(f"{project.id}/{image_id}", data)
        project.images.append(image)
        return image

    # ------------------------------------------------------------------ serving

    def handle(self, method, path, query, headers, body, handler):
        parts = path.split("/")
        if len(parts) < 4 or parts[1] != "customvision" or parts[3] != "training":
            return _json({"error": {"code": "404", "message": "Resource not found"}}, 404)
        version, rest = parts[2], "/" + "/".join(parts[4:])
        with self._lock:
            self.calls.append((version, rest, dict(query)))
        if headers.get("training-key") != self.key:
            return _json({"error": {"code": "401", "message": "Access denied due to invalid subscription key."}}, 401)
        if self._throttle():
            message = f"Rate limit is exceeded. Try again in {self.retry_after} seconds."
            return _json({"error": {"code": "429", "message": message}}, 429, {"Retry-After": str(self.retry_after)})
        if version not in self.versions:
            return _json({"error": {"code": "404", "message": "Resource not found"}}, 404)
        if method != "GET":
            return _json({"code": "BadRequest", "message": "This fake only reads."}, 400)
        return self._route(version, rest, query)

    def _throttle(self) -> bool:
        if self.burst is None:
            return False
        with self._lock:
            now = self.clock.monotonic()
            self._window = [t for t in self._window if now - t < 1.0]
            if len(self._window) >= self.burst:
                self.throttled += 1
                return True
            self._window.append(now)
            return False

    def _route(self, version: str, rest: str, query: dict[str, str]):
        segments = [s for s in rest.split("/") if s]
        if segments == ["projects"]:
            return _json([self._project_json(p) for p in self.projects])
        project = next((p for p in self.projects if len(segments) > 1 and p.id == segments[1]), None)
        if project is None:
            return _json({"code": "NotFoundProject", "message": "Project not found"}, 404)
        tail = segments[2:]
        images = self._images_route(version, project, tail, query)
        if images is not None:
            return images
        match tail:
            case []:
                return _json(self._project_json(project))
            case ["tags"]:
                return _json([{**t, "imageCount": self._count(project, t["id"])} for t in project.tags])
            case ["iterations"]:
                return _json(project.iterations)
            case ["iterations", iteration_id, "performance"]:
                if iteration_id not in project.performance:
                    return _json({"code": "NotFoundIteration", "message": "Invalid iteration"}, 404)
                return _json(project.performance[iteration_id])
        return _json({"error": {"code": "404", "message": "Resource not found"}}, 404)

    def _images_route(self, version: str, project: FakeProject, tail: list[str], query: dict[str, str]):
        listings = {
            ("images",): lambda i: True,
            ("images", "tagged"): lambda i: bool(i.tags or i.regions),
            ("images", "untagged"): lambda i: not (i.tags or i.regions),
        }
        if version == "v3.2":
            listings.pop(("images",))
        key = tuple(tail[:-1]) if tail and tail[-1] == "count" else tuple(tail)
        if key not in listings:
            return None
        status = query.get("taggingStatus", "All")
        chosen = [
            i
            for i in project.images
            if listings[key](i) and (status == "All" or (status == "Tagged") == bool(i.tags or i.regions))
        ]
        if tail[-1] == "count":
            return _json(len(chosen))
        take, skip = int(query.get("take", 50)), int(query.get("skip", 0))
        if not 0 <= take <= 256:
            return _json({"code": "BadRequestInvalid", "message": "take must be between 0 and 256"}, 400)
        chosen.sort(key=lambda i: i.created, reverse=query.get("orderBy", "Newest") != "Oldest")
        page = chosen[skip : skip + min(take, self.max_page or take)]
        return _json([self._image_json(project, i) for i in page])

    def _count(self, project: FakeProject, tag_id: str) -> int:
        return sum(tag_id in i.tags for i in project.images)

    def _project_json(self, p: FakeProject) -> dict:
        return {
            "id": p.id,
            "name": p.name,
            "description": p.description,
            "settings": {"domainId": p.domain_id, "classificationType": p.classification_type, "useNegativeSet": True},
            "created": "2024-01-01T00:00:00Z",
            "lastModified": "2024-01-02T00:00:00Z",
            "thumbnailUri": None,
            "drModeEnabled": False,
            "status": "Succeeded",
        }

    def _image_json(self, project: FakeProject, i: FakeImage) -> dict:
        names = {t["id"]: t["name"] for t in project.tags}
        return {
            "id": i.id,
            "created": i.created,
            "width": i.width,
            "height": i.height,
            "resizedImageUri": i.uri.replace("training-images", "resized"),
            "thumbnailUri": i.uri.replace("training-images", "thumbnails"),
            "originalImageUri": i.uri,
            "tags": [{"tagId": t, "tagName": names[t], "created": i.created} for t in i.tags] or None,
            "regions": [{**r, "tagName": names[r["tagId"]], "created": i.created} for r in i.regions] or None,
            "metadata": i.metadata or None,
        }

    def close(self) -> None:
        self.blobs.close()
        super().close()


# --------------------------------------------------------------------------- a proxy that holds downloads


class HoldingProxy(_Server):
    """Forwards every request to ``upstream`` (a tagvision server), Host header kept so the links the server
    builds point back here. Once ``hold_after`` originals (``/tagvision/files/image/...``) have been served,
    each further download waits until :meth:`release`; ``holding`` is set as the first one waits. ``latency``
    delays every original (the benchmark's stand-in for a blob store across the internet)."""

    def __init__(self, upstream: str, hold_after: int | None = None, latency: float = 0.0) -> None:
        super().__init__()
        self.upstream = upstream
        self.hold_after = hold_after
        self.latency = latency  # seconds each original takes before it is answered (a far-away blob store)
        self.downloads = 0
        self.holding = threading.Event()
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._client = httpx.Client(timeout=120, trust_env=False)

    def release(self) -> None:
        self._released.set()

    def handle(self, method, path, query, headers, body, handler):
        raw = handler.path
        if path.startswith("/tagvision/files/image/"):
            with self._lock:
                self.downloads += 1
                hold = self.hold_after is not None and self.downloads > self.hold_after
            if hold:
                self.holding.set()
                self._released.wait(600)
                handler.close_connection = True
                return 0, {}, b""  # the client was killed meanwhile: drop the connection
            if self.latency:
                time.sleep(self.latency)
        forwarded = {k: v for k, v in headers.items() if k not in ("content-length", "connection", "accept-encoding")}
        response = self._client.request(method, self.upstream + raw, headers=forwarded, content=body)
        keep = {
            k: v
            for k, v in response.headers.items()
            if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding")
        }
        return response.status_code, keep, response.content

    def close(self) -> None:
        self.release()
        super().close()
        self._client.close()

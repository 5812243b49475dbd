"""Download an image from a URL a user gave, without letting the URL reach inside the network.

A user-supplied URL is a server-side request forgery risk: it could point the
server at itself (``http://127.0.0.1:…``), at the local network, or at the
cloud metadata service (``http://169.254.169.254/``) and hand back what it finds.
:func:`fetch` therefore:

* accepts only ``http``/``https`` URLs with a host, no ``user:pass@`` part and at
  most :data:`MAX_URL_LENGTH` characters;
* resolves the host once and refuses it if ANY address is not public (loopback,
  private, link-local, multicast, reserved, unspecified, shared 100.64/10,
  site-local, cloud metadata, or IPv4 of those inside IPv6). Literal IPs in any
  spelling (``2130706433``, ``0x7f.1``, ``[::ffff:127.0.0.1]``) are normalised first;
* connects to exactly the address it checked (the request goes to the IP literal
  with the original ``Host`` header and, for https, the original name for SNI and
  certificate verification), so DNS rebinding between check and connect is moot;
* follows at most ``max_redirects`` redirects itself, checking every hop again;
* streams the body and stops at ``max_bytes``, under one deadline for the whole
  download (a slow drip cannot hold a worker for long), kept on an injectable
  :class:`~tagvision.clock.Clock`.

The operator can allow non-public addresses (an intranet image server, tests) by
setting ``TAGVISION_ALLOW_PRIVATE_URLS=1``; callers pass that setting as ``allow_private``.

Only the bytes are returned; the Content-Type and the URL's extension are not
trusted, the caller validates the data with :func:`tagvision.images.validate`.
A caller-supplied ``httpx.Client`` lends only its transport: its default headers,
cookies and auth are never sent to the URL; headers the caller names (an API key, when
reading an API the user named) go only to the URL's own origin. Each request asks for
``Connection: close``, so no pooled connection made for one host name carries a
request for another.
"""

from __future__ import annotations

import email.utils
import ipaddress
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import BinaryIO

import httpx

from tagvision.clock import SYSTEM, Clock
from tagvision.errors import ImageError, InvalidInput

MAX_URL_LENGTH = 2048

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_CODE = "BadRequestImageUrl"
_METADATA = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")})
_SHARED = ipaddress.IPv4Network("100.64.0.0/10")
# Legacy IPv4 spellings that inet_aton accepts: 2130706433, 0x7f.1, 0177.0.0.1, 127.1.
_LEGACY_IPV4 = re.compile(r"[0-9][0-9a-fx.]*", re.IGNORECASE)


@dataclass(frozen=True)
class Fetched:
    """A downloaded body; ``data`` is unvalidated."""

    url: str  # the URL asked for
    final_url: str  # after redirects
    data: bytes
    content_type: str  # from the response header, may be ""


@dataclass(frozen=True)
class _Hop:
    url: httpx.URL
    addresses: tuple[IPAddress, ...]


@dataclass(frozen=True)
class _Deadline:
    """The one deadline of a whole download (every hop, every chunk), on ``clock``."""

    clock: Clock
    timeout: float
    at: float

    def left(self) -> float:
        """Seconds left; raises the time-out error once none are."""
        remaining = self.at - self.clock.monotonic()
        if remaining <= 0:
            raise _timed_out(self.timeout)
        return remaining


def fetch(
    url: str,
    *,
    max_bytes: int,
    timeout: float = 15.0,
    max_redirects: int = 5,
    allow_private: bool = False,
    client: httpx.Client | None = None,
    user_agent: str = "tagvision/0.1 (+https://github.com/tagvision)",
    clock: Clock = SYSTEM,
    headers: Mapping[str, str] | None = None,
    sink: BinaryIO | None = None,
) -> Fetched:
    """Download ``url`` within ``timeout`` seconds in all; raise :class:`InvalidInput` or :class:`ImageError`.

    ``allow_private``: the operator's ``Settings.allow_private_urls`` (non-public addresses allowed).
    ``headers``: extra request headers (an API key, ``Accept``), sent only to the origin of ``url``: a
    redirect to another scheme, host or port drops them. ``sink``: the body is written there as it
    arrives (``data`` is then empty), for files too large to hold in memory.
    """
    deadline = _Deadline(clock, timeout, clock.monotonic() + timeout)
    session = client if client is not None else httpx.Client(follow_redirects=False, timeout=timeout, trust_env=False)
    base = {"User-Agent": user_agent, "Accept": "image/*", "Accept-Encoding": "identity", "Connection": "close"}
    extra = {k: v for k, v in (headers or {}).items() if k.lower() not in ("host", "connection")}
    try:
        current = url
        origin = _origin(url)
        for _ in range(max_redirects + 1):
            hop = _check(current, allow_private)
            sent = {**base, **extra} if _origin(current) == origin else base
            response = _open(session, hop, sent, deadline)
            try:
                if response.has_redirect_location:
                    current = _redirect_target(hop, response.headers["Location"])
                    continue
                if response.status_code >= 300:
                    raise FetchError(
                        f"The image URL answered HTTP {response.status_code} {response.reason_phrase}.",
                        status=response.status_code,
                        transient=response.status_code == 429 or response.status_code >= 500,
                        retry_after=retry_after(response.headers.get("Retry-After"), clock),
                        detail=_error_detail(response, deadline),
                    )
                data = _read(response, max_bytes, deadline, sink)
                return Fetched(url, str(hop.url), data, response.headers.get("Content-Type", ""))
            finally:
                response.close()
        raise _bad(f"The image URL redirected more than {max_redirects} times (too many redirects).")
    except httpx.TimeoutException:
        raise _timed_out(timeout) from None
    except httpx.RequestError as exc:  # transport, protocol or content-decoding failures
        raise FetchError(f"The image download failed: {str(exc) or type(exc).__name__}.", transient=True) from None
    finally:
        if client is None:
            session.close()


def _is_forbidden(ip: IPAddress) -> str | None:
    """The class of a non-public address ("loopback", "private", ...), or None if it is public.

    The one place that decides what is public; tests monkeypatch it to let 127.0.0.1 pass as public.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is not None:
            reason = _is_forbidden(embedded)
            return f"{reason} (IPv4 inside IPv6)" if reason else None
    checks = (
        (ip in _METADATA, "cloud metadata"),
        (ip.is_loopback, "loopback"),
        (ip.is_unspecified, "unspecified"),
        (ip.is_link_local, "link-local"),
        (ip.is_multicast, "multicast"),
        (ip.version == 4 and ip in _SHARED, "shared (carrier-grade NAT)"),
        (ip.version == 6 and ip.is_site_local, "site-local"),
        (ip.is_private, "private"),
        (ip.is_reserved, "reserved"),
        (not ip.is_global, "non-public"),
    )
    return next((name for hit, name in checks if hit), None)


def _check(url: str, allow_private: bool) -> _Hop:
    """Apply every URL rule to one hop and resolve its host once."""
    if len(url) > MAX_URL_LENGTH:
        raise _bad(f"The image URL is {len(url)} characters long; at most {MAX_URL_LENGTH} are allowed.")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise _bad(f"The image URL is not a valid URL ({exc}).") from None
    if parsed.scheme not in ("http", "https"):
        raise _bad(f"The image URL's scheme {parsed.scheme!r} is not allowed; use http:// or https://.")
    if not parsed.raw_host:
        raise _bad("The image URL has no host name.")
    if parsed.userinfo:
        raise _bad("The image URL must not contain a user name or password.")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise _bad(f"The image URL's port {parsed.port} is out of range.")
    host = parsed.raw_host.decode("ascii")
    addresses = _resolve(host, parsed.port or (443 if parsed.scheme == "https" else 80))
    for ip in addresses:
        reason = None if allow_private else _is_forbidden(ip)
        if reason:
            raise _bad(
                f"The image URL's host {host} is {ip}, a {reason} address; downloads from non-public addresses "
                "are refused (the operator can set TAGVISION_ALLOW_PRIVATE_URLS=1 to allow them)."
            )
    return _Hop(parsed, addresses)


def _resolve(host: str, port: int) -> tuple[IPAddress, ...]:
    """Every address of ``host``, in the resolver's order; literal IPs are normalised without DNS."""
    try:
        return (ipaddress.ip_address(host),)
    except ValueError:
        pass
    if _LEGACY_IPV4.fullmatch(host):
        try:
            return (ipaddress.IPv4Address(socket.inet_aton(host)),)
        except OSError:
            pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise _bad(f"Could not resolve the image URL's host {host} ({exc}).") from None
    found = [ipaddress.ip_address(info[4][0]) for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)]
    if not found:
        raise _bad(f"Could not resolve the image URL's host {host} (no IP addresses).")
    return tuple(dict.fromkeys(found))


def _open(client: httpx.Client, hop: _Hop, headers: dict[str, str], deadline: _Deadline) -> httpx.Response:
    """Send the GET to the checked addresses in turn (never resolving again); return the streamed response."""
    host = hop.url.raw_host.decode("ascii")
    failure: httpx.ConnectError | None = None
    for ip in hop.addresses:
        remaining = deadline.left()
        request = httpx.Request(
            "GET",
            hop.url.copy_with(host=str(ip)),
            headers={**headers, "Host": hop.url.netloc.decode("ascii")},
            extensions={"timeout": httpx.Timeout(remaining).as_dict(), "sni_hostname": host},
        )
        try:
            return client.send(request, stream=True, auth=None, follow_redirects=False)
        except httpx.ConnectError as exc:
            failure = exc
    raise FetchError(f"Could not connect to the image URL's host {host} ({failure}).", transient=True)


def _redirect_target(hop: _Hop, location: str) -> str:
    try:
        return str(hop.url.join(location))
    except httpx.InvalidURL as exc:
        raise _bad(f"The image URL redirected to an invalid URL ({exc}).") from None


def _read(response: httpx.Response, max_bytes: int, deadline: _Deadline, sink: BinaryIO | None = None) -> bytes:
    """The body (or b"" once written to ``sink``), refused as soon as it is known to exceed ``max_bytes`` or
    the deadline passes."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise ImageError(
            f"The image at the URL is {int(declared)} bytes (Content-Length); at most {max_bytes} are allowed.",
            code="ErrorImageSize",
        )
    body = bytearray()
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise ImageError(f"The image at the URL is larger than {max_bytes} bytes.", code="ErrorImageSize")
        if sink is not None:
            sink.write(chunk)
        else:
            body += chunk
        deadline.left()
    return bytes(body)


def _error_detail(response: httpx.Response, deadline: _Deadline, limit: int = 4096) -> str:
    """The start of an error response's body (a JSON error, as APIs send), for the caller to read."""
    body = bytearray()
    try:
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) >= limit:
                break
            deadline.left()
    except (httpx.HTTPError, InvalidInput):
        pass
    return bytes(body[:limit]).decode("utf-8", errors="replace")


def _origin(url: str) -> tuple[str, str, int | None]:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return ("", url, None)
    return (parsed.scheme, parsed.host.lower(), parsed.port)


def _timed_out(timeout: float) -> InvalidInput:
    return FetchError(f"Downloading the image timed out after {timeout:g} s.", transient=True)


class FetchError(InvalidInput):
    """The other end failed (an HTTP error status, a timeout, a refused connection), as opposed to a URL
    refused here. ``transient`` failures (429, 5xx, timeouts, connection errors) may succeed if retried,
    after ``retry_after`` seconds when the server said so."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        transient: bool = False,
        retry_after: float | None = None,
        detail: str = "",
    ) -> None:
        super().__init__(message, code=_CODE)
        self.status, self.transient, self.retry_after = status, transient, retry_after
        self.detail = detail  # the start of the error response's body, if any


def retry_after(value: str | None, clock: Clock = SYSTEM) -> float | None:
    """Seconds from a ``Retry-After`` header (delay-seconds or an HTTP date, counted from ``clock``), or None."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - clock.time())


def _bad(message: str) -> InvalidInput:
    return InvalidInput(message, code=_CODE)

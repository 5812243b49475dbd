"""fetch(): SSRF-safe image download, against a real HTTP(S) server on 127.0.0.1. No internet, no real DNS."""

from __future__ import annotations

import contextlib
import http.server
import io
import ipaddress
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tagvision import fetch as fetch_module
from tagvision.clock import ManualClock
from tagvision.config import ALLOW_PRIVATE_URLS_ENV, Settings
from tagvision.errors import ImageError, InvalidInput
from tagvision.fetch import fetch
from tagvision.images import MAX_TRAINING_BYTES, validate
from tests.conftest import CLOTHING, photos

MB = 1024 * 1024
HUGE = 256 * MB
URL_CODE = "BadRequestImageUrl"
_REAL_GETADDRINFO = socket.getaddrinfo


@dataclass
class Seen:
    path: str
    headers: dict[str, str]


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, photo: bytes) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.photo = photo
        self.seen: list[Seen] = []
        self.sni: list[str | None] = []
        self.port = self.server_address[1]
        self.pause: Callable[[float], None] = time.sleep  # how the drip lets time pass (or a ManualClock's)
        self.huge_sent = 0  # bytes of /huge written before the client hung up

    def url(self, path: str, host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    def paths(self) -> list[str]:
        return [seen.path for seen in self.seen]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.close_connection = True
        self.server.seen.append(Seen(self.path, {k.lower(): v for k, v in self.headers.items()}))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.route()  # the client may hang up on purpose (size limit, deadline)

    def route(self) -> None:
        path, port = self.path, self.server.port
        if path == "/photo.jpg":
            self.reply(200, self.server.photo, {"Content-Type": "image/jpeg"})
        elif path.startswith("/chain/"):
            left = int(path.removeprefix("/chain/"))
            self.redirect(f"/chain/{left - 1}" if left else "/photo.jpg")  # relative Location
        elif path == "/loop":
            self.redirect("/loop")
        elif path == "/to-private":
            self.redirect(f"http://127.0.0.2:{port}/photo.jpg")
        elif path == "/to-other-name":  # another origin on the same server (FakeDNS: other.test is 127.0.0.1)
            self.redirect(f"http://other.test:{port}/photo.jpg")
        elif path == "/to-file":
            self.redirect("file:///etc/passwd")
        elif path == "/nowhere":
            self.reply(302, b"")
        elif path == "/huge":  # chunked, no Content-Length, 256 MiB: far more than socket buffers hold
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(HUGE // 0x10000):
                self.wfile.write(b"10000\r\n" + b"x" * 0x10000 + b"\r\n")
                self.server.huge_sent += 0x10000
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/liar":  # claims 100 MB, sends 1 kB
            self.send_response(200)
            self.send_header("Content-Length", str(100 * MB))
            self.end_headers()
            self.wfile.write(b"x" * 1000)
        elif path in ("/drip", "/stall"):  # one byte every 50 ms, or nothing at all, for 3 s
            self.send_response(200)
            self.send_header("Content-Length", "60")
            self.end_headers()
            for _ in range(60):
                self.server.pause(0.05)
                if path == "/drip":
                    self.wfile.write(b"x")
                    self.wfile.flush()
        else:
            self.reply(404, b"not here")

    def reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in {**(headers or {}), "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()


def serve(server: Server) -> Iterator[Server]:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def photo() -> bytes:
    return photos(CLOTHING, "train", "shoes", 1)[0].read_bytes()


@pytest.fixture
def server(photo: bytes) -> Iterator[Server]:
    yield from serve(Server(photo))


@dataclass
class FakeDNS:
    """Stands in for socket.getaddrinfo: IP literals resolve as usual, names only from ``names``."""

    names: dict[str, Callable[[], list[str]]] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)

    def add(self, name: str, *addresses: str) -> None:
        self.names[name] = lambda: list(addresses)

    def getaddrinfo(self, host, port, family=0, type=0, proto=0, flags=0):
        name = host.decode() if isinstance(host, bytes) else host
        if name not in self.names:
            # Only httpcore connecting to a checked IP gets here: names fail, and nothing leaves the machine.
            found = _REAL_GETADDRINFO(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)
            if not all(ipaddress.ip_address(info[4][0]).is_loopback for info in found):
                raise socket.gaierror(f"test guard: {name} is not on this machine")
            return found
        self.asked.append(name)
        return [
            (socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))
            for ip in self.names[name]()
        ]


@pytest.fixture(autouse=True)
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDNS:
    """Every test runs without real DNS and with the env var unset."""
    fake = FakeDNS()
    monkeypatch.setattr(socket, "getaddrinfo", fake.getaddrinfo)
    monkeypatch.delenv(ALLOW_PRIVATE_URLS_ENV, raising=False)
    return fake


def refused(url: str, *, max_bytes: int = MB, **kwargs: Any) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        fetch(url, max_bytes=max_bytes, **kwargs)
    assert caught.value.code == URL_CODE
    return caught.value


def treat_as_public(monkeypatch: pytest.MonkeyPatch, *public: str) -> None:
    real = fetch_module._is_forbidden
    monkeypatch.setattr(fetch_module, "_is_forbidden", lambda ip: None if str(ip) in public else real(ip))


# --- success ---------------------------------------------------------------------------------------------------------


def test_downloads_exact_bytes_with_our_headers(server: Server, photo: bytes) -> None:
    url = server.url("/photo.jpg")
    got = fetch(url, max_bytes=MB, allow_private=True)
    assert (got.url, got.final_url, got.data, got.content_type) == (url, url, photo, "image/jpeg")
    assert validate(got.data, max_bytes=MAX_TRAINING_BYTES).format == "JPEG"
    [seen] = server.seen
    assert seen.headers["host"] == f"127.0.0.1:{server.port}"
    assert seen.headers["user-agent"] == "tagvision/0.1 (+https://github.com/tagvision)"
    assert seen.headers["accept"] == "image/*"
    fetch(url, max_bytes=MB, allow_private=True, user_agent="probe/1")
    assert server.seen[-1].headers["user-agent"] == "probe/1"


def test_caller_headers_go_to_the_urls_origin_only(server: Server, photo: bytes, dns: FakeDNS) -> None:
    key = {"Training-Key": "secret"}
    assert fetch(server.url("/chain/1"), max_bytes=MB, allow_private=True, headers=key).data == photo
    assert [s.headers.get("training-key") for s in server.seen] == ["secret"] * 3, "same origin: every hop"
    server.seen.clear()
    dns.add("other.test", "127.0.0.1")
    assert fetch(server.url("/to-other-name"), max_bytes=MB, allow_private=True, headers=key).data == photo
    first, second = server.seen
    assert first.headers["training-key"] == "secret" and "training-key" not in second.headers
    assert second.headers["host"] == f"other.test:{server.port}"


def test_a_sink_takes_the_body_and_an_error_keeps_the_start_of_its_body(server: Server, photo: bytes) -> None:
    sink = io.BytesIO()
    got = fetch(server.url("/photo.jpg"), max_bytes=MB, allow_private=True, sink=sink)
    assert got.data == b"" and sink.getvalue() == photo
    with pytest.raises(fetch_module.FetchError) as missing:
        fetch(server.url("/absent"), max_bytes=MB, allow_private=True)
    assert (missing.value.status, missing.value.detail) == (404, "not here")


def test_caller_client_lends_only_its_transport(server: Server, photo: bytes) -> None:
    with httpx.Client(headers={"X-Api-Key": "secret"}, cookies={"session": "s"}, auth=("u", "p")) as client:
        assert fetch(server.url("/photo.jpg"), max_bytes=MB, allow_private=True, client=client).data == photo
        assert not client.is_closed
    [seen] = server.seen
    assert not {"x-api-key", "cookie", "authorization"} & seen.headers.keys()


# --- private addresses -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [{"allow_private": False}, {}])
def test_private_address_refused_before_connecting(server: Server, options: dict[str, bool]) -> None:
    error = refused(server.url("/photo.jpg"), **options)
    assert "127.0.0.1, a loopback address" in error.message
    assert f"{ALLOW_PRIVATE_URLS_ENV}=1" in error.message
    assert server.seen == []


def test_env_var_allows_private_addresses(server: Server, photo: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    url = server.url("/photo.jpg")
    monkeypatch.setenv(ALLOW_PRIVATE_URLS_ENV, "true")  # only "1" counts
    assert not Settings.load().allow_private_urls
    monkeypatch.setenv(ALLOW_PRIVATE_URLS_ENV, "1")
    allowed = Settings.load().allow_private_urls
    assert allowed
    assert fetch(url, max_bytes=MB, allow_private=allowed).data == photo
    refused(url)  # fetch itself never reads the environment: the caller passes the setting
    assert server.paths() == ["/photo.jpg"]


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://127.0.0.1/", "loopback"),
        ("http://[::1]/", "loopback"),
        ("http://2130706433/", "loopback"),
        ("http://0x7f000001/", "loopback"),
        ("http://0x7f.1/", "loopback"),
        ("http://017700000001/", "loopback"),
        ("http://127.1/", "loopback"),
        ("http://169.254.169.254/latest/meta-data", "cloud metadata"),
        ("http://[fd00:ec2::254]/latest/meta-data", "cloud metadata"),
        ("http://169.254.1.1/", "link-local"),
        ("http://[fe80::1]/", "link-local"),
        ("http://10.0.0.1/", "private"),
        ("http://172.16.0.1/", "private"),
        ("http://192.168.1.1/", "private"),
        ("http://[fd12::1]/", "private"),
        ("http://[::ffff:127.0.0.1]/", "loopback (IPv4 inside IPv6)"),
        ("http://[::ffff:10.1.2.3]/", "private (IPv4 inside IPv6)"),
        ("http://[2002:7f00:1::]/", "loopback (IPv4 inside IPv6)"),
        ("http://100.64.0.1/", "shared (carrier-grade NAT)"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://[::]/", "unspecified"),
        ("http://224.0.0.1/", "multicast"),
        ("http://[ff02::1]/", "multicast"),
        ("http://[fec0::1]/", "site-local"),
        ("http://[64:ff9b::7f00:1]/", "reserved"),  # NAT64 of 127.0.0.1
    ],
)
def test_literal_private_ips_in_any_spelling(url: str, kind: str, dns: FakeDNS) -> None:
    error = refused(url)
    assert f", a {kind} address" in error.message
    assert f"{ALLOW_PRIVATE_URLS_ENV}=1" in error.message
    assert dns.asked == []  # normalised without a lookup


def test_public_name_resolving_private_is_refused_then_pinned(server: Server, photo: bytes, dns: FakeDNS) -> None:
    dns.add("images.example.com", "127.0.0.1")
    url = server.url("/photo.jpg", host="images.example.com")
    error = refused(url)
    assert "images.example.com is 127.0.0.1, a loopback address" in error.message
    assert server.seen == []
    got = fetch(url, max_bytes=MB, allow_private=True)
    assert (got.data, got.final_url) == (photo, url)
    # The request went to the checked IP, still naming the host it asked for.
    assert server.seen[0].headers["host"] == f"images.example.com:{server.port}"


def test_any_private_address_among_several_refuses(dns: FakeDNS) -> None:
    dns.add("mixed.example", "93.184.216.34", "10.0.0.5")
    assert "10.0.0.5, a private address" in refused("http://mixed.example/a.jpg").message


def test_host_is_resolved_once_so_rebinding_cannot_swap_the_address(
    server: Server, photo: bytes, dns: FakeDNS, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = iter([["127.0.0.1"]])  # a second lookup would get nothing, a rebinding server would answer 10.x
    dns.names["rebind.example"] = lambda: next(answers, ["10.0.0.1"])
    treat_as_public(monkeypatch, "127.0.0.1")
    assert fetch(server.url("/photo.jpg", host="rebind.example"), max_bytes=MB).data == photo
    assert dns.asked == ["rebind.example"]


def test_unresolvable_host(dns: FakeDNS) -> None:
    assert "Could not resolve the image URL's host nowhere.invalid" in refused("http://nowhere.invalid/a").message
    assert dns.asked == []  # the fake refused it as a real resolver would


# --- URL rules -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("file:///etc/passwd", "scheme 'file' is not allowed"),
        ("ftp://example.com/a.jpg", "scheme 'ftp' is not allowed"),
        ("gopher://example.com/", "scheme 'gopher' is not allowed"),
        ("example.com/a.jpg", "scheme '' is not allowed"),
        ("http://user:pass@example.com/a.jpg", "user name or password"),
        ("http://user@example.com/a.jpg", "user name or password"),
        ("http://example.com@127.0.0.1/", "user name or password"),
        ("http:///a.jpg", "no host name"),
        ("http://", "no host name"),
        ("http://example.com:99999/", "port 99999 is out of range"),
        ("http://example.com:port/", "not a valid URL"),
        ("http://example.com/" + "a" * 2048, "2067 characters long; at most 2048"),
    ],
)
def test_bad_urls_refused(url: str, says: str, dns: FakeDNS) -> None:
    assert says in refused(url, allow_private=True).message
    assert dns.asked == []


# --- redirects -------------------------------------------------------------------------------------------------------


def test_redirect_chain_followed_and_counted(server: Server, photo: bytes) -> None:
    got = fetch(server.url("/chain/2"), max_bytes=MB, allow_private=True, max_redirects=3)
    assert (got.data, got.url, got.final_url) == (photo, server.url("/chain/2"), server.url("/photo.jpg"))
    assert server.paths() == ["/chain/2", "/chain/1", "/chain/0", "/photo.jpg"]
    error = refused(server.url("/chain/2"), allow_private=True, max_redirects=2)
    assert "more than 2 times (too many redirects)" in error.message


def test_redirect_loop_stops(server: Server) -> None:
    assert "too many redirects" in refused(server.url("/loop"), allow_private=True).message
    assert server.paths() == ["/loop"] * 6  # the first request and max_redirects=5 more


def test_redirect_to_private_address_refused(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    treat_as_public(monkeypatch, "127.0.0.1")  # so the first hop passes as public, its target 127.0.0.2 does not
    error = refused(server.url("/to-private"))
    assert "127.0.0.2 is 127.0.0.2, a loopback address" in error.message
    assert server.paths() == ["/to-private"]
    # Allowed, the redirect is followed to 127.0.0.2, where nothing listens.
    error = refused(server.url("/to-private"), allow_private=True)
    assert "Could not connect to the image URL's host 127.0.0.2" in error.message


def test_redirect_target_checked_by_url_rules(server: Server) -> None:
    assert "scheme 'file' is not allowed" in refused(server.url("/to-file"), allow_private=True).message
    assert "HTTP 302 Found" in refused(server.url("/nowhere"), allow_private=True).message


# --- status, size, time ----------------------------------------------------------------------------------------------


def test_http_error_status(server: Server) -> None:
    assert "answered HTTP 404 Not Found" in refused(server.url("/missing"), allow_private=True).message


def size_error(url: str, max_bytes: int) -> ImageError:
    with pytest.raises(ImageError) as caught:
        fetch(url, max_bytes=max_bytes, allow_private=True)
    assert caught.value.code == "ErrorImageSize"
    return caught.value


def test_size_limits(server: Server, photo: bytes) -> None:
    assert f"{100 * MB} bytes (Content-Length); at most {MB}" in size_error(server.url("/liar"), MB).message
    assert f"larger than {MB} bytes" in size_error(server.url("/huge"), MB).message
    # It hung up once over the limit: the server got out what was read and what socket buffers hold (a few MB).
    assert server.huge_sent < HUGE // 4
    assert fetch(server.url("/photo.jpg"), max_bytes=len(photo), allow_private=True).data == photo
    size_error(server.url("/photo.jpg"), len(photo) - 1)


def test_total_deadline_ends_a_drip(server: Server) -> None:
    """Each byte comes well within the read timeout, yet the 3 s drip is cut off at the 0.5 s deadline for the
    whole download. The drip's time is virtual: the server moves the clock that fetch keeps its deadline on."""
    clock = ManualClock()
    server.pause = clock.advance
    error = refused(server.url("/drip"), allow_private=True, timeout=0.5, clock=clock)
    assert error.message == "Downloading the image timed out after 0.5 s."


def test_stalled_body_times_out(server: Server) -> None:
    """Nothing after the headers: the socket read, given what is left of the deadline, times out (0.5 s)."""
    error = refused(server.url("/stall"), allow_private=True, timeout=0.5)
    assert error.message == "Downloading the image timed out after 0.5 s."


# --- https -----------------------------------------------------------------------------------------------------------


@pytest.fixture
def https_server(photo: bytes, tmp_path: Path) -> Iterator[tuple[Server, ssl.SSLContext]]:
    """An https server on 127.0.0.1 whose certificate names only images.example.com; records the SNI it got."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=images.example.com",
         "-addext", "subjectAltName=DNS:images.example.com"],
        check=True, capture_output=True,
    )  # fmt: skip
    server = Server(photo)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sock, name, ctx: server.sni.append(name)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    trust = ssl.create_default_context(cafile=str(cert))
    yield from ((running, trust) for running in serve(server))


def test_https_verifies_the_original_name_on_the_checked_ip(
    https_server: tuple[Server, ssl.SSLContext], photo: bytes, dns: FakeDNS
) -> None:
    server, trust = https_server
    dns.add("images.example.com", "127.0.0.1")
    dns.add("other.example", "127.0.0.1")
    with httpx.Client(verify=trust, trust_env=False) as client:
        url = server.url("/photo.jpg", host="images.example.com", scheme="https")
        assert fetch(url, max_bytes=MB, allow_private=True, client=client).data == photo
        assert server.sni == ["images.example.com"]
        assert server.seen[0].headers["host"] == f"images.example.com:{server.port}"
        # Same IP, another name: the certificate does not match it, so the download is refused.
        other = server.url("/photo.jpg", host="other.example", scheme="https")
        error = refused(other, allow_private=True, client=client)
        assert "Could not connect to the image URL's host other.example" in error.message
        assert "CERTIFICATE_VERIFY_FAILED" in error.message
    assert len(server.seen) == 1


def test_forbidden_seam_is_the_ipaddress_classifier() -> None:
    assert fetch_module._is_forbidden(ipaddress.ip_address("93.184.216.34")) is None
    assert fetch_module._is_forbidden(ipaddress.ip_address("2606:4700::1111")) is None
    assert fetch_module._is_forbidden(ipaddress.ip_address("::ffff:8.8.8.8")) is None

"""The portal's session: a signed cookie holding the login state, the CSRF token and flash messages.

The cookie (``tagvision_session``) is signed with a secret derived from the Training-Key, so
regenerating the training key logs every browser out, as it revokes every signed link. It is
HttpOnly and SameSite=Lax, and Secure when the portal is served over https. The CSRF token is
random per session, rendered into every form (a hidden ``csrf`` field) and into a ``<meta>`` tag
that the JavaScript sends back as the ``X-CSRF-Token`` header; a state-changing request whose
token does not match the session's is refused. Logging in starts a new session (a new token),
so a token seen before login is useless after it. Logging out revokes the session's token on the
server (``service.sessions``), so the old cookie is refused even if someone kept a copy.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field

from fastapi import Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer

COOKIE = "tagvision_session"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
MAX_AGE = 7 * 24 * 3600
MAX_FLASHES = 4


@dataclass
class Session:
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    logged_in: bool = False
    flashes: list[tuple[str, str]] = field(default_factory=list)  # (kind: "ok" | "error", sentence)
    from_cookie: bool = False  # the browser sent a valid cookie for it
    changed: bool = False

    def flash(self, kind: str, message: str) -> None:
        self.flashes = [*self.flashes, (kind, message)][-MAX_FLASHES:]
        self.changed = True

    def take_flashes(self) -> list[tuple[str, str]]:
        taken, self.flashes = self.flashes, []
        self.changed = self.changed or bool(taken)
        return taken

    def token_matches(self, given: str | None) -> bool:
        return bool(given) and self.from_cookie and hmac.compare_digest(given.encode(), self.csrf.encode())


def _serializer(request: Request) -> URLSafeTimedSerializer:
    training_key = request.app.state.service.keys.current().training
    secret = hmac.new(training_key.encode(), b"tagvision portal session v1", hashlib.sha256).hexdigest()
    return URLSafeTimedSerializer(secret, salt="tagvision-session")


def load(request: Request) -> Session:
    """The request's session: the one in its cookie when valid, else a fresh anonymous one."""
    raw = request.cookies.get(COOKIE)
    if raw:
        try:
            data = _serializer(request).loads(raw, max_age=MAX_AGE)
            if request.app.state.service.sessions.is_revoked(str(data["c"])):
                return Session(changed=True)  # logged out: a copy of the cookie is worth nothing
            return Session(
                csrf=str(data["c"]),
                logged_in=bool(data.get("a")),
                flashes=[(str(k), str(m)) for k, m in data.get("f", [])],
                from_cookie=True,
            )
        except (BadSignature, KeyError, TypeError, ValueError):
            pass
    return Session(changed=True)


def save(request: Request, response: Response, session: Session) -> None:
    """Set the cookie when the session is new or changed."""
    if not session.changed:
        return
    value = _serializer(request).dumps({"c": session.csrf, "a": session.logged_in, "f": session.flashes})
    response.set_cookie(
        COOKIE, value, max_age=MAX_AGE, path="/", httponly=True, samesite="lax", secure=request.url.scheme == "https"
    )


def start(request: Request, *, logged_in: bool) -> Session:
    """A new session (new CSRF token) replacing the request's: at login and logout."""
    session = Session(logged_in=logged_in, changed=True, from_cookie=True)
    request.state.session = session
    return session


def current(request: Request) -> Session:
    return request.state.session

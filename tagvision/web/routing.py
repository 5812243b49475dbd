"""Route classes for the portal: the session, the login gate, CSRF checks and errors as sentences.

Every portal route is a :class:`PageRoute` (answers HTML) or a :class:`JsonRoute` (answers JSON
to the page's JavaScript). Around each handler they

* load the session from its cookie, and save it back when it changed;
* send a visitor who is not logged in to the login page (pages) or answer 401 (JSON);
* refuse a POST whose CSRF token (form field ``csrf`` or header ``X-CSRF-Token``) is not the
  session's, with 403 and a sentence saying what to do;
* turn a :class:`TagvisionError` into its message: after a form, back to the form's page
  (its hidden ``next`` field) with the message shown there; otherwise an error page or a
  ``{"code", "message"}`` body. Anything unexpected is logged and shown as a plain sentence,
  never a stack trace.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import quote

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from tagvision.errors import TagvisionError
from tagvision.web import session as sessions
from tagvision.web.templates import render

log = logging.getLogger("tagvision.web")

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
    "script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
CSRF_MESSAGE = (
    "This request was refused because it did not carry this page's security token (CSRF). "
    "Reload the page and try again."
)
NO_COOKIE_MESSAGE = (
    "Your browser did not send the session cookie. Allow cookies for this site, reload the page and try again."
)
INVALID_MESSAGE = "The address or form has a value the portal cannot read"

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class PortalError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class PageRoute(APIRoute):
    """An HTML page (or a form post) behind the login."""

    public = False
    json = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["include_in_schema"] = False  # /docs lists the Custom Vision API only
        super().__init__(*args, **kwargs)

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            session = request.state.session = sessions.load(request)
            try:
                await self._check(request, session)
                response = await handler(request)
            except PortalError as exc:
                response = self._refuse(request, exc)
            except TagvisionError as exc:
                response = await self._failed(request, exc.http_status, exc.code, exc.message)
            except RequestValidationError as exc:
                response = await self._failed(request, 400, "BadRequestInvalid", _invalid(exc))
            except HTTPException:
                raise
            except Exception:
                log.exception("portal: unexpected error on %s %s", request.method, request.url.path)
                response = await self._failed(
                    request,
                    500,
                    "ErrorUnknown",
                    "Something went wrong on the server "
                    "and the action did not complete. The server log has the details.",
                )
            sessions.save(request, response, sessions.current(request))  # login and logout replace it
            response.headers.update(HEADERS)
            return response

        return guarded

    async def _check(self, request: Request, session: sessions.Session) -> None:
        if not self.public and not session.logged_in:
            if self.json:
                raise PortalError(401, "Unauthorized", "Log in to the portal first; your session has ended.")
            raise PortalError(303, "Login", "")
        if request.method not in SAFE_METHODS:
            given = request.headers.get(sessions.CSRF_HEADER)
            if given is None and not self.json and _is_form(request):
                given = str((await request.form()).get(sessions.CSRF_FIELD, ""))
            if not session.token_matches(given):
                message = CSRF_MESSAGE if session.from_cookie else NO_COOKIE_MESSAGE
                raise PortalError(403, "Forbidden", message)

    def _refuse(self, request: Request, exc: PortalError) -> Response:
        if exc.status == 303:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            if request.method not in SAFE_METHODS:
                target = "/"
            return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
        if self.json:
            return JSONResponse({"code": exc.code, "message": exc.message}, status_code=exc.status)
        return render(request, "error.html", status_code=exc.status, title="Request refused", message=exc.message)

    async def _failed(self, request: Request, status: int, code: str, message: str) -> Response:
        if self.json:
            return JSONResponse({"code": code, "message": message}, status_code=status)
        if request.method not in SAFE_METHODS:
            back = safe_next(str((await request.form()).get("next", "")) if _is_form(request) else "")
            if back:
                sessions.current(request).flash("error", message)
                return RedirectResponse(back, status_code=303)
        title = "Not found" if status == 404 else "Something went wrong" if status >= 500 else "That did not work"
        return render(request, "error.html", status_code=status, title=title, message=message)


class PublicPageRoute(PageRoute):
    """A page open without login (the login page itself)."""

    public = True


class JsonRoute(PageRoute):
    """A JSON endpoint for the portal's JavaScript: 401/403/4xx answers are ``{"code", "message"}``."""

    json = True


def safe_next(value: str) -> str:
    """A local path to go back to, or "" (never another site: no scheme, no ``//`` host)."""
    if value.startswith("/") and not value.startswith("//") and "\\" not in value and "\n" not in value:
        return value
    return ""


def _is_form(request: Request) -> bool:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return kind in ("application/x-www-form-urlencoded", "multipart/form-data")


def _invalid(exc: RequestValidationError) -> str:
    fields = sorted({str(e.get("loc", ("", ""))[-1]) for e in exc.errors()})
    return f"{INVALID_MESSAGE}: check {', '.join(fields) or 'the values'} and try again."

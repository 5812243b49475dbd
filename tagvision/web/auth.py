"""Logging in with the Training-Key, and out."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from tagvision.errors import Busy
from tagvision.service import Service
from tagvision.web import session as sessions
from tagvision.web.routing import PageRoute, PublicPageRoute, safe_next
from tagvision.web.templates import render

pages = APIRouter(route_class=PublicPageRoute)
private = APIRouter(route_class=PageRoute)


@pages.get("/login")
def login_page(request: Request, next: str = "/") -> Response:  # noqa: A002 (the query parameter's name)
    if sessions.current(request).logged_in:
        return RedirectResponse(safe_next(next) or "/", status_code=303)
    return render(request, "login.html", title="Log in", next=safe_next(next) or "/")


@pages.post("/login")
async def login(request: Request) -> Response:
    form = await request.form()
    service: Service = request.app.state.service
    target = safe_next(str(form.get("next", ""))) or "/"
    client = request.client.host if request.client else "unknown"
    pace = service.login_pace
    async with pace.lock(client):  # one attempt at a time per address
        try:
            pace.check(client)
        except Busy as exc:
            sessions.current(request).flash("error", exc.message)
            return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
        if not service.keys.is_training_key(str(form.get("key", "")).strip()):
            await pace.failed(client)
            sessions.current(request).flash(
                "error", "That is not this server's training key. Run tagvision keys on the server to see it."
            )
            return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
    sessions.start(request, logged_in=True)
    return RedirectResponse(target, status_code=303)


@private.post("/logout")
def logout(request: Request) -> Response:
    """End the session here and on the server: a copy of its cookie no longer logs anyone in."""
    service: Service = request.app.state.service
    service.sessions.revoke(sessions.current(request).csrf, sessions.MAX_AGE)
    sessions.start(request, logged_in=False).flash("ok", "You are logged out.")
    return RedirectResponse("/login", status_code=303)


routers = (pages, private)

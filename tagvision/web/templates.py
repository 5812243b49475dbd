"""Jinja2 templates (autoescaped) and the few filters they use."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, pass_context, select_autoescape
from jinja2.runtime import Context
from markupsafe import Markup

from tagvision import __version__
from tagvision.web import session as sessions


def percent(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value * 100:.{digits}f}%"


def when(value: datetime | None) -> str:
    if value is None:
        return "–"
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    return f"{count} {singular if count == 1 else (plural_form or singular + 's')}"


@pass_context
def hidden(context: Context) -> Markup:
    """The hidden fields every form carries: the CSRF token, and the page to come back to."""
    return Markup('<input type="hidden" name="csrf" value="{}"><input type="hidden" name="next" value="{}">').format(
        context["csrf"], context["here"]
    )


env = Environment(
    loader=PackageLoader("tagvision.web", "templates"),
    autoescape=select_autoescape(default=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
env.filters.update(percent=percent, when=when)
env.globals.update(plural=plural, version=__version__, hidden=hidden)


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """Render a page with the session's CSRF token and pending flash messages."""
    session = sessions.current(request)
    page = env.get_template(name).render(
        request=request,
        csrf=session.csrf,
        logged_in=session.logged_in,
        flashes=session.take_flashes(),
        here=_here(request),
        **context,
    )
    return HTMLResponse(page, status_code=status_code)


def _here(request: Request) -> str:
    """This page's path and query: where a form sends the browser back to."""
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")

"""``tagvision serve``, ``worker``, ``keys`` and ``db``: running the server and its workers, the keys apps call
it with, and the database schema."""

from __future__ import annotations

import json
import os
import socket
from typing import TYPE_CHECKING, Annotated

import typer

from tagvision.cli.common import SERVER_FILE, DataDir, JsonFlag, err, existing, out, print_json
from tagvision.config import Settings
from tagvision.errors import InvalidInput
from tagvision.service import Service

if TYPE_CHECKING:
    from tagvision.service.keys import Keys

# ---------------------------------------------------------------------- server

HostOpt = Annotated[str, typer.Option(help="Address to listen on (0.0.0.0 for every interface).")]
PortOpt = Annotated[int, typer.Option(help="Port (0 picks a free one).")]
AccessLogFlag = Annotated[bool, typer.Option("--access-log/--no-access-log", help="Log every request.")]
WorkerFlag = Annotated[
    bool,
    typer.Option(
        "--worker/--no-worker",
        help="Run trainings, exports and acquisitions in this process too (default; $TAGVISION_EMBEDDED_WORKER). "
        "--no-worker: an API replica only; `tagvision worker` processes run them.",
        show_default=False,
    ),
]


def serve(
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    data_dir: DataDir = None,
    access_log: AccessLogFlag = True,
    worker: WorkerFlag = True,
) -> None:
    """Run the server: the Custom Vision Training and Prediction APIs (OpenAPI page at /docs)."""
    import dataclasses

    from tagvision.server import return_freed_memory

    return_freed_memory()
    _log_to_stderr()
    sock, endpoint = _listen(host, port)
    settings = existing(data_dir, create=True)
    svc = Service.open(dataclasses.replace(settings, embedded_worker=settings.embedded_worker and worker))
    _serve(svc, sock, endpoint, access_log)


def _log_to_stderr() -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # its INFO lines carry URLs, and some hold API keys


def _listen(host: str, port: int) -> tuple[socket.socket, str]:
    """A listening socket on host:port (port 0: a free one) and the endpoint it is reached at."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit this: without it a small response's body waits ~40 ms for the
    # client's delayed ACK of the headers (Nagle).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        raise InvalidInput(f"Cannot listen on {host}:{port}: {exc.strerror}.", code="BadRequest") from None
    bound = sock.getsockname()[1]
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return sock, f"http://[{shown}]:{bound}" if ":" in shown else f"http://{shown}:{bound}"


def _serve(svc: Service, sock: socket.socket, endpoint: str, access_log: bool) -> None:
    """Serve the app on the socket until a signal stops it; server.json says where while it runs. The service
    is closed in every case, inside uvicorn's signal capture (which raises SIGTERM/SIGINT again once left)."""
    import uvicorn

    from tagvision.server import create_app

    settings = svc.ctx.settings
    running, closed = settings.data_dir / SERVER_FILE, False
    try:
        current = svc.keys.current()  # made at first start
        running.write_text(json.dumps({"endpoint": endpoint, "pid": os.getpid()}))
        _announce(settings, endpoint, current)
        config = uvicorn.Config(create_app(svc), log_level="info", access_log=access_log, timeout_keep_alive=30)
        server = uvicorn.Server(config)
        with server.capture_signals():  # uvicorn raises SIGTERM/SIGINT again once it leaves this: tidy up in it
            try:
                server.run(sockets=[sock])
            finally:
                if server_of(settings) == (endpoint, os.getpid()):
                    running.unlink(missing_ok=True)
                svc.close()
                closed = True
    finally:
        if not closed:
            svc.close()


def _announce(settings: Settings, endpoint: str, current: Keys) -> None:
    """Where the server listens and its data directory; the keys only to a person at a terminal, never a log."""
    lines = [
        f"tagvision serving on {endpoint} (portal: {endpoint}/, API docs: {endpoint}/docs)",
        f"Data directory:  {settings.data_dir}",
        f"Endpoint:        {settings.public_url or endpoint}",
    ]
    if err.is_terminal:  # a person at a terminal; never into a log file
        lines += [f"Training-Key:    {current.training}", f"Prediction-Key:  {current.prediction}"]
    else:
        lines += [f"Keys:            tagvision keys --data-dir {settings.data_dir}"]
    err.print("\n".join(lines), highlight=False)


def server_of(settings: Settings) -> tuple[str, int] | None:
    """(endpoint, pid) of the server running on this data directory, from its server.json, or None when no
    server wrote one or its process is gone (a killed server leaves the file behind)."""
    try:
        running = json.loads((settings.data_dir / SERVER_FILE).read_text())
        endpoint, pid = str(running["endpoint"]), int(running["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    return endpoint, pid


# ---------------------------------------------------------------------- keys


def keys(
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
    regenerate: Annotated[
        str | None,
        typer.Option(
            help="Replace a key: training or prediction. The old key stops working at once.",
            show_default=False,
            metavar="KIND",
        ),
    ] = None,
) -> None:
    """Show the data directory, the running server's endpoint, the Training-Key and the Prediction-Key."""
    settings = existing(data_dir)
    from tagvision.service.keys import KeyStore
    from tagvision.store.database import Database  # the keys live in the database every replica shares

    database = Database(settings.database_url, upgrade=settings.migrate_at_open)
    try:
        store = KeyStore(database, settings.data_dir, settings.training_key, settings.prediction_key)
        current = store.regenerate(regenerate) if regenerate else store.current()
    finally:
        database.close()
    server = server_of(settings)
    endpoint = settings.public_url or (server[0] if server else None)
    if as_json:
        print_json(
            {
                "dataDir": str(settings.data_dir),
                "endpoint": endpoint,
                "serverRunning": server is not None,
                "trainingKey": current.training,
                "predictionKey": current.prediction,
            }
        )
        return
    if server is None:
        where = f"{endpoint} (no server is running on this data directory)" if endpoint else "no server is running"
        endpoint_line = f"{where}; start one with: tagvision serve --data-dir {settings.data_dir}"
    else:
        endpoint_line = str(endpoint)
    out.print(
        f"Data directory:  {settings.data_dir}\nEndpoint:        {endpoint_line}\n"
        f"Training-Key:    {current.training}\nPrediction-Key:  {current.prediction}",
        highlight=False,
    )


# ---------------------------------------------------------------------- worker


def worker_command(data_dir: DataDir = None) -> None:
    """Run trainings, exports and acquisitions that any server sharing the database queued, until stopped.

    Each job is claimed by one worker and held by a lease it renews; a job whose worker was killed is taken
    over by another once its lease lapses. Ctrl-C or SIGTERM: stop claiming, hand back acquisitions, finish
    a training or export under way (a second one stops at once; the job is then taken over later).
    """
    import signal
    import threading

    _log_to_stderr()
    stop = threading.Event()

    def stop_at_signal(signum: int, _frame: object) -> None:
        if stop.is_set():
            raise SystemExit(128 + signum)
        stop.set()

    signal.signal(signal.SIGTERM, stop_at_signal)
    signal.signal(signal.SIGINT, stop_at_signal)
    svc = Service.open(Settings.load(data_dir))
    try:
        running = svc.jobs.start_worker()
        (svc.ctx.settings.data_dir / "worker.json").write_text(json.dumps({"name": running.name}))
        err.print(f"tagvision worker {running.name} running jobs; Ctrl-C stops it.", highlight=False)
        while not stop.wait(1.0):
            pass
        err.print("Stopping: handing back acquisitions, finishing the training or export under way.")
    finally:
        svc.close()


# ---------------------------------------------------------------------- database schema


def db_upgrade(data_dir: DataDir = None) -> None:
    """Bring the schema to this tagvision's newest revision (run once per upgrade; docs/deploy.md)."""
    from tagvision.store import database

    engine = database.make_engine(Settings.load(data_dir).database_url)
    try:
        before = database.current_revision(engine)
        database.migrate(engine)
        after = database.current_revision(engine)
    finally:
        engine.dispose()
    if before == after:
        out.print(f"The schema is at {after}, the newest revision; nothing to do.", highlight=False)
    else:
        out.print(f"Upgraded the schema from {before or 'nothing'} to {after}.", highlight=False)


def db_status(data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """Say which revision the schema is at and which this tagvision needs; exit 1 if they differ."""
    from tagvision.store import database

    engine = database.make_engine(Settings.load(data_dir).database_url)
    try:
        current, head = database.current_revision(engine), database.head_revision()
    finally:
        engine.dispose()
    if as_json:
        print_json({"current": current, "head": head, "upToDate": current == head})
    else:
        verdict = "up to date" if current == head else "run `tagvision db upgrade`"
        out.print(f"schema at {current or 'nothing'}; this tagvision needs {head}: {verdict}", highlight=False)
    if current != head:
        raise typer.Exit(1)

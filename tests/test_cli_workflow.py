"""The command line finishes the workflow (publish with an atomic swap, unpublish, stored predictions into
training images), never makes a data directory to answer a question, says which one it uses, shows the
endpoint only of a server that runs, and starts without the heavy modules a ``--help`` or ``keys`` does not
need. Commands run in this process (tests/cli.py) except the start-up checks, which need a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tagvision.config import Settings
from tagvision.service import Service
from tests.cli import tagvision
from tests.conftest import CLOTHING, REPO, photos

HEAVY = ("numpy", "sqlalchemy", "onnxruntime", "torch", "scipy", "PIL", "tagvision.service.training")


def test_keys_never_make_a_data_directory_and_name_the_one_they_looked_in(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    ran = tagvision("keys", data_dir=missing, check=False)
    assert ran.returncode == 1 and "error: NotFoundDataDirectory" in ran.stderr
    assert str(missing) in ran.stderr and "--data-dir" in ran.stderr and "TAGVISION_DATA_DIR" in ran.stderr
    assert not missing.exists()
    from_env = tagvision("keys", check=False, env={"TAGVISION_DATA_DIR": str(missing)})
    assert from_env.returncode == 1 and "(from TAGVISION_DATA_DIR)" in from_env.stderr and not missing.exists()
    for command in (("project", "list"), ("iteration", "list", "p"), ("prediction", "list", "p")):
        refused = tagvision(*command, data_dir=missing, check=False)
        assert refused.returncode == 1 and "NotFoundDataDirectory" in refused.stderr, command
    assert not missing.exists()

    created = tagvision("project", "create", "p", data_dir=missing)  # making things may make the directory
    assert f"Data directory: {missing}" in created.stderr
    shown = tagvision("keys", data_dir=missing).stdout
    assert f"Data directory:  {missing}" in shown
    assert "no server is running; start one with: tagvision serve --data-dir" in shown


def test_keys_show_the_endpoint_of_a_running_server_only(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "server.json").write_text(json.dumps({"endpoint": "http://127.0.0.1:18765", "pid": os.getpid()}))
    running = json.loads(tagvision("keys", "--json", data_dir=data).stdout)
    assert running["endpoint"] == "http://127.0.0.1:18765" and running["serverRunning"] is True
    assert running["dataDir"] == str(data)

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (data / "server.json").write_text(json.dumps({"endpoint": "http://127.0.0.1:8000", "pid": int(gone.stdout)}))
    stale = json.loads(tagvision("keys", "--json", data_dir=data).stdout)
    assert stale["endpoint"] is None and stale["serverRunning"] is False
    assert "no server is running" in tagvision("keys", data_dir=data).stdout

    public = tagvision("keys", "--json", data_dir=data, env={"TAGVISION_PUBLIC_URL": "https://vision.example.com/"})
    assert json.loads(public.stdout)["endpoint"] == "https://vision.example.com"


def test_help_reads_as_plain_words() -> None:
    commands = ((), ("train",), ("image", "add"), ("publish",), ("prediction", "tag"), ("keys",), ("migrate",))
    for command in (*commands, ("dataset", "export"), ("project", "export"), ("catalogue", "import")):
        text = tagvision(*command, "--help").stdout
        for wrong in ("<bool>", "{project}", "{PROJECT}", "Data directory .", "[default: $"):
            assert wrong not in text, (command, wrong, text)
    assert "Usage: tagvision publish [OPTIONS] PROJECT ITERATION" in tagvision("publish", "--help").stdout


@pytest.mark.process
@pytest.mark.parametrize(
    ("command", "needs"),
    [(("--help",), ()), (("keys",), ("sqlalchemy",))],  # the keys live in the database every replica shares
)
def test_help_and_keys_start_without_heavy_modules(
    command: tuple[str, ...], needs: tuple[str, ...], tmp_path: Path
) -> None:
    (tmp_path / "data").mkdir()
    probe = (
        "import sys; sys.argv = ['tagvision', *sys.argv[1:]]\n"
        "from tagvision.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"print('LOADED', sorted(m for m in {HEAVY!r} if m in sys.modules and m not in {needs!r}), file=sys.stderr)\n"
    )
    args = [*command, "--data-dir", str(tmp_path / "data")] if command == ("keys",) else list(command)
    ran = subprocess.run(
        [sys.executable, "-c", probe, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=600,
    )
    assert "LOADED []" in ran.stderr, ran.stderr


@pytest.mark.slow
def test_publish_swaps_unpublishes_and_stored_predictions_become_training_images(tmp_path: Path) -> None:
    data = tmp_path / "data"
    tagvision("project", "create", "shop", data_dir=data)
    tagvision("tag", "create", "shop", "dress", "hat", data_dir=data)
    for tag in ("dress", "hat"):
        tagvision("image", "add", "shop", "--tag", tag, *map(str, photos(CLOTHING, "train", tag, 5)), data_dir=data)
    tagvision("train", "shop", data_dir=data)
    tagvision("train", "shop", "--force", data_dir=data)

    first = tagvision("publish", "shop", "Iteration 1", "--name", "live", data_dir=data).stdout
    assert "Iteration 1 is published as 'live'." in first
    taken = tagvision("publish", "shop", "Iteration 2", "--name", "live", data_dir=data, check=False)
    assert taken.returncode == 1 and "BadRequestInvalidPublishName" in taken.stderr and "--replace" in taken.stderr
    swapped = tagvision("publish", "shop", "Iteration 2", "--name", "live", "--replace", data_dir=data).stdout
    assert "Iteration 2 is published as 'live', in place of Iteration 1." in swapped
    listed = {
        i["name"]: i["publishName"]
        for i in json.loads(tagvision("iteration", "list", "shop", "--json", data_dir=data).stdout)
    }
    assert listed == {"Iteration 1": "", "Iteration 2": "live"}

    service = Service.open(Settings.load(data))
    try:
        hat = photos(CLOTHING, "test", "hat", 1)[0].read_bytes()
        dress = photos(CLOTHING, "test", "dress", 1)[0].read_bytes()
        stored = [service.prediction.classify("shop", b, published="live") for b in (hat, dress)]
    finally:
        service.close()
    every = json.loads(tagvision("prediction", "list", "shop", "--json", data_dir=data).stdout)
    assert {p["id"] for p in every} == {p.id for p in stored}
    hats = json.loads(
        tagvision(
            "prediction", "list", "shop", "--tag", "hat", "--min-probability", "0.5", "--json", data_dir=data
        ).stdout
    )
    assert [p["id"] for p in hats] == [stored[0].id]
    table = tagvision("prediction", "list", "shop", data_dir=data).stdout
    assert stored[0].id in table and "Iteration 2" in table
    unknown = tagvision("prediction", "tag", "shop", stored[0].id, "scarf", data_dir=data, check=False)
    assert (
        unknown.returncode == 1
        and "NotFoundTag" in unknown.stderr
        and "tagvision tag create shop scarf" in unknown.stderr
    )

    added = tagvision("prediction", "tag", "shop", stored[0].id, "hat", data_dir=data).stdout
    assert "Added to the training images as hat" in added
    images = json.loads(tagvision("image", "list", "shop", "--tag", "hat", "--json", data_dir=data).stdout)
    assert len(images) == 6
    left = json.loads(tagvision("prediction", "list", "shop", "--json", data_dir=data).stdout)
    assert [p["id"] for p in left] == [stored[1].id], "a prediction turned into a training image leaves the list"

    gone = tagvision("unpublish", "shop", "Iteration 2", data_dir=data).stdout
    assert "Iteration 2 is no longer published as 'live'." in gone
    again = tagvision("unpublish", "shop", "Iteration 2", data_dir=data, check=False)
    assert again.returncode == 1 and "BadRequestIterationNotPublished" in again.stderr


@pytest.mark.process
def test_keys_follow_a_real_server_from_start_to_stop(tmp_path: Path) -> None:
    from tests.server import Server

    server = Server(tmp_path / "data").start()
    try:
        shown = json.loads(tagvision("keys", "--json", data_dir=server.data_dir).stdout)
        assert shown["endpoint"] == server.endpoint and shown["serverRunning"] is True
        assert shown["trainingKey"] == server.training_key
        assert f"Data directory:  {server.data_dir}" in server.log()
        assert server.training_key not in server.log(), "keys go to a terminal, never into a log"
    finally:
        server.stop()
    assert not (server.data_dir / "server.json").exists(), "a server that stops says so"
    assert json.loads(tagvision("keys", "--json", data_dir=server.data_dir).stdout)["endpoint"] is None

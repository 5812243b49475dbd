"""The command line end to end on real photos; bad input; keys; a kill mid-import.

Commands run in this process (``tagvision.cli:main`` under typer's CliRunner, tests/cli.py); the kill
test runs the import as a real process.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest
from PIL import Image

from tests.cli import tagvision
from tests.conftest import CLOTHING, photos
from tests.gates import blob_path, feed, put_back, reader_arrived, swap_for_fifo, wait_until, write_lock

PROJECT_KEYS = {"id", "name", "description", "settings", "created", "lastModified"}
PERFORMANCE_KEYS = {
    "precision",
    "precisionStdDeviation",
    "recall",
    "recallStdDeviation",
    "averagePrecision",
    "perTagPerformance",
}
TAG_PERFORMANCE_KEYS = {
    "id",
    "name",
    "precision",
    "precisionStdDeviation",
    "recall",
    "recallStdDeviation",
    "averagePrecision",
}


@pytest.mark.slow
def test_the_whole_flow_from_folders_to_predictions(data_dir: Path, class_folders: Path, tmp_path: Path) -> None:
    project = json.loads(
        tagvision(
            "project",
            "create",
            "shoes",
            "--type",
            "multiclass",
            "--domain",
            "general-compact",
            "--json",
            data_dir=data_dir,
        ).stdout
    )
    assert set(project) >= PROJECT_KEYS
    assert project["settings"]["classificationType"] == "Multiclass"
    tagvision("tag", "create", "shoes", "dress", "hat", "shoes", "pants", data_dir=data_dir)

    added = tagvision("image", "add", "shoes", "--from-folders", str(class_folders), data_dir=data_dir)
    assert "Added 24 images, 0 already there, 0 refused." in added.stdout
    pants = photos(CLOTHING, "train", "pants", 8)
    by_tag = json.loads(
        tagvision("image", "add", project["id"], "--tag", "pants", *map(str, pants), "--json", data_dir=data_dir).stdout
    )
    assert by_tag["isBatchSuccessful"] and [i["status"] for i in by_tag["images"]] == ["OK"] * 8

    trained = tagvision("train", "shoes", data_dir=data_dir)
    assert "Iteration 1 completed" in trained.stdout and "on 32 images" in trained.stdout
    assert "embedding images" in trained.stderr, "a progress bar is shown"

    performance = json.loads(
        tagvision("performance", "shoes", "--threshold", "0.7", "--json", data_dir=data_dir).stdout
    )
    assert set(performance) >= PERFORMANCE_KEYS
    assert {t["name"] for t in performance["perTagPerformance"]} == {"dress", "hat", "shoes", "pants"}
    assert all(set(t) >= TAG_PERFORMANCE_KEYS for t in performance["perTagPerformance"])
    assert performance["precision"] > 0.8 and performance["averagePrecision"] > 0.8
    table = tagvision("performance", "shoes", data_dir=data_dir).stdout
    assert "Iteration 1, threshold 50%" in table and "overall" in table
    assert "Measured on 5-fold cross-validation on the 32 training images" in " ".join(table.split())

    unseen = [p for tag in ("dress", "hat", "shoes", "pants") for p in photos(CLOTHING, "test", tag, 2)]
    lines = tagvision("predict", "shoes", *map(str, unseen), "--json", data_dir=data_dir).stdout.splitlines()
    predictions = [json.loads(line) for line in lines]
    assert [p["image"] for p in predictions] == list(map(str, unseen))
    for p in predictions:
        probabilities = [x["probability"] for x in p["predictions"]]
        assert probabilities == sorted(probabilities, reverse=True) and len(probabilities) == 4
        assert set(p["predictions"][0]) >= {"tagId", "tagName", "probability", "tagType"}
    top = [p["predictions"][0]["tagName"] for p in predictions]
    assert (
        sum(t == want for t, want in zip(top, ["dress"] * 2 + ["hat"] * 2 + ["shoes"] * 2 + ["pants"] * 2, strict=True))
        >= 7
    )

    iterations = json.loads(tagvision("iteration", "list", "shoes", "--json", data_dir=data_dir).stdout)
    assert [(i["name"], i["status"]) for i in iterations] == [("Iteration 1", "Completed")]
    again = tagvision("train", "shoes", data_dir=data_dir, check=False)
    assert again.returncode == 1 and "BadRequestTrainingNotNeeded" in again.stderr
    tagvision("train", "shoes", "--force", data_dir=data_dir)
    chosen = json.loads(
        tagvision("predict", "shoes", str(unseen[0]), "--iteration", "Iteration 1", "--json", data_dir=data_dir).stdout
    )
    assert chosen["predictions"] == predictions[0]["predictions"]
    projects = json.loads(tagvision("project", "list", "--json", data_dir=data_dir).stdout)
    assert [p["name"] for p in projects] == ["shoes"]


def test_data_dir_comes_from_the_environment(tmp_path: Path) -> None:
    tagvision("project", "create", "x", env={"TAGVISION_DATA_DIR": str(tmp_path / "env-data")})
    assert (tmp_path / "env-data" / "tagvision.db").is_file()


def test_bad_images_get_their_codes_and_good_ones_land(data_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "mixed" / "hat"
    folder.mkdir(parents=True)
    good = photos(CLOTHING, "train", "hat", 3)
    for path in good:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "copy.jpg").write_bytes(good[0].read_bytes())
    (folder / "truncated.jpg").write_bytes(good[1].read_bytes()[:3000])
    (folder / "notes.jpg").write_text("<html>not a photo</html>")
    (folder / "big.png").write_bytes(good[2].read_bytes() + os.urandom(6 * 1024 * 1024))
    buffer = io.BytesIO()
    Image.new("1", (12000, 10)).save(buffer, "PNG")
    (folder / "wide.png").write_bytes(buffer.getvalue())
    tagvision("project", "create", "p", data_dir=data_dir)

    result = json.loads(
        tagvision("image", "add", "p", "--from-folders", str(tmp_path / "mixed"), "--json", data_dir=data_dir).stdout
    )
    status = {Path(i["sourceUrl"]).name: i["status"] for i in result["images"]}
    assert status == {
        good[0].name: "OK",
        good[1].name: "OK",
        good[2].name: "OK",
        "copy.jpg": "OKDuplicate",
        "truncated.jpg": "ErrorImageFormat",
        "notes.jpg": "ErrorImageFormat",
        "big.png": "ErrorImageSize",
        "wide.png": "ErrorImageDimensions",
    }
    assert result["isBatchSuccessful"] is False
    listed = json.loads(tagvision("image", "list", "p", "--json", data_dir=data_dir).stdout)
    assert len(listed) == 3 and all(i["tags"][0]["tagName"] == "hat" for i in listed)
    table = tagvision("image", "list", "p", data_dir=data_dir).stdout  # the table names each image's tags
    assert sum(line.split("│")[3].strip() == "hat" for line in table.splitlines() if line.count("│") == 5) == 3

    missing = tagvision("train", "nope", data_dir=data_dir, check=False)
    assert missing.returncode == 1 and "error: NotFoundProject" in missing.stderr
    assert "Traceback" not in missing.stderr


TAGS = ("longsleeve", "pants", "shirt", "t-shirt")


@pytest.mark.process
def test_a_kill_during_image_add_leaves_a_consistent_store_and_a_rerun_finishes(data_dir: Path, tmp_path: Path) -> None:
    """``kill -9`` at a forced point: the import has committed the batches before the 101st file and written
    blobs of the next batch, whose rows wait for the database lock the test holds."""
    source = tmp_path / "many"
    for tag in TAGS:
        (source / tag).mkdir(parents=True)
        for path in photos(CLOTHING, "train", tag, 100):
            (source / tag / path.name).symlink_to(path)
    listed = sorted(source.glob("*/*"))  # the order the import reads them in: folders, then files, sorted
    gate, gate_bytes = listed[100], listed[100].read_bytes()
    tagvision("project", "create", "p", data_dir=data_dir)
    tagvision("tag", "create", "p", *TAGS, data_dir=data_dir)  # so the import's first write is its first batch
    process, at_gate = _import_killed_at(source, data_dir, listed[0].read_bytes(), gate, gate_bytes)
    assert process.returncode == -signal.SIGKILL, "the import finished before it could be killed"

    with sqlite3.connect(data_dir / "tagvision.db") as connection:
        assert connection.execute("pragma integrity_check").fetchone()[0] == "ok"
        rows = connection.execute("select sha256 from images").fetchall()
    assert 64 <= len(rows) == at_gate < 400, "nothing of the batch in flight was committed"
    for (sha,) in rows:
        blob = data_dir / "blobs" / sha[:2] / sha[2:]
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == sha, "every row has its complete blob"
    gate_sha = hashlib.sha256(gate_bytes).hexdigest()
    assert blob_path(data_dir, gate_bytes).is_file() and (gate_sha,) not in rows, "killed between blob and row"

    put_back(gate, gate_bytes)
    rerun = tagvision("image", "add", "p", "--from-folders", str(source), "--json", data_dir=data_dir)
    statuses = [i["status"] for i in json.loads(rerun.stdout)["images"]]
    assert statuses.count("OKDuplicate") == len(rows) and statuses.count("OK") == 400 - len(rows)
    assert _count(data_dir / "tagvision.db", "select count(*) from images") == 400
    assert _count(data_dir / "tagvision.db", "select count(*) from image_tags") == 400


def _import_killed_at(
    source: Path, data_dir: Path, first: bytes, gate: Path, gate_bytes: bytes
) -> tuple[subprocess.Popen, int]:
    """Run ``tagvision image add --from-folders SOURCE`` in a process; ``kill -9`` it once it has read ``gate``
    (``gate_bytes``) and stored that file's blob, while its rows wait for the write lock. Returns the process
    and the number of rows committed when it reached ``gate``; ``first`` is the first file it reads."""
    database, log = data_dir / "tagvision.db", data_dir.parent / "import.log"
    command = [sys.executable, "-m", "tagvision.cli", "image", "add", "p", "--from-folders", str(source)]
    process: subprocess.Popen | None = None
    try:
        with log.open("wb") as output, write_lock(database):  # no batch commits until the gate is in place
            process = subprocess.Popen([*command, "--data-dir", str(data_dir)], stdout=output, stderr=output)
            wait_until(blob_path(data_dir, first).is_file, process, "the first blob (every file listed)", log.read_text)
            swap_for_fifo(gate)
        writer = wait_until(lambda: reader_arrived(gate), process, "the import reaching the gate", log.read_text)
        at_gate = _count(database, "select count(*) from images")  # it waits on the gate: no more rows come
        with write_lock(database):
            feed(writer, gate_bytes)
            wait_until(blob_path(data_dir, gate_bytes).is_file, process, "the gate's blob", log.read_text)
            process.kill()  # while the lock still holds its rows back
            process.wait()
    finally:
        if process is not None and process.poll() is None:  # a wait failed: the import would wait for ever
            process.kill()
            process.wait()
    return process, at_gate


def _count(database: Path, query: str) -> int:
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)) as connection:
        return connection.execute(query).fetchone()[0]


def test_keys_are_made_once_private_and_rotatable(data_dir: Path, monkeypatch) -> None:
    data_dir.mkdir()  # keys never make a data directory (tests/test_cli_workflow.py)
    first = json.loads(tagvision("keys", "--json", data_dir=data_dir).stdout)
    assert set(first) == {"dataDir", "endpoint", "serverRunning", "trainingKey", "predictionKey"}
    assert len(first["trainingKey"]) == 32 and first["trainingKey"] != first["predictionKey"]
    assert (data_dir / "keys.json").stat().st_mode & 0o777 == 0o600
    assert json.loads(tagvision("keys", "--json", data_dir=data_dir).stdout) == first  # stable

    rotated = json.loads(tagvision("keys", "--json", "--regenerate", "training", data_dir=data_dir).stdout)
    assert rotated["trainingKey"] != first["trainingKey"] and rotated["predictionKey"] == first["predictionKey"]
    assert (data_dir / "keys.json").stat().st_mode & 0o777 == 0o600
    bad = tagvision("keys", "--regenerate", "admin", data_dir=data_dir, check=False)
    assert bad.returncode == 1 and "error: BadRequest:" in bad.stderr

    monkeypatch.setenv("TAGVISION_TRAINING_KEY", "operator-given-key")
    assert json.loads(tagvision("keys", "--json", data_dir=data_dir).stdout)["trainingKey"] == "operator-given-key"

"""The scaled-out deployment on this machine (docs/deploy.md): PostgreSQL, blobs in an S3 bucket, two API replicas
(``tagvision serve --no-worker``) and two ``tagvision worker`` processes, each with a data dir of its own, the
schema migrated once by ``tagvision db upgrade``.

One module-scoped topology, driven as a load balancer would be: the official SDK alternates between the
replicas through Microsoft's quickstart; a publish, an unpublish and a key rotation on one replica hold on the
other; 8 clients upload through both while a worker trains; and ``kill -9`` of the worker that runs a training,
at a point the test forces (a row lock the test holds blocks the training's write of one embedding), lets the
other worker take it over once the lease lapses, and not before.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from azure.cognitiveservices.vision.customvision.prediction import CustomVisionPredictionClient
from azure.cognitiveservices.vision.customvision.prediction.models import CustomVisionErrorException
from azure.cognitiveservices.vision.customvision.training import CustomVisionTrainingClient
from azure.cognitiveservices.vision.customvision.training.models import ImageFileCreateBatch, ImageFileCreateEntry
from msrest.authentication import ApiKeyCredentials

from tests.conftest import CLOTHING, MODELS, REPO, photos
from tests.gates import wait_for
from tests.server import Server, Worker

pytestmark = [pytest.mark.slow, pytest.mark.process]

COMPACT = "0732100f-1a38-4e49-a514-c9b44c697ab5"
LEASE = 10.0  # seconds: short, so the takeover comes soon; the keeper renews every third of it
GIVE_UP = 600.0  # a give-up deadline only: a slow machine must never fail a test


@dataclass
class Topology:
    replicas: list[Server]
    workers: list[Worker]
    env: dict[str, str]
    database: str  # the SQLAlchemy URL
    s3: object  # tests.s3.S3Server
    bucket: str
    root: Path

    def sql(self, query: str, *params) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.database.replace("postgresql+psycopg://", "postgresql://")) as connection:
            return connection.execute(query, params).fetchall()

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "tagvision.cli", *args, "--data-dir", str(self.root / "cli")],
            cwd=REPO,
            env={**os.environ, "TAGVISION_MODELS_DIR": str(MODELS), **self.env},
            capture_output=True,
            text=True,
            timeout=GIVE_UP,
        )


@pytest.fixture(scope="module")
def topology(postgres, s3_server, tmp_path_factory) -> Iterator[Topology]:
    root = tmp_path_factory.mktemp("topology")
    database = postgres.create_database("topology")
    bucket = s3_server.new_bucket()
    env = {
        "TAGVISION_DATABASE_URL": database,
        **s3_server.env(bucket, "tagvision"),
        "TAGVISION_MIGRATE_AT_OPEN": "0",  # replicas and workers never migrate: db upgrade did, once
        "TAGVISION_JOB_LEASE_SECONDS": str(LEASE),
        "TAGVISION_WORKER_POLL_SECONDS": "0.2",
    }
    shared = Topology([], [], env, database, s3_server, bucket, root)
    upgraded = shared.cli("db", "upgrade")
    assert upgraded.returncode == 0 and "Upgraded the schema from nothing to" in upgraded.stdout, upgraded.stderr
    assert shared.cli("db", "status").returncode == 0
    try:
        for k in range(2):
            shared.replicas.append(Server(root / f"replica{k}", env, ("--no-worker",)).start())
        for k in range(2):
            shared.workers.append(Worker(root / f"worker{k}", env).start())
        yield shared
    finally:
        for process in shared.replicas + shared.workers:
            process.stop()
        postgres.drop_database(database)


def trainer(server: Server) -> CustomVisionTrainingClient:
    return CustomVisionTrainingClient(
        server.endpoint, ApiKeyCredentials(in_headers={"Training-key": server.training_key})
    )


def predictor(server: Server, key: str | None = None) -> CustomVisionPredictionClient:
    credentials = ApiKeyCredentials(in_headers={"Prediction-key": key or server.prediction_key})
    return CustomVisionPredictionClient(server.endpoint, credentials)


def trained(client: CustomVisionTrainingClient, project_id: str, iteration_id: str):
    iteration = wait_for(
        lambda: (i := client.get_iteration(project_id, iteration_id)).status != "Training" and i, "the training"
    )
    assert iteration.status == "Completed", iteration.training_error_details
    return iteration


def job_done(topology: Topology, target_id: str, columns: str) -> list[tuple]:
    """``columns`` of the job for ``target_id`` once it is Done (its worker writes the iteration first)."""
    query = f"SELECT {columns} FROM jobs WHERE target_id = %s AND status = 'Done'"
    return wait_for(lambda: topology.sql(query, target_id), "the job to be closed")


def entries(paths: list[Path], tag_id: str) -> ImageFileCreateBatch:
    return ImageFileCreateBatch(
        images=[ImageFileCreateEntry(name=p.name, contents=p.read_bytes(), tag_ids=[tag_id]) for p in paths]
    )


def test_quickstart_through_both_replicas_and_a_publish_seen_by_the_other(topology: Topology) -> None:
    """Microsoft's quickstart, each call to the other replica than the one before (as a round-robin balancer
    sends them); the iteration is trained by one of the workers."""
    a, b = topology.replicas
    project = trainer(a).create_project("quickstart", domain_id=COMPACT)
    tags = {
        name: (trainer(b) if k % 2 else trainer(a)).create_tag(project.id, name)
        for k, name in enumerate(("hat", "shoes", "dress"))
    }
    for k, (name, tag) in enumerate(tags.items()):
        batch = entries(photos(CLOTHING, "train", name, 12), tag.id)
        assert (trainer(a) if k % 2 else trainer(b)).create_images_from_files(project.id, batch).is_batch_successful
    assert trainer(a).get_tagged_image_count(project.id) == trainer(b).get_tagged_image_count(project.id) == 36
    started = trainer(a).train_project(project.id)
    iteration = trained(trainer(b), project.id, started.id)
    (worker, attempt), *_ = job_done(topology, iteration.id, "worker, attempt")
    assert worker in {w.name for w in topology.workers} and attempt == 1

    trainer(b).publish_iteration(project.id, iteration.id, "live", "resource")
    unseen = [(tag, p.read_bytes()) for tag in tags for p in photos(CLOTHING, "test", tag, 3)]
    results = [predictor(a).classify_image(project.id, "live", data) for _, data in unseen]  # published on b
    assert {r.iteration for r in results} == {iteration.id}
    assert sum(r.predictions[0].tag_name == tag for r, (tag, _) in zip(results, unseen, strict=True)) >= 7
    hat = unseen[0][1]

    trainer(a).unpublish_iteration(project.id, iteration.id)
    with pytest.raises(CustomVisionErrorException) as gone:
        predictor(b).classify_image(project.id, "live", hat)
    assert gone.value.error.code == "NotFoundIteration"
    trainer(a).publish_iteration(project.id, iteration.id, "again", "resource")
    assert predictor(b).classify_image(project.id, "again", hat).iteration == iteration.id


def test_a_key_rotated_anywhere_is_refused_by_every_replica(topology: Topology) -> None:
    old = topology.replicas[0].prediction_key
    rotated = topology.cli("keys", "--regenerate", "prediction", "--json")
    assert rotated.returncode == 0, rotated.stderr
    new = json.loads(rotated.stdout)["predictionKey"]
    assert new != old
    started = time.monotonic()
    for replica in topology.replicas:
        url = replica.prediction("/00000000-0000-0000-0000-000000000000/classify/iterations/x/image")
        wait_for(lambda u=url: httpx.post(u, headers={"Prediction-Key": old}).status_code == 401, "the old key refused")
        assert httpx.post(url, headers={"Prediction-Key": new}).status_code == 400  # let in: no image sent
        replica.prediction_key = new
    print(f"\nkey rotation seen by both replicas {time.monotonic() - started:.2f} s after the CLI returned")


def test_eight_clients_upload_through_both_replicas_while_a_worker_trains(topology: Topology) -> None:
    a, b = topology.replicas
    t = httpx.Client(base_url=a.training(), headers=a.training_headers, timeout=120)
    project = next(p for p in t.get("/projects").json() if p["name"] == "quickstart")
    pid = project["id"]
    tag_ids = {tag["name"]: tag["id"] for tag in t.get(f"/projects/{pid}/tags").json()}
    before = t.get(f"/projects/{pid}/images/count").json()
    retrain = t.post(f"/projects/{pid}/train", params={"forceTrain": "true"}).raise_for_status().json()

    pool = [(tag, p) for tag in ("dress", "hat", "shoes") for p in photos(CLOTHING, "train", tag, 32, skip=12)]
    shares = [pool[k::8][:12] for k in range(8)]
    accepted: list[str] = []
    failures: list[str] = []
    lock = threading.Lock()

    def uploader(k: int) -> None:
        replica = topology.replicas[k % 2]
        with httpx.Client(base_url=replica.training(), headers=replica.training_headers, timeout=120) as client:
            for tag, path in shares[k]:
                response = client.post(
                    f"/projects/{pid}/images",
                    params={"tagIds": tag_ids[tag]},
                    files=[("imageData", (path.name, path.read_bytes()))],
                )
                with lock:
                    if response.status_code == 200:
                        accepted.extend(i["image"]["id"] for i in response.json()["images"] if i["status"] == "OK")
                    else:
                        failures.append(f"{response.status_code} {response.text[:200]}")

    threads = [threading.Thread(target=uploader, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(GIVE_UP)
    assert failures == []
    assert len(accepted) == len(set(accepted)) == 96
    assert trained(trainer(b), pid, retrain["id"]).status == "Completed"
    for replica in (a, b):
        with httpx.Client(base_url=replica.training(), headers=replica.training_headers, timeout=120) as client:
            assert client.get(f"/projects/{pid}/images/count").json() == before + 96
            found = set()
            for start in range(0, len(accepted), 256):
                ids = ",".join(accepted[start : start + 256])
                found |= {i["id"] for i in client.get(f"/projects/{pid}/images/id", params={"imageIds": ids}).json()}
            assert found == set(accepted)
    hashes = [row[0] for row in topology.sql("SELECT sha256 FROM images WHERE project_id = %s", pid)]
    assert len(hashes) == before + 96
    s3 = topology.s3.client()
    for sha in hashes:  # every row's blob is in the bucket, holding the bytes its name says
        body = s3.get_object(Bucket=topology.bucket, Key=f"tagvision/{sha[:2]}/{sha[2:]}")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == sha


def test_kill_9_of_the_training_worker_the_other_takes_over_after_the_lease(topology: Topology) -> None:
    import psycopg

    from tagvision import backbone, domains

    a, b = topology.replicas
    t = httpx.Client(base_url=b.training(), headers=b.training_headers, timeout=120)
    pid = t.post("/projects", params={"name": "takeover", "domainId": COMPACT}).raise_for_status().json()["id"]
    chosen = {tag: photos(CLOTHING, "train", tag, 24) for tag in ("pants", "shirt", "skirt", "shorts")}
    for tag, paths in chosen.items():
        tag_id = t.post(f"/projects/{pid}/tags", params={"name": tag}).raise_for_status().json()["id"]
        files = [("imageData", (p.name, p.read_bytes())) for p in paths]
        t.post(f"/projects/{pid}/images", params={"tagIds": tag_id}, files=files).raise_for_status()

    # The gate: the test writes one photo's embedding first and keeps its transaction open, so the training's
    # own write of that embedding waits on the row lock, in whichever worker claims it.
    held = hashlib.sha256(chosen["skirt"][10].read_bytes()).hexdigest()
    key = backbone.onnx_path(backbone.spec_for(domains.backbone_for(COMPACT)), MODELS).stem
    gate = psycopg.connect(topology.database.replace("postgresql+psycopg://", "postgresql://"))
    gate.execute(
        "INSERT INTO embeddings (sha256, backbone, plain, flipped) VALUES (%s, %s, %s, %s)",
        (held, key, b"\0" * 4, b"\0" * 4),
    )
    try:
        started = t.post(f"/projects/{pid}/train").raise_for_status().json()
        wait_for(
            lambda: topology.sql(
                "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE 'INSERT INTO embeddings%%'"
            ),
            "the training to reach the held embedding",
        )
        (holder, attempt, first_lease), *_ = topology.sql(
            "SELECT worker, attempt, lease_expires FROM jobs WHERE target_id = %s", started["id"]
        )
        victim = next(w for w in topology.workers if w.name == holder)
        survivor = next(w for w in topology.workers if w is not victim)
        assert attempt == 1

        # Alive and renewing, the victim keeps the job past its first lease: the survivor does not take it.
        wait_for(lambda: time.time() > first_lease + 1, "the first lease to pass")
        (still, attempt, lease), *_ = topology.sql(
            "SELECT worker, attempt, lease_expires FROM jobs WHERE target_id = %s", started["id"]
        )
        assert (still, attempt) == (victim.name, 1) and lease > first_lease

        victim.kill()
        (lease_at_kill,), *_ = topology.sql("SELECT lease_expires FROM jobs WHERE target_id = %s", started["id"])
    finally:
        gate.rollback()
        gate.close()

    finished = wait_for(
        lambda: (i := t.get(f"/projects/{pid}/iterations/{started['id']}").json())["status"] != "Training" and i,
        "the survivor to finish the training",
    )
    assert finished["status"] == "Completed", finished.get("trainingErrorDetails")
    (worker, attempt, claimed), *_ = job_done(topology, started["id"], "worker, attempt, started")
    assert (worker, attempt) == (survivor.name, 2)
    assert claimed >= lease_at_kill, "taken over only once the killed worker's lease had lapsed"
    print(f"\ntaken over {claimed - lease_at_kill:.2f} s after the lease lapsed (lease {LEASE:.0f} s)")
    assert f"train {started['id']}: started by {survivor.name} (attempt 2)" in survivor.log()
    iterations = t.get(f"/projects/{pid}/iterations").json()
    assert [i["status"] for i in iterations] == ["Completed"]
    performance = t.get(f"/projects/{pid}/iterations/{started['id']}/performance").json()
    assert len(performance["perTagPerformance"]) == 4
    victim.start()  # back for any later test

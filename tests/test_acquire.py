"""Gathering images for tags, end to end, against a loopback Openverse serving real photos:
the service (targets, licences, duplicates, broken links, resuming), the CLI (tags in, trained,
performance out) and the API (a background job with progress; review, then commit)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tagvision.config import Settings
from tagvision.service import Service
from tests.conftest import CLOTHING, REPO, photos
from tests.fake_providers import unresolvable
from tests.fake_providers.openverse import make_openverse
from tests.server import Server

pytestmark = pytest.mark.slow
TAGS = ("hat", "shoes", "dress")


@pytest.fixture
def openverse(tmp_path: Path, monkeypatch):
    """A loopback Openverse: 14 photos per tag, one broken link, one near-duplicate (a resized,
    recompressed copy of the first photo of each tag) and a repeated result across pages."""
    library = {}
    for tag in TAGS:
        paths = photos(CLOTHING, "train", tag, 14)
        copy = tmp_path / f"{tag}-copy.jpg"
        with Image.open(paths[0]) as img:
            img.resize((img.width * 3 // 4, img.height * 3 // 4)).save(copy, quality=70)
        library[tag] = [*paths[:5], copy, *paths[5:]]
    fake = make_openverse(library, broken=True, duplicate=True)
    monkeypatch.setenv("TAGVISION_OPENVERSE_URL", fake.url)
    monkeypatch.setenv("TAGVISION_ALLOW_PRIVATE_URLS", "1")
    yield fake
    fake.close()


@pytest.fixture
def open_service(data_dir: Path):
    """Opens the service from the environment as it is by then: settings are read once, when it opens."""
    opened: list[Service] = []

    def open_() -> Service:
        opened.append(Service.open(Settings.load(data_dir)))
        return opened[-1]

    yield open_
    for service in opened:
        service.close()


def image_requests(fake) -> list[str]:
    return [r.path for r in fake.requests_to("/img/")]


def test_acquisition_fills_each_tag_keeps_licences_and_resumes(openverse, open_service) -> None:
    svc = open_service()
    svc.projects.create("shop", domain="general-compact")
    started = svc.acquisitions.start("shop", ["hat", "Shoes", "dress"], per_tag=8, providers=("openverse",))
    assert [t["tag"] for t in started.to_json()["tags"]] == ["hat", "Shoes", "dress"]
    done = svc.acquisitions.run(started.id)
    assert done.status == "Completed", done.error
    by_tag = {t["tag"]: t for t in done.to_json()["tags"]}
    for tag in by_tag.values():
        assert tag["added"] == tag["wanted"] == 8 and tag["done"]
    assert all(t["refused"] == 1 for t in by_tag.values())  # the broken link of each tag
    assert all(t["duplicates"] == 1 for t in by_tag.values()), by_tag  # the resized copy of the first photo

    counts = {t.name: t.image_count for t in svc.projects.list_tags("shop")}
    assert counts == {"hat": 8, "Shoes": 8, "dress": 8}
    listed = svc.images.list("shop")
    assert len(listed) == 24
    source = listed[0].source
    assert source["provider"] == "openverse" and source["licence"].startswith("CC") and source["licenceUrl"]
    assert source["creator"].startswith("Photographer") and source["landingPage"].startswith(openverse.url)
    assert "licensed under" in source["attribution"] and source["url"].startswith(openverse.url)
    fetched = image_requests(openverse)

    # Asking for more: only the missing images are fetched; nothing settled is looked at again.
    more = svc.acquisitions.run(svc.acquisitions.start("shop", list(TAGS), per_tag=12).id)
    assert more.status == "Completed", more.error
    again = image_requests(openverse)[len(fetched) :]
    assert not set(again) & set(fetched), "nothing fetched twice"
    by_tag = {t["tag"]: t for t in more.to_json()["tags"]}
    assert all(t["hadBefore"] == 8 and t["wanted"] == 4 and t["added"] == 4 for t in by_tag.values())
    typed = [(t.tag_id, t.tag, t.had_before, t.wanted, t.added, t.done) for t in more.tags]
    assert typed == [(t["tagId"], t["tag"], 8, 4, 4, True) for t in more.to_json()["tags"]]
    assert all(t["duplicates"] == 0 and t["refused"] == 0 for t in by_tag.values()), by_tag
    assert len(svc.images.list("shop")) == 36

    # The same request once more: every tag is full, nothing is downloaded.
    before = len(image_requests(openverse))
    full = svc.acquisitions.run(svc.acquisitions.start("shop", list(TAGS), per_tag=12).id)
    assert full.status == "Completed" and all(t["added"] == 0 for t in full.to_json()["tags"])
    assert len(image_requests(openverse)) == before


def test_interrupted_acquisition_fetches_only_what_is_missing(openverse, open_service) -> None:
    svc = open_service()
    svc.projects.create("shop", domain="general-compact")
    first = svc.acquisitions.start("shop", ["hat"], per_tag=10)
    seen: list[int] = []

    def stop_early(_stage: str, done: int, _total: int) -> None:
        seen.append(done)
        if done >= 3:
            svc.acquisitions.cancel("shop", first.id)

    stopped = svc.acquisitions.run(first.id, progress=stop_early)
    assert stopped.status == "Cancelled"
    # Cancelled as the third image was added: downloads then in flight finished, but were kept as spares.
    assert len(svc.images.list("shop")) == 3
    fetched = image_requests(openverse)
    resumed = svc.acquisitions.run(svc.acquisitions.start("shop", ["hat"], per_tag=10).id)
    assert resumed.status == "Completed" and len(svc.images.list("shop")) == 10
    assert not set(image_requests(openverse)[len(fetched) :]) & set(fetched)


def test_unreachable_provider_fails_fast_and_names_the_offline_way(open_service, monkeypatch) -> None:
    looked_up = unresolvable(monkeypatch)
    monkeypatch.setenv("TAGVISION_OPENVERSE_URL", "http://no-such-host.invalid")
    svc = open_service()
    svc.projects.create("offline", domain="general-compact")
    done = svc.acquisitions.run(svc.acquisitions.start("offline", ["hat"], per_tag=5).id)
    assert done.status == "Failed" and "--provider library" in done.error
    assert done.provider_unreachable and svc.acquisitions.list("offline")[0].provider_unreachable
    assert looked_up == ["no-such-host.invalid"]  # failed at the first try: no retries, no backoff


def test_cli_tags_in_images_acquired_trained_performance_out(openverse, tmp_path: Path) -> None:
    data = tmp_path / "cli"

    def tagvision(*args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "tagvision.cli", *args, "--data-dir", str(data)],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=REPO,
        )
        assert result.returncode == 0, result.stderr
        return result

    tagvision("project", "create", "shoes", "--domain", "general-compact")
    acquired = tagvision("acquire", "shoes", "--tags", "hat,shoes,dress", "--per-tag", "8", "--provider", "openverse")
    assert "hat" in acquired.stdout and "8" in acquired.stdout
    images = json.loads(tagvision("image", "list", "shoes", "--json").stdout)
    assert len(images) == 24 and all(i["source"]["licence"] for i in images)
    assert {i["source"]["provider"] for i in images} == {"openverse"}
    tagvision("train", "shoes")
    performance = json.loads(tagvision("performance", "shoes", "--json").stdout)
    assert {t["name"] for t in performance["perTagPerformance"]} == set(TAGS)
    assert performance["precision"] > 0.7
    printed = tagvision("performance", "shoes").stdout
    assert "precision" in printed.lower() and "hat" in printed


def test_api_runs_acquisitions_in_the_background_with_review(openverse, tmp_path: Path) -> None:
    env = {"TAGVISION_OPENVERSE_URL": openverse.url}
    with Server(tmp_path / "server", env=env) as server:
        t = httpx.Client(base_url=server.training(), headers=server.training_headers, timeout=600)
        compact = "0732100f-1a38-4e49-a514-c9b44c697ab5"
        pid = t.post("/projects", params={"name": "api", "domainId": compact}).json()["id"]
        started = (
            t.post(f"/projects/{pid}/acquisitions", json={"tags": ["hat", "shoes"], "perTag": 4, "review": True})
            .raise_for_status()
            .json()
        )
        assert started["status"] == "Running" and [x["tag"] for x in started["tags"]] == ["hat", "shoes"]
        deadline = time.monotonic() + 600
        while (state := t.get(f"/projects/{pid}/acquisitions/{started['id']}").json())["status"] == "Running":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert state["status"] == "Completed" and all(x["added"] == 4 for x in state["tags"])
        assert t.get(f"/projects/{pid}/images/count").json() == 0  # waiting for review
        items = t.get(f"/projects/{pid}/acquisitions/{started['id']}", params={"items": "true"}).json()["items"]
        pending = [i for i in items if i["status"] == "Pending"]
        assert len(pending) == 8
        thumb = httpx.get(pending[0]["thumbnailUri"])  # signed: no key needed
        assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.content)).format == "JPEG"
        chosen = [i["id"] for i in pending[:5]]
        summary = t.post(f"/projects/{pid}/acquisitions/{started['id']}/commit", json={"itemIds": chosen}).json()
        assert [i["status"] for i in summary["images"]] == ["OK"] * 5
        assert t.get(f"/projects/{pid}/images/count").json() == 5
        items = t.get(f"/projects/{pid}/acquisitions/{started['id']}", params={"items": "true"}).json()["items"]
        assert (
            sorted(i["status"] for i in items if i["status"] in ("Added", "Rejected"))
            == ["Added"] * 5 + ["Rejected"] * 3
        )
        rejected = {i["source"]["key"] for i in items if i["status"] == "Rejected"}
        assert all(i["reason"] == "Rejected" for i in items if i["status"] == "Rejected")

        # The next page: the tags are filled up again to 4 each, the rejected candidates never offered again.
        more = t.post(f"/projects/{pid}/acquisitions/{started['id']}/more").raise_for_status().json()
        assert more["status"] == "Running"
        while (state := t.get(f"/projects/{pid}/acquisitions/{started['id']}").json())["status"] == "Running":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert state["status"] == "Completed" and all(x["added"] == 4 for x in state["tags"]), state
        items = t.get(f"/projects/{pid}/acquisitions/{started['id']}", params={"items": "true"}).json()["items"]
        pending = [i for i in items if i["status"] == "Pending"]
        assert len(pending) == 3 and not {i["source"]["key"] for i in pending} & rejected
        waiting = t.post(f"/projects/{pid}/acquisitions/{started['id']}/more")
        assert waiting.status_code == 400 and "commit" in waiting.json()["message"]

        bad = t.post(f"/projects/{pid}/acquisitions", json={"tags": ["x"], "providers": ["flickr"]})
        assert bad.status_code == 400 and bad.json()["code"] == "BadRequestInvalid"
        library = t.post(
            f"/projects/{pid}/acquisitions", json={"tags": ["x"], "providers": ["library"], "library": "/etc"}
        )
        assert library.status_code == 400 and "TAGVISION_LIBRARY_ROOTS" in library.json()["message"]


def test_library_finds_by_name_then_by_look_offline(svc, tmp_path: Path) -> None:
    """A catalogue folder: a 'Hats' folder found by name; unnamed files ranked by likeness to the tag's images."""
    import hashlib
    import shutil

    library = tmp_path / "catalogue"
    (library / "Hats").mkdir(parents=True)
    for path in photos(CLOTHING, "train", "hat", 4, skip=20):
        shutil.copy(path, library / "Hats" / path.name)
    unnamed = library / "inbox"
    unnamed.mkdir()
    truth = {}
    for tag in ("shoes", "pants", "t-shirt"):
        for path in photos(CLOTHING, "train", tag, 10, skip=20):
            name = hashlib.sha1(path.name.encode()).hexdigest()[:12] + ".jpg"
            shutil.copy(path, unnamed / name)
            truth[name] = tag
    svc.projects.create("cat", domain="general-compact")
    svc.projects.create_tags("cat", ["hat", "shoes"])
    from tagvision.service import NewImage

    seeds = [NewImage(p.name, p.read_bytes, ("shoes",)) for p in photos(CLOTHING, "train", "shoes", 5)]
    assert svc.images.add("cat", seeds).is_batch_successful

    view = svc.acquisitions.run(
        svc.acquisitions.start(
            "cat", ["hat", "shoes"], per_tag=4, providers=("library",), library=str(library), library_anywhere=True
        ).id
    )
    assert view.status == "Completed", view.error
    by_tag = {t.name: t for t in svc.projects.list_tags("cat")}
    assert by_tag["hat"].image_count == 4 and by_tag["shoes"].image_count == 5 + 4
    acquired_shoes = [i for i in svc.images.list("cat", tag="shoes") if i.source.get("provider") == "library"]
    looked_like = [truth[Path(i.source["url"]).name] for i in acquired_shoes]
    assert looked_like.count("shoes") >= 3, looked_like  # by look alone: the files carry no names
    assert all(i.source["key"].startswith("library:") for i in acquired_shoes)

"""Datasets out and in: folders, CSV and COCO keep every image's tags (and, where the format has room,
metadata, regions and tag types); the CLI's ``dataset export`` / ``dataset import``; what a bad dataset says."""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tagvision.config import Settings
from tagvision.service import NewImage, Service
from tests.conftest import CLOTHING, MODELS, need, photos


@pytest.fixture
def wardrobe(svc: Service) -> str:
    """A multilabel project: images with one or two tags, metadata, two untagged, one with regions."""
    need(CLOTHING)
    project = svc.projects.create("wardrobe", classification="multilabel")
    svc.projects.create_tags(project.id, ["top", "warm", "formal/evening"])
    svc.projects.create_tags(project.id, ["nothing"], type_="Negative")
    top = next(t.id for t in svc.projects.list_tags(project.id) if t.name == "top")
    items = [
        NewImage(str(p), p.read_bytes, ("top", "warm"), {"file": p.name}, {"season": "winter"})
        for p in photos(CLOTHING, "train", "longsleeve", 4)
    ]
    items += [
        NewImage(str(p), p.read_bytes, ("top", "formal/evening"), {"file": p.name})
        for p in photos(CLOTHING, "train", "shirt", 3)
    ]
    items += [
        NewImage(str(p), p.read_bytes, ("nothing",), {"file": p.name}, {"why": "shoes"})
        for p in photos(CLOTHING, "train", "shoes", 2)
    ]
    items += [NewImage(str(p), p.read_bytes, (), {"file": p.name}) for p in photos(CLOTHING, "train", "hat", 2)]
    box = {"regionId": "r", "tagId": top, "left": 0.25, "top": 0.125, "width": 0.5, "height": 0.5}
    items.append(NewImage("boxed", photos(CLOTHING, "train", "t-shirt", 1)[0].read_bytes, ("top",), regions=(box,)))
    summary = svc.images.add(project.id, items)
    assert summary.count("OK") == len(items)
    return project.id


def described(svc: Service, project: str, metadata: bool = True) -> dict:
    return {
        i.sha256: (
            tuple(sorted(n for _, n, _ in i.tags)),
            i.metadata if metadata else None,
            sorted((r["tagName"], round(r["left"], 6), round(r["top"], 6), round(r["width"], 6)) for r in i.regions),
        )
        for i in svc.images.list(project)
    }


@pytest.mark.parametrize("fmt", ["folders", "csv", "coco"])
def test_a_dataset_exported_and_imported_keeps_its_tags(fmt: str, svc: Service, wardrobe: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    exported = svc.datasets.export(wardrobe, out, fmt)
    assert exported.images == 12
    other = Service.open(Settings.load(tmp_path / "other"))
    try:
        result = other.datasets.import_("moved", out if fmt != "csv" else out / "dataset.csv", fmt)
        copies = 7 if fmt == "folders" else 0  # the 7 images with two tags are in two folders
        assert (result.added, result.already_there, result.refused) == (12, copies, [])
        assert other.projects.get("moved").classification_type == "Multilabel", "several tags per image"
        rich = fmt != "folders"
        before, after = described(svc, wardrobe, rich), described(other, "moved", rich)
        if not rich:
            assert exported.left_out and all(not regions for *_, regions in after.values())
            before = {sha: (tags, None, []) for sha, (tags, _, _) in before.items()}
        assert after == before
        types = {t.name: t.type for t in other.projects.list_tags("moved")}
        assert types["nothing"] == ("Regular" if fmt == "csv" else "Negative")
        assert set(types) == {"top", "warm", "formal/evening", "nothing"}
    finally:
        other.close()


def test_dataset_commands_and_the_same_photo_in_two_folders(tmp_path: Path, class_folders: Path) -> None:
    shirt = photos(CLOTHING, "train", "shirt", 1)[0]
    for tag in ("dress", "hat"):
        (class_folders / tag / "same.jpg").write_bytes(shirt.read_bytes())
    (class_folders / "_untagged").mkdir()
    (class_folders / "_untagged" / "loose.jpg").write_bytes(photos(CLOTHING, "train", "pants", 1)[0].read_bytes())

    def tagvision(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "tagvision.cli", *args, "--data-dir", str(data_dir)]
        env = {**os.environ, "TAGVISION_MODELS_DIR": str(MODELS)}
        return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)

    data = tmp_path / "data"
    imported = tagvision(
        "dataset", "import", "clothes", str(class_folders), "--type", "multiclass", "--json", data_dir=data
    )
    assert imported.returncode == 0, imported.stderr
    assert '"added": 26' in imported.stdout and '"alreadyThere": 1' in imported.stdout
    assert "ErrorTagLimitExceed" in imported.stdout, "a multiclass image cannot take the second folder's tag"

    both = tagvision("dataset", "import", "both", str(class_folders), "--json", data_dir=data)
    assert both.returncode == 0 and '"added": 26' in both.stdout
    exported = tagvision("dataset", "export", "both", "-o", str(tmp_path / "coco"), "--format", "coco", data_dir=data)
    assert exported.returncode == 0 and "Wrote 26 images (3 tags)" in exported.stdout
    svc = Service.open(Settings.load(data))
    try:
        same = [i for i in svc.images.list("both") if len(i.tags) == 2]
        assert len(same) == 1 and sorted(n for _, n, _ in same[0].tags) == ["dress", "hat"]
        assert svc.projects.get("both").classification_type == "Multilabel"
        assert len(svc.images.list("both", untagged=True)) == 1
    finally:
        svc.close()

    bad = tmp_path / "bad.csv"
    bad.write_text('image,tags,metadata\nx.jpg,hat,"{not json"\n')
    refused = tagvision("dataset", "import", "clothes", str(bad), "--format", "csv", data_dir=data)
    assert refused.returncode == 1 and "error: BadRequestInvalid: bad.csv line 2" in refused.stderr


def test_a_csv_can_name_images_by_url(tmp_path: Path, monkeypatch) -> None:
    need(CLOTHING)
    root = tmp_path / "www"
    root.mkdir()
    hat = photos(CLOTHING, "train", "hat", 1)[0]
    (root / "hat.jpg").write_bytes(hat.read_bytes())
    quiet = type("Quiet", (http.server.SimpleHTTPRequestHandler,), {"log_message": lambda *_: None})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(quiet, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        csv_file = tmp_path / "list.csv"
        url = f"http://127.0.0.1:{httpd.server_address[1]}/hat.jpg"
        csv_file.write_text(f'image,tags,metadata\n{url},hat,"{{""shop"": ""web""}}"\n')
        monkeypatch.setenv("TAGVISION_ALLOW_PRIVATE_URLS", "0")
        svc = Service.open(Settings.load(tmp_path / "a"))
        try:
            result = svc.datasets.import_("p", csv_file, "csv")
            assert result.added == 0 and result.refused[0].status == "ErrorSource", "loopback refused"
        finally:
            svc.close()
        monkeypatch.setenv("TAGVISION_ALLOW_PRIVATE_URLS", "1")
        svc = Service.open(Settings.load(tmp_path / "b"))
        try:
            result = svc.datasets.import_("p", csv_file, "csv")
            (image,) = svc.images.list("p")
            assert result.added == 1 and image.metadata == {"shop": "web"} and image.source == {"name": url, "url": url}
        finally:
            svc.close()
    finally:
        httpd.shutdown()
        httpd.server_close()

"""Refusals users can see and undo, on real photos made small: a library of images under 224 px acquires
with the default settings (kept with a warning); every refused candidate names its reason in the service,
the acquisition's items (the API's ``?items=true``), the CLI summary and ``image list --refused``; a
refusal a setting caused is looked at again when the setting changes, the others with --retry-refused."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tagvision.service import NewImage, Service
from tagvision.service.views import TagProgress
from tagvision.sources import reasons
from tests.conftest import CLOTHING, REPO, photos

pytestmark = pytest.mark.slow


def shrink(source: Path, target: Path, side: int) -> tuple[int, int]:
    """A real photo with its shorter side made ``side`` pixels (a thumbnail-sized copy, as catalogues hold)."""
    with Image.open(source) as im:
        scale = side / min(im.size)
        small = im.convert("RGB").resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)
    target.parent.mkdir(parents=True, exist_ok=True)
    small.save(target, quality=90)
    return small.size


@pytest.fixture
def small_library(tmp_path: Path) -> Path:
    """Two libraries (each searched alone, so no file is offered to the other tag by look):
    hats/hat/: 6 photos at 150 px, a copy of one, a text file named .jpg, a truncated JPEG;
    shoes/shoes/: 4 photos at 150 px and 3 at 80 px. Every photo is under the backbone's 224 px input."""
    root = tmp_path / "libraries"
    hats, shoes = root / "hats/hat", root / "shoes/shoes"
    for n, path in enumerate(photos(CLOTHING, "train", "hat", 6, skip=20)):
        shrink(path, hats / f"h{n}.jpg", 150)
    shutil.copy(hats / "h0.jpg", hats / "h0-copy.jpg")
    (hats / "notes.jpg").write_text("a list of hats to buy, not a photo")
    whole = (hats / "h1.jpg").read_bytes()
    (hats / "broken.jpg").write_bytes(whole[: len(whole) // 3])
    for n, path in enumerate(photos(CLOTHING, "train", "shoes", 7, skip=20)):
        shrink(path, shoes / f"s{n}.jpg", 150 if n < 4 else 80)
    return root


def cli(data_dir: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "tagvision.cli", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def by_key(items: list[dict]) -> dict[str, dict]:
    return {i["source"]["url"].rsplit("/", 2)[-2] + "/" + i["source"]["url"].rsplit("/", 1)[-1]: i for i in items}


def test_small_library_acquires_with_defaults_and_refusals_say_why(
    svc: Service, data_dir: Path, small_library: Path
) -> None:
    svc.projects.create("small", domain="general-compact")
    svc.projects.create_tags("small", ["hat", "shoes"])
    seeds = [
        NewImage(p.name, p.read_bytes, (tag,)) for tag in ("hat", "shoes") for p in photos(CLOTHING, "train", tag, 5)
    ]
    assert svc.images.add("small", seeds).is_batch_successful

    # Defaults: no minimum size, as uploads. The small photos are kept, with a warning.
    hat = svc.acquisitions.run(
        svc.acquisitions.start(
            "small",
            ["hat"],
            per_tag=20,
            providers=("library",),
            library=str(small_library / "hats"),
            library_anywhere=True,
        ).id
    )
    assert hat.status == "Completed", hat.error
    (progress,) = hat.tags
    items = by_key(svc.acquisitions.get("small", hat.id, with_items=True).to_json()["items"])
    assert items["hat/notes.jpg"]["status"] == "Refused" and items["hat/notes.jpg"]["reason"] == reasons.NOT_AN_IMAGE
    assert (
        items["hat/broken.jpg"]["reason"] == reasons.UNDECODABLE and "truncated" in items["hat/broken.jpg"]["message"]
    )
    twins = [items["hat/h0.jpg"], items["hat/h0-copy.jpg"]]
    duplicate = next(i for i in twins if i["status"] == "Duplicate")
    original = next(i for i in twins if i is not duplicate)
    assert duplicate["reason"] == reasons.DUPLICATE
    assert duplicate["detail"]["duplicateOf"]["key"] == original["source"]["key"]
    assert original["source"]["title"] in duplicate["message"]
    photos_found = [items[f"hat/h{n}.jpg"] if n else original for n in range(6)]
    kept = [i for i in photos_found if i["status"] == "Added"]
    assert len(kept) + sum(i["status"] == "Doubtful" for i in photos_found) == 6 and len(kept) >= 5
    assert all(i["detail"]["warning"]["code"] == reasons.SMALLER_THAN_MODEL for i in kept)
    assert all(0 <= i["score"] <= 1 for i in kept)  # hat has 5 images: judged by look
    assert progress.reasons == {reasons.NOT_AN_IMAGE: 1, reasons.UNDECODABLE: 1} and progress.refused == 2
    assert progress.duplicates == 1 and progress.small == len(kept)
    listed = [i for i in svc.images.list("small", tag="hat") if i.source.get("provider") == "library"]
    assert len(listed) == len(kept) and all(min(i.width, i.height) == 150 for i in listed)

    # A stricter setting refuses the 80 px shoes, each naming its size; the CLI counts them by reason.
    printed = cli(
        data_dir,
        "acquire",
        "small",
        "--tags",
        "shoes",
        "--per-tag",
        "20",
        "--library",
        str(small_library / "shoes"),
        "--min-side",
        "100",
    )
    assert "refused 3: 3 too small" in printed, printed
    refused = json.loads(cli(data_dir, "image", "list", "small", "--refused", "--json"))
    too_small = [c for c in refused if c["reason"] == reasons.TOO_SMALL]
    assert sorted(c["source"]["title"] for c in too_small) == ["s4.jpg", "s5.jpg", "s6.jpg"]
    assert all(c["message"].endswith("is smaller than 100 px on a side.") and c["tag"] == "shoes" for c in too_small)
    assert all(
        c["detail"]["minSide"] == 100 and min(c["detail"]["width"], c["detail"]["height"]) == 80 for c in too_small
    )
    every = {reasons.TOO_SMALL, reasons.NOT_AN_IMAGE, reasons.UNDECODABLE, reasons.DUPLICATE}
    assert every <= {c["reason"] for c in refused} <= every | {reasons.DOUBTFUL}  # a photo may not look its tag
    assert all(c["message"].startswith("It looks more like") for c in refused if c["reason"] == reasons.DOUBTFUL)
    table = cli(data_dir, "image", "list", "small", "--refused")
    assert "too small" in table and "not an image" in table and "80x" in table

    # The setting back to its default: the too-small ones are looked at again and added; the rest stay refused.
    def gather(tag: str, **options) -> TagProgress:
        started = svc.acquisitions.start(
            "small", [tag], per_tag=20, providers=("library",), library_anywhere=True, **options
        )
        done = svc.acquisitions.run(started.id)
        assert done.status == "Completed", done.error
        (progress,) = done.tags
        return progress

    shoes = gather("shoes", library=str(small_library / "shoes"))
    assert shoes.refused == 0 and shoes.added + shoes.doubtful == 3 and shoes.small == shoes.added
    assert not [c for c in svc.acquisitions.set_aside("small") if c.reason == reasons.TOO_SMALL]
    hat = gather("hat", library=str(small_library / "hats"))
    assert hat.refused == hat.added == hat.duplicates == 0  # nothing new: its refusals stay settled
    assert hat.skipped == 9

    # --retry-refused looks again at the others: still refused, for the same reasons, shown once each.
    progress = gather("hat", library=str(small_library / "hats"), retry_refused=True)
    assert progress.reasons == {reasons.NOT_AN_IMAGE: 1, reasons.UNDECODABLE: 1}
    assert progress.duplicates == 1  # the copy again: its twin is in the project now
    shown = [c for c in svc.acquisitions.set_aside("small") if c.tag == "hat"]
    assert sorted(c.reason for c in shown if c.status == "Refused") == [reasons.NOT_AN_IMAGE, reasons.UNDECODABLE]
    newest = svc.acquisitions.list("small")[-1].id
    assert all(c.acquisition_id == newest for c in shown if c.status in ("Refused", "Duplicate"))

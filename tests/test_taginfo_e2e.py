"""Retail end to end on real clothing photos: a catalogue CSV for the 10 clothing-small tags (brand, price, sizes as
a list, an HTML-looking note, one reference image URL per row) imported with the CLI into a running server's
data directory, then trained and published; the information arrives with every prediction over HTTP, through
the official SDK (which must deserialise as ever while the extension fields are in the raw JSON), the CLI and
the portal's quick test (a product card, screenshot in tagvision-data/screenshots/taginfo-*.png), where the
HTML-looking text shows as text.
"""

from __future__ import annotations

import functools
import http.server
import json
import re
import threading
import time
from pathlib import Path

import httpx
import pytest
from azure.cognitiveservices.vision.customvision.prediction import CustomVisionPredictionClient
from azure.cognitiveservices.vision.customvision.training import CustomVisionTrainingClient
from azure.cognitiveservices.vision.customvision.training.models import PredictionQueryToken
from msrest.authentication import ApiKeyCredentials

from tests.cli import tagvision
from tests.conftest import CLOTHING, REPO, need, photos
from tests.server import Server

pytestmark = [pytest.mark.slow, pytest.mark.process]

TAGS = ("dress", "hat", "longsleeve", "outwear", "pants", "shirt", "shoes", "shorts", "skirt", "t-shirt")
PER_TAG = 6
PUBLISHED = "shopModel"
NOTE = '<b>Bold {tag}</b><img src=x onerror="alert(1)"> & <script>alert("x")</script>'
SHOTS = REPO / "tagvision-data" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
TRAINING_TIMEOUT = 600.0  # a give-up deadline only


def product(tag: str, index: int) -> dict:
    """The catalogue row of a tag, as it must come back."""
    sizes: list = [38, 39, 40, 41, 42] if tag == "shoes" else ["S", "M", "L"] if index % 2 else ["XS", "S", "M"]
    return {
        "brand": f"Brand {index}",
        "price": 19.5 + index * 10,
        "sizes": sizes,
        "inStock": index % 3 != 0,
        "note": NOTE.format(tag=tag),
    }


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *_args) -> None:
        pass


@pytest.fixture(scope="module")
def photo_host(tmp_path_factory):
    """Reference (train/) and test photos on a loopback HTTP server: -> (folder, base URL)."""
    need(CLOTHING)
    root = tmp_path_factory.mktemp("shop-www")
    for tag in TAGS:
        for split, skip, count in (("train", PER_TAG, 1), ("test", 0, 2)):
            (root / split / tag).mkdir(parents=True)
            for path in photos(CLOTHING, split, tag, count, skip=skip):
                (root / split / tag / path.name).write_bytes(path.read_bytes())
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def url_of(photo_host, split: str, tag: str) -> str:
    root, base = photo_host
    return f"{base}/{split}/{tag}/{sorted((root / split / tag).iterdir())[0].name}"


@pytest.fixture(scope="module")
def shop(tmp_path_factory, photo_host) -> dict:
    """A running server whose project got its catalogue from the CLI, then photos, rules, training and publishing
    over the API."""
    root = tmp_path_factory.mktemp("shop")
    server = Server(root / "data")
    try:
        server.start()
        data_dir = server.data_dir
        tagvision("project", "create", "clothing", "--domain", "general-compact", data_dir=data_dir)
        lines = ["tag,brand,price,sizes,inStock,note,photos"]
        for i, tag in enumerate(TAGS):
            row = product(tag, i)
            cells = [tag, row["brand"], str(row["price"]), json.dumps(row["sizes"]), str(row["inStock"]).lower()]
            cells += [row["note"], url_of(photo_host, "train", tag)]
            lines.append(",".join('"' + c.replace('"', '""') + '"' for c in cells))
        catalogue = root / "clothing.csv"
        catalogue.write_text("\n".join(lines) + "\n")
        env = {"TAGVISION_ALLOW_PRIVATE_URLS": "1"}
        imported = tagvision(
            "catalogue",
            "import",
            "clothing",
            str(catalogue),
            "--images",
            "photos",
            "--json",
            data_dir=data_dir,
            env=env,
        )
        report = json.loads(imported.stdout)
        assert (report["created"], report["failed"], report["imagesAdded"]) == (len(TAGS), 0, len(TAGS)), report

        t = httpx.Client(base_url=server.training(), headers=server.training_headers, timeout=300)
        pid = next(p["id"] for p in t.get("/projects").json() if p["name"] == "clothing")
        tags = {tag["name"]: tag for tag in t.get(f"/projects/{pid}/tags").json()}
        assert {name: tag["information"] for name, tag in tags.items()} == {
            tag: product(tag, i) for i, tag in enumerate(TAGS)
        }
        assert all(tag["imageCount"] == 1 for tag in tags.values()), "each row's reference image, tagged"
        for name in TAGS:
            files = [("imageData", (p.name, p.read_bytes())) for p in photos(CLOTHING, "train", name, PER_TAG)]
            response = t.post(f"/projects/{pid}/images", params={"tagIds": tags[name]["id"]}, files=files)
            assert response.status_code == 200, response.text
        rules = [{"rule": "most-probable-above", "attribute": "price", "threshold": 0.3, "name": "price"}]
        assert t.put(f"/projects/{pid}/rules", json={"rules": rules}).status_code == 200
        iteration = t.post(f"/projects/{pid}/train").json()
        deadline = time.monotonic() + TRAINING_TIMEOUT
        while iteration["status"] == "Training":
            assert time.monotonic() < deadline, "training did not finish in time"
            time.sleep(0.5)
            iteration = t.get(f"/projects/{pid}/iterations/{iteration['id']}").json()
        assert iteration["status"] == "Completed", iteration
        publish = {"publishName": PUBLISHED, "predictionId": "shop"}
        assert t.post(f"/projects/{pid}/iterations/{iteration['id']}/publish", params=publish).json() is True
        yield {"server": server, "pid": pid, "tags": tags, "iteration": iteration["id"], "http": t}
    finally:
        server.stop()


def expected(shop: dict, tag_name: str) -> dict:
    return product(tag_name, TAGS.index(tag_name))


# --------------------------------------------------------------------------- HTTP


def test_information_arrives_with_every_prediction_over_http(shop, photo_host) -> None:
    server, pid = shop["server"], shop["pid"]
    p = httpx.Client(base_url=server.prediction(), headers=server.prediction_headers, timeout=300)
    for tag in ("dress", "shoes", "hat"):
        data = photos(CLOTHING, "test", tag, 1)[0].read_bytes()
        response = p.post(f"/{pid}/classify/iterations/{PUBLISHED}/image/nostore", files={"imageData": data})
        assert response.status_code == 200 and response.headers["content-type"] == "application/json"
        body = response.json()
        for entry in body["predictions"]:
            assert entry["information"] == expected(shop, entry["tagName"]), "every tag carries its information"
        top = body["predictions"][0]
        assert body["decision"]["price"]["inputs"][0]["tagName"] == top["tagName"]
        if top["probability"] >= 0.3:
            assert body["decision"]["price"]["value"] == expected(shop, top["tagName"])["price"]
        assert "<script>" in top["information"]["note"], "JSON carries the text as it is; showing it is escaped"

    url = url_of(photo_host, "test", "shoes")
    response = p.post(
        f"/{pid}/classify/iterations/{PUBLISHED}/url",
        params={"attributes": "brand,sizes", "informationThreshold": 0.5},
        json={"url": url},
        headers={"X-Tagvision-Metadata": '{"store": "berlin-3", "till": "7"}'},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["metadata"] == {"store": "berlin-3", "till": "7"}
    for entry in body["predictions"]:
        if entry["probability"] >= 0.5:
            assert set(entry["information"]) == {"brand", "sizes"}
        else:
            assert "information" not in entry


# --------------------------------------------------------------------------- the official SDK


def test_the_official_sdk_deserialises_unchanged_with_the_extensions_in_the_raw_json(shop, photo_host) -> None:
    server, pid = shop["server"], shop["pid"]
    predictor = CustomVisionPredictionClient(
        server.endpoint, ApiKeyCredentials(in_headers={"Prediction-key": server.prediction_key})
    )
    trainer = CustomVisionTrainingClient(
        server.endpoint, ApiKeyCredentials(in_headers={"Training-key": server.training_key})
    )
    data = photos(CLOTHING, "test", "pants", 1)[0].read_bytes()
    url = url_of(photo_host, "test", "skirt")
    calls = {
        "classify_image": lambda **kw: predictor.classify_image(pid, PUBLISHED, data, **kw),
        "classify_image_url": lambda **kw: predictor.classify_image_url(pid, PUBLISHED, url, **kw),
        "quick_test_image": lambda **kw: trainer.quick_test_image(pid, data, iteration_id=shop["iteration"], **kw),
        "quick_test_image_url": lambda **kw: trainer.quick_test_image_url(
            pid, url, iteration_id=shop["iteration"], **kw
        ),
    }
    for name, call in calls.items():
        result = call()
        raw = call(raw=True)
        wire = raw.response.json()
        assert all("information" in entry for entry in wire["predictions"]) and "decision" in wire, name
        for parsed in (result, raw.output):
            assert parsed.project == pid and parsed.iteration == shop["iteration"] and parsed.id, name
            assert [x.tag_name for x in parsed.predictions] == [x["tagName"] for x in wire["predictions"]], name
            assert [x.probability for x in parsed.predictions] == [x["probability"] for x in wire["predictions"]]
            assert sorted(x.tag_name for x in parsed.predictions) == sorted(TAGS)
            assert all(x.tag_type == "Regular" and x.bounding_box is None for x in parsed.predictions)
            assert set(parsed.as_dict()) <= {"id", "project", "iteration", "created", "predictions"}, name
            assert all("information" not in x.as_dict() for x in parsed.predictions), name

    # The SDK's own tag calls keep working and leave the information alone.
    tag_id = shop["tags"]["skirt"]["id"]
    tag = trainer.get_tag(pid, tag_id)
    assert (tag.name, tag.image_count) == ("skirt", PER_TAG + 1)
    tag.description = "knee-length and longer"
    updated = trainer.update_tag(pid, tag.id, tag)
    assert (updated.name, updated.description) == ("skirt", "knee-length and longer")
    assert shop["http"].get(f"/projects/{pid}/tags/{tag_id}").json()["information"] == expected(shop, "skirt")
    assert {t.name for t in trainer.get_tags(pid)} == set(TAGS)

    # An SDK user sends metadata as a custom header; the stored prediction keeps it and is found by it.
    order = predictor.classify_image(pid, PUBLISHED, data, custom_headers={"X-Tagvision-Metadata": "order=A-77"})
    found = trainer.query_predictions(pid, PredictionQueryToken(max_count=100)).results
    assert order.id in {r.id for r in found}
    by_order = shop["http"].post(f"/projects/{pid}/predictions/query", json={"metadata": {"order": "A-77"}}).json()
    assert [r["id"] for r in by_order["results"]] == [order.id]
    assert by_order["results"][0]["metadata"] == {"order": "A-77"}


# --------------------------------------------------------------------------- the CLI


def test_cli_predict_json_carries_information(shop) -> None:
    files = [photos(CLOTHING, "test", tag, 1)[0] for tag in ("hat", "t-shirt")]
    ran = tagvision("predict", "clothing", *map(str, files), "--json", data_dir=shop["server"].data_dir)
    lines = [json.loads(line) for line in ran.stdout.splitlines()]
    assert [line["image"] for line in lines] == [str(f) for f in files]
    for line in lines:
        assert all(entry["information"] == expected(shop, entry["tagName"]) for entry in line["predictions"])
        assert line["decision"]["price"]["inputs"][0]["tagName"] == line["predictions"][0]["tagName"]
    records = tagvision(
        "records", "search", "clothing", "--meta", "store=berlin-3", "--json", data_dir=shop["server"].data_dir
    )
    found = [json.loads(line) for line in records.stdout.splitlines()]
    assert [r["metadata"] for r in found] == [{"store": "berlin-3", "till": "7"}]
    assert all("information" in entry for entry in found[0]["predictions"])


# --------------------------------------------------------------------------- the portal


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
    if not CHROMIUM.exists():
        pytest.skip(f"Debian's Chromium is not installed at {CHROMIUM} (apt-get install -y chromium)")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu", "--no-first-run"]
        )
        yield chromium
        chromium.close()


def shot(target, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"taginfo-{name}.png"
    target.screenshot(path=str(path), **({"full_page": True} if hasattr(target, "goto") else {}))
    return path


def test_the_portal_shows_product_cards_and_edits_information(shop, browser) -> None:
    from playwright.sync_api import expect

    server, pid = shop["server"], shop["pid"]
    stored = httpx.post(
        server.prediction(f"/{pid}/classify/iterations/{PUBLISHED}/image"),
        params={"metadata": "field=F-12"},
        headers=server.prediction_headers,
        files={"imageData": photos(CLOTHING, "test", "dress", 1)[0].read_bytes()},
        timeout=300,
    )
    assert stored.status_code == 200, stored.text
    context = browser.new_context(base_url=server.endpoint, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(120_000)
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    try:
        page.goto("/login")
        page.get_by_label("Training key").fill(server.training_key)
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_role("heading", name="Projects", exact=True)).to_be_visible()

        page.goto(f"/projects/{pid}/quicktest")
        page.get_by_label("Image file").set_input_files(str(photos(CLOTHING, "test", "shoes", 1)[0]))
        page.get_by_role("button", name="Test").click()
        top = page.get_by_role("list", name="Probability per tag").locator(".bar-label").first.inner_text()
        card = page.locator("[data-product-card]").first
        expect(card).to_be_visible()
        expect(card.get_by_role("heading", level=3)).to_contain_text(top)
        row = expected(shop, top)
        expect(card).to_contain_text(row["brand"])
        expect(card).to_contain_text(", ".join(str(s) for s in row["sizes"]))
        expect(card).to_contain_text(row["note"])  # the markup shows as text...
        assert card.locator("b, img, script").count() == 0  # ...and never becomes elements
        expect(page.locator("[data-decision]")).to_contain_text("price")
        shot(card, "product-card")
        shot(page, "quick-test")
        assert dialogs == [], "no script from the catalogue ran"

        page.goto(f"/projects/{pid}/catalogue")
        expect(page.locator("table.catalogue tbody tr")).to_have_count(len(TAGS))
        shot(page, "catalogue")
        upload = {"name": "update.csv", "mimeType": "text/csv", "buffer": b'tag,price\nhat,99\nskirt,"12\n'}
        page.get_by_label("Catalogue file (.csv, .json or .jsonl)").set_input_files(upload)
        page.get_by_label("Only show what would change").check()
        page.get_by_role("button", name="Import").click()
        expect(page.locator("[data-import-report]")).to_contain_text("Would change")
        expect(page.locator("[data-import-errors]")).to_contain_text("Line 3: cannot be read as CSV")
        shot(page, "catalogue-dry-run")
        assert shop["http"].get(f"/projects/{pid}/tags/{shop['tags']['hat']['id']}").json()["information"] == (
            expected(shop, "hat")
        ), "a dry run changes nothing"
        page.get_by_role("link", name="hat", exact=True).click()
        expect(page.get_by_role("heading", name=re.compile(r"^hat"), level=2)).to_be_visible()
        expect(page.get_by_label("Attribute name 2")).to_have_value("price")
        page.get_by_label("Value of attribute 2").fill("24.5")
        page.get_by_role("button", name="Add attribute").click()  # 5 attributes, 3 empty rows, and this one
        expect(page.get_by_label("Attribute name 9")).to_have_value("")
        page.get_by_label("Attribute name 6").fill("colours")
        page.get_by_label("Kind of attribute 6").select_option(label="List")
        page.get_by_label("Value of attribute 6").fill("red, navy, 42")
        page.get_by_role("button", name="Save attributes").click()
        expect(page.locator(".flash.ok")).to_contain_text("Saved the information of hat")
        saved = json.loads(page.get_by_label("The tag's information as a JSON object").input_value())
        assert saved == {**expected(shop, "hat"), "price": 24.5, "colours": ["red", "navy", 42]}
        shot(page, "tag-page")

        page.get_by_label("The tag's information as a JSON object").fill('{"brand": "x", "brand": "y"}')
        page.get_by_role("button", name="Save JSON").click()
        expect(page.get_by_role("alert")).to_contain_text("appears twice")
        page.get_by_label("Value of attribute 2").fill("cheap")
        page.get_by_label("Kind of attribute 2").select_option(label="Number")
        page.get_by_role("button", name="Save attributes").click()
        expect(page.get_by_role("alert")).to_contain_text("'cheap' is not a number")
        assert shop["http"].get(f"/projects/{pid}/tags/{shop['tags']['hat']['id']}").json()["information"] == saved

        page.goto(f"/projects/{pid}/records")
        page.get_by_label("Metadata key").fill("field")
        page.get_by_label("Value").fill("F-12")
        page.get_by_role("button", name="Search").click()
        expect(page.locator("[data-records] tbody tr")).to_have_count(1)
        expect(page.locator(f"[data-record='{stored.json()['id']}']")).to_contain_text("field: F-12")
        exported = page.request.get(f"/projects/{pid}/records/export?format=csv&key=field&value=F-12")
        assert exported.ok and exported.headers["content-disposition"] == 'attachment; filename="predictions.csv"'
        lines = exported.text().splitlines()
        assert len(lines) == 2 and "metadata.field" in lines[0] and stored.json()["id"] in lines[1]
        shot(page, "records")
    finally:
        context.close()
    shop["http"].patch(f"/projects/{pid}/tags/{shop['tags']['hat']['id']}", json={"information": expected(shop, "hat")})

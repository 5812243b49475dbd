"""The web portal in a real headless Chromium (Debian's ``chromium``, driven by Playwright) against a real
``tagvision serve``, on real clothing photos: the whole workflow, 300 uploads with progress, searching a
(loopback) Openverse for images of tags and reviewing them, advanced training, and access control.

Screenshots of every page land in ``tagvision-data/screenshots/``. Playwright's own browsers are never
downloaded: the tests skip, saying why, when /usr/bin/chromium (``apt-get install chromium``) is missing.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tagvision.config import Settings
from tagvision.service import Service
from tagvision.web.training import minutes
from tests.conftest import CLOTHING, REPO, photos
from tests.fake_providers.openverse import make_openverse
from tests.server import Server

pytestmark = [pytest.mark.slow, pytest.mark.process]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = REPO / "tagvision-data" / "screenshots"
TAGS = ("dress", "hat", "shoes")
PER_TAG = 8
TRAINING_TIMEOUT_MS = 600_000  # give-up deadlines only: a slow machine must never fail a test
WAIT_MS = 600_000

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright for Python is not installed (pip install -e '.[test]')"
)
expect = sync_api.expect


# ---------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"Debian's Chromium is not installed at {CHROMIUM} (apt-get install -y chromium; .ci/run does it)")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def openverse():
    """A loopback Openverse serving real photos of hats, shoes and dresses (not the ones the workflow uploads)."""
    fake = make_openverse({tag: photos(CLOTHING, "train", tag, 10, skip=40) for tag in ("hat", "shoes", "dress")})
    fake.image_latency = 0.2
    yield fake
    fake.close()


class Held:
    """A photo the fake provider sends only once the test lets it go (``FakeServer.photos`` holds these)."""

    def __init__(self, path: Path, gate: threading.Event) -> None:
        self.path, self.gate = path, gate

    def read_bytes(self) -> bytes:
        self.gate.wait(600)
        return self.path.read_bytes()


def hold(fake, tag: str, free: int) -> threading.Event:
    """Hold back the downloads of ``tag``'s photos after the first ``free``, until the event is set."""
    gate = threading.Event()
    for n, path in enumerate(photos(CLOTHING, "train", tag, 10, skip=40)):  # as make_openverse names them
        if n >= free:
            fake.photos[str(uuid.uuid5(uuid.NAMESPACE_URL, f"openverse/{tag}/{path.name}"))] = Held(path, gate)
    return gate


@pytest.fixture(scope="module")
def server(tmp_path_factory, openverse):
    root = tmp_path_factory.mktemp("web")
    (root / "library").mkdir()
    env = {
        "TAGVISION_OPENVERSE_URL": openverse.url,
        "TAGVISION_WIKIMEDIA_URL": "http://no-such-host.invalid",
        "TAGVISION_LIBRARY_ROOTS": str(root / "library"),
    }
    with Server(root / "data", env=env) as running:
        yield running


@pytest.fixture
def page(browser, server):
    context = browser.new_context(base_url=server.endpoint, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(120_000)  # a give-up deadline; a busy machine only waits longer
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    tab = context.new_page()
    tab.console_errors = watch_console(tab)
    yield tab
    context.close()


def watch_console(tab) -> list[str]:
    """Every console error and uncaught exception of the tab, with the page it happened on (a 404 favicon,
    an invalid ``pattern`` attribute and a failed fetch all land here)."""
    errors: list[str] = []
    tab.on("console", lambda m: errors.append(f"{tab.url}: {m.text}") if m.type == "error" else None)
    tab.on("pageerror", lambda e: errors.append(f"{tab.url}: {e}"))
    return errors


def login(page, server: Server) -> None:
    page.goto("/login")
    page.get_by_label("Training key").fill(server.training_key)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Projects", exact=True)).to_be_visible()


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def create_project(page, name: str) -> str:
    page.goto("/")
    page.get_by_label("Name").fill(name)
    page.get_by_label("Description").fill("Clothing photos from the test suite")
    page.get_by_label("Domain").select_option(label="General (compact)")
    page.get_by_role("button", name="Create project").click()
    expect(page.get_by_role("heading", name=name, level=1)).to_be_visible()
    return re.search(r"/projects/([^/]+)/images", page.url).group(1)


def upload_files(page, paths: list[Path], tag: str | None) -> None:
    page.get_by_label("Tag for these images").select_option(label=tag or "No tag (tag them later)")
    page.get_by_label("Image files").set_input_files([str(p) for p in paths])
    page.get_by_role("button", name=f"Upload {len(paths)} files").click()
    expect(page.locator("[data-upload-status]")).to_contain_text(f"Done: {len(paths)} images added", timeout=WAIT_MS)


def drop_files(page, paths: list[Path]) -> None:
    """Drag and drop onto the drop zone: a DataTransfer holding the photos, dispatched as a drop event."""
    files = [{"name": p.name, "data": base64.b64encode(p.read_bytes()).decode()} for p in paths]
    transfer = page.evaluate_handle(
        """files => {
        const dt = new DataTransfer();
        for (const f of files) {
            const bytes = Uint8Array.from(atob(f.data), c => c.charCodeAt(0));
            dt.items.add(new File([bytes], f.name, {type: "image/jpeg"}));
        }
        return dt;
    }""",
        files,
    )
    page.dispatch_event("[data-dropzone]", "drop", {"dataTransfer": transfer})
    page.get_by_role("button", name=f"Upload {len(paths)} files").click()
    expect(page.locator("[data-upload-status]")).to_contain_text(f"Done: {len(paths)} images added", timeout=WAIT_MS)


def tab(page, name: str):
    return page.get_by_role("navigation", name="Project").get_by_role("link", name=name, exact=True)


def tag_count(page, tag: str):
    return page.locator(".filter-list a", has_text=re.compile(rf"^{tag}\b")).locator(".count")


def train_and_wait(page, project_id: str, iteration: str) -> None:
    page.goto(f"/projects/{project_id}/train")
    page.get_by_role("button", name="Train", exact=True).click()
    status = page.locator("[data-poll-text]")
    expect(status).to_contain_text(f"{iteration}: ")
    expect(status).to_contain_text(f"{iteration}: Completed", timeout=TRAINING_TIMEOUT_MS)
    expect(page.locator(".flash", has_text=f"{iteration} is training")).to_have_count(0)  # the banner goes
    expect(page.get_by_role("link", name=f"See the performance of {iteration}")).to_be_visible()
    expect(page.locator("#iteration-table tbody tr").first).to_contain_text("Completed")


# ---------------------------------------------------------------------- the whole workflow


def test_whole_workflow_in_the_browser(page, server, tmp_path):
    """Create, upload (file picker and drop zone), tag, train, threshold, publish, export, quick test,
    re-tag a stored prediction, retrain: Iteration 2."""
    login(page, server)
    shot(page, "01-projects-empty")
    project_id = create_project(page, "Clothing")

    page.get_by_label("New tag").fill(", ".join(TAGS))
    page.get_by_role("button", name="Add tag").click()
    expect(page.locator(".flash.ok")).to_contain_text("dress, hat, shoes created")

    upload_files(page, photos(CLOTHING, "train", "dress", PER_TAG), "dress")  # file picker, tagged on upload
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    page.get_by_label("Image files").set_input_files([str(broken), str(photos(CLOTHING, "train", "dress", 1)[0])])
    page.get_by_role("button", name="Upload 2 files").click()  # per-file outcomes, as sentences
    expect(page.locator("[data-upload-status]")).to_have_text(
        "Done: 0 images added, 1 already in the project, 1 not added (see below)."
    )
    expect(page.locator("[data-upload-errors] li")).to_have_text(
        ["broken.jpg: The file is not a JPEG, PNG, BMP, GIF or WebP image."]
    )
    upload_files(page, photos(CLOTHING, "train", "hat", PER_TAG), None)  # file picker, tagged below
    expect(page.locator("[data-upload-errors]")).to_be_hidden()
    drop_files(page, photos(CLOTHING, "train", "shoes", PER_TAG))  # drop zone, tagged below
    expect(page.locator("#project-meta")).to_contain_text(f"{3 * PER_TAG} images")

    for tag, skip in (("hat", PER_TAG), ("shoes", 0)):  # the untagged grid, newest first: shoes, then hats
        page.goto(f"/projects/{project_id}/images?untagged=1")
        boxes = page.locator('input[name="image"]')
        expect(boxes).to_have_count(2 * PER_TAG if tag == "hat" else PER_TAG)
        for k in range(skip, skip + PER_TAG):
            boxes.nth(k).check()
        expect(page.locator("[data-selected-count]")).to_have_text(f"{PER_TAG} selected")
        page.get_by_label("Tag", exact=True).select_option(label=tag)
        page.get_by_role("button", name="Tag selected").click()
        expect(page.locator(".flash.ok")).to_contain_text(f"{PER_TAG} images tagged {tag}.")
    page.goto(f"/projects/{project_id}/images")
    for tag in TAGS:
        expect(tag_count(page, tag)).to_have_text(str(PER_TAG))
    expect(tag_count(page, "Untagged")).to_have_text("0")
    page.get_by_role("link", name=re.compile(r"^hat")).click()
    expect(page.locator(".grid .tags").first).to_have_text("hat")
    shot(page, "02-training-images")

    train_and_wait(page, project_id, "Iteration 1")
    shot(page, "03-train")

    page.get_by_role("link", name="See the performance of Iteration 1").click()
    first = httpx.get(server.training(f"/projects/{project_id}/iterations"), headers=server.training_headers).json()[0]
    assert first["measuredOn"]["method"] == "cross-validation" and first["imageCount"] == 3 * PER_TAG, first
    expect(page.locator("[data-metrics-from]")).to_have_text(f"Figures from: {first['metricsFrom']}.")
    expect(page.locator(".figures [data-figure-std]")).to_have_count(2)  # folds differ: their spread is shown
    expect(page.get_by_label("Publish name")).to_have_value("Iteration1")  # nothing is published yet
    precision, recall = page.locator('[data-figure="precision"]'), page.locator('[data-figure="recall"]')
    before = (precision.inner_text(), recall.inner_text())
    assert all(re.fullmatch(r"\d+\.\d%", v) for v in before), before
    slider = page.get_by_label("Probability threshold")
    expect(slider).to_have_value("0.5")
    slider.focus()
    page.keyboard.press("Home")  # keyboard: threshold 0, every tag predicted for every image
    expect(page.locator("[data-threshold-text]")).to_have_text("0%")
    expect(precision).to_have_text("33.3%")  # 1 right tag in 3 for each image
    expect(recall).to_have_text("100.0%")
    assert (precision.inner_text(), recall.inner_text()) != before
    expect(page.locator("[data-threshold-announce]")).to_contain_text("precision 33.3%")
    slider.fill("0.95")
    expect(page.locator("[data-threshold-text]")).to_have_text("95%")
    expect(precision).not_to_have_text("33.3%")
    high = page.locator('tr[data-tag] [data-key="recall"]').all_inner_texts()
    assert len(high) == 3
    slider.fill("0.5")
    expect(precision).to_have_text(before[0])
    expect(recall).to_have_text(before[1])
    expect(page.locator("svg[data-pr-plot] polyline")).to_have_count(3)
    expect(page.locator("svg.matrix .cell-count")).to_have_count(9)
    matrix_total = sum(int(t) for t in page.locator("svg.matrix .cell-count").all_text_contents())
    assert matrix_total == 3 * PER_TAG

    page.get_by_label("Publish name").fill("clothes")
    page.get_by_role("button", name="Publish Iteration 1").click()
    expect(page.locator(".flash.ok")).to_contain_text("Iteration 1 is published as clothes")
    expect(page.locator(".badge")).to_have_text("Published as clothes")
    page.get_by_role("button", name="Export to ONNX").click()
    download = page.get_by_role("link", name="Download ONNX export")
    expect(download).to_be_visible(timeout=WAIT_MS)
    archive = page.request.get(download.get_attribute("href"))
    assert archive.ok and archive.body()[:2] == b"PK"
    shot(page, "04-performance")

    tab(page, "Prediction URL").click()
    image_url = page.get_by_label("URL", exact=True).first.input_value()
    assert image_url == f"{server.endpoint}/customvision/v3.0/Prediction/{project_id}/classify/iterations/clothes/image"
    expect(page.get_by_label("Prediction-Key")).to_have_value(server.prediction_key)
    expect(page.locator("textarea.code").first).to_contain_text(f"Prediction-Key: {server.prediction_key}")
    copy = page.locator('button[data-copy="image-url-1"]')
    expect(copy).to_have_text("Copy URL")
    copy.click()
    expect(copy).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == image_url
    probe = photos(CLOTHING, "test", "shoes", 1)[0]
    answer = httpx.post(
        image_url + "/nostore",
        headers={**server.prediction_headers, "Content-Type": "application/octet-stream"},
        content=probe.read_bytes(),
        timeout=60,
    )
    assert answer.status_code == 200 and answer.json()["predictions"][0]["tagName"] == "shoes", answer.text
    shot(page, "05-prediction-url")

    tab(page, "Quick test").click()
    tested = photos(CLOTHING, "test", "hat", 1)[0]
    page.get_by_label("Image file").set_input_files(str(tested))
    page.get_by_role("button", name="Test").click()
    chart = page.get_by_role("list", name="Probability per tag")
    expect(chart.locator("li")).to_have_count(3)
    expect(chart.locator("svg rect.bar-fill")).to_have_count(3)
    values = [float(v.rstrip("%")) for v in chart.locator(".bar-value").all_inner_texts()]
    assert values == sorted(values, reverse=True) and abs(sum(values) - 100) < 0.5, values
    top = chart.locator(".bar-label").first.inner_text()
    shot(page, "06-quick-test")

    tab(page, "Predictions").click()
    cards = page.locator(".prediction-card")
    expect(cards).to_have_count(1)
    expect(cards.first.locator(".bar-label").first).to_have_text(top)
    expect(cards.first.get_by_label("Tag of this image")).to_have_value(re.compile(".+"))  # the top tag, preselected
    shot(page, "07-predictions")
    expect(cards.first.get_by_label("New tag name")).to_be_hidden()  # until "New tag…" is chosen
    cards.first.get_by_label("Tag of this image").select_option(label="hat")  # confirm or correct: it is a hat
    page.evaluate("window.stayed = true")  # gone if the page reloads
    cards.first.get_by_role("button", name="Add to training images").click()
    expect(page.locator(".prediction-done")).to_have_text("Added to the training images as hat. Train again to use it.")
    assert page.evaluate("window.stayed === true"), "the card is updated in place, without a reload"
    expect(cards).to_have_count(0)
    expect(page.locator("[data-shown]")).to_have_text("0 shown")
    page.goto(f"/projects/{project_id}/images")
    expect(tag_count(page, "hat")).to_have_text(str(PER_TAG + 1))

    # Re-tag a tagged image in one step (multiclass: one tag each): a dress, tagged shoes by mistake.
    page.get_by_role("link", name=re.compile(r"^dress")).click()
    moved = page.locator('.grid input[name="image"]').first
    moved_id = moved.get_attribute("value")
    moved.check()
    page.get_by_label("Tag", exact=True).select_option(label="shoes")
    page.get_by_role("button", name="Tag selected").click()
    expect(page.locator(".flash.ok")).to_have_text("1 image tagged shoes.")
    expect(tag_count(page, "dress")).to_have_text(str(PER_TAG - 1))
    expect(tag_count(page, "shoes")).to_have_text(str(PER_TAG + 1))

    train_and_wait(page, project_id, "Iteration 2")
    page.goto(f"/projects/{project_id}/performance")
    expect(page.get_by_role("heading", name="Iteration 2", level=2)).to_be_visible()
    compared = page.locator("table").last.locator("tbody tr")
    expect(compared).to_have_count(2)
    expect(compared.first.locator("th")).to_have_text("Iteration 2")
    expect(compared.first.locator("td")).to_have_text(
        [
            "Completed",
            re.compile(r"^\d+-fold cross-validation$"),
            "3",
            str(3 * PER_TAG + 1),
            re.compile(r"%$"),
            re.compile(r"%$"),
            re.compile(r"%$"),
            "–",
        ]
    )
    expect(compared.last.locator("td").last).to_have_text("clothes")
    shot(page, "08-performance-iteration-2")

    # The mistaken dress is misclassified in cross-validation: re-tag it there, in one step.
    wrong = page.locator(f"#wrong-{moved_id}")
    expect(wrong).to_have_count(1)
    expect(wrong.locator(".tags")).to_have_text("Tagged shoes")
    expect(wrong.locator(".caption")).to_contain_text("Predicted dress")
    expect(wrong.get_by_label(re.compile("^Tag of "))).to_have_value(re.compile(".+"))
    shot(page, "08b-misclassified-retag")
    wrong.get_by_label(re.compile("^Tag of ")).select_option(label="dress")
    wrong.get_by_role("button", name="Re-tag").click()
    expect(page.locator(".flash.ok")).to_have_text("The image is now tagged dress. Train again to use it.")
    expect(page).to_have_url(re.compile(r"#wrong-heading$"))
    expect(page.locator(f"#wrong-{moved_id}")).to_have_count(0)

    republish_while_clients_poll(page, server, project_id, probe)

    page.once("dialog", lambda dialog: dialog.dismiss())  # Unpublish asks first; "no" keeps it published
    page.get_by_role("button", name="Unpublish").click()
    expect(page.locator(".badge")).to_have_text("Published as clothes")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Unpublish").click()
    expect(page.locator(".flash.ok")).to_have_text(
        "Iteration 2 is unpublished: the Prediction API no longer answers as clothes."
    )
    expect(page.get_by_label("Publish name")).to_have_value("Iteration2")

    # A stored prediction can go in under a tag the project does not have yet.
    tab(page, "Quick test").click()
    page.get_by_label("Image file").set_input_files(str(photos(CLOTHING, "test", "t-shirt", 1)[0]))
    page.get_by_role("button", name="Test").click()
    tab(page, "Predictions").click()
    card = page.locator(".prediction-card").first
    card.get_by_label("Tag of this image").select_option(label="New tag…")
    card.get_by_label("New tag name").fill("t-shirt")
    shot(page, "07b-predictions-new-tag")
    card.get_by_role("button", name="Add to training images").click()
    expect(page.locator(".prediction-done")).to_have_text(
        "Added to the training images as t-shirt. Train again to use it."
    )
    page.goto(f"/projects/{project_id}/images")
    expect(tag_count(page, "t-shirt")).to_have_text("1")

    page.set_viewport_size({"width": 390, "height": 844})  # a phone: nothing wider than the screen
    for path, name in (
        (f"/projects/{project_id}/images", "09-narrow-training-images"),
        (f"/projects/{project_id}/performance", "10-narrow-performance"),
    ):
        page.goto(path)
        shot(page, name)
        wide = page.evaluate("""() => Array.from(document.querySelectorAll('body *'))
            .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)
            .map(e => e.tagName + '.' + e.className + '#' + e.id).slice(0, 8)""")
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"), (path, wide)
    assert page.console_errors == [], page.console_errors


def republish_while_clients_poll(page, server: Server, project_id: str, probe: Path) -> None:
    """Publish Iteration 2 as "clothes", which Iteration 1 has, while two clients keep calling the Prediction
    URL: after the confirmation, the name moves in one step and no client sees anything but 200."""
    url = f"{server.endpoint}/customvision/v3.0/Prediction/{project_id}/classify/iterations/clothes/image/nostore"
    iterations = {
        i["name"]: i["id"]
        for i in httpx.get(
            server.training(f"/projects/{project_id}/iterations"), headers=server.training_headers
        ).json()
    }
    answers: list[tuple[int, str]] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(headers={**server.prediction_headers, "Content-Type": "application/octet-stream"}) as http:
            while not stop.is_set():
                response = http.post(url, content=probe.read_bytes(), timeout=120)
                answers.append((response.status_code, response.json().get("iteration", "")))

    clients = [threading.Thread(target=client, daemon=True) for _ in range(2)]
    for thread in clients:
        thread.start()
    try:
        deadline = time.monotonic() + 600
        while len(answers) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        publish_name = page.get_by_label("Publish name")
        expect(publish_name).to_have_value("clothes")  # the name apps call now, not "Iteration2"
        page.get_by_role("button", name="Publish Iteration 2").click()
        expect(page.get_by_role("heading", name="Replace Iteration 1 as clothes?")).to_be_visible()
        expect(page.locator("main")).to_contain_text(
            "Apps using the Prediction URL get Iteration 2's answers at once, with no downtime"
        )
        shot(page, "08c-republish-confirmation")
        page.get_by_role("button", name="Replace Iteration 1 with Iteration 2").click()
        expect(page.locator(".flash.ok")).to_contain_text("Iteration 2 is published as clothes in place of Iteration 1")
        expect(page.locator(".badge")).to_have_text("Published as clothes")
        swapped = len(answers)
        while time.monotonic() < deadline and not any(it == iterations["Iteration 2"] for _, it in answers[swapped:]):
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in clients:
            thread.join(120)
    statuses = [status for status, _ in answers]
    print(f"republish: {len(answers)} predictions during the swap, statuses {sorted(set(statuses))}")
    assert statuses.count(200) == len(statuses), [a for a in answers if a[0] != 200]
    assert {iterations["Iteration 1"], iterations["Iteration 2"]} <= {it for _, it in answers}


# ---------------------------------------------------------------------- 300 uploads


def test_uploading_300_images_shows_progress_and_never_freezes(page, server):
    login(page, server)
    project_id = create_project(page, "Three hundred")
    paths = photos(CLOTHING, "train", "t-shirt", 300)
    assert len({p.read_bytes() for p in paths}) == 300
    page.get_by_label("Image files").set_input_files([str(p) for p in paths])
    expect(page.locator("[data-upload-chosen]")).to_have_text("300 files ready to upload.")
    # Count animation frames and the longest gap between two during the upload: a frozen page has none.
    page.evaluate("""() => {
        window.frames_seen = 0; window.longest_gap = 0; let last = performance.now();
        const tick = now => { window.frames_seen++; window.longest_gap = Math.max(window.longest_gap, now - last);
                              last = now; if (!window.stop_counting) requestAnimationFrame(tick); };
        requestAnimationFrame(tick);
    }""")
    page.get_by_role("button", name="Upload 300 files").click()
    bar = page.locator("[data-upload-bar]")
    expect(bar).to_be_visible()
    seen: list[float] = []
    typed = False
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        value = float(bar.evaluate("b => b.value"))
        seen.append(value)
        if 0 < value < 300 and not typed:  # the page answers input mid-upload
            page.get_by_label("New tag").fill("typed during the upload")
            expect(page.get_by_label("New tag")).to_have_value("typed during the upload")
            shot(page, "11-upload-300-in-progress")
            typed = True
        if value >= 300:
            break
        page.wait_for_timeout(50)
    intermediate = sorted({v for v in seen if 0 < v < 300})
    assert typed and len(intermediate) >= 3, seen
    assert seen == sorted(seen)
    expect(page.locator("[data-upload-status]")).to_have_text("Done: 300 images added.")
    expect(page.locator("[data-upload-status]")).to_be_visible()
    frames, gap = page.evaluate("window.stop_counting = true; [window.frames_seen, window.longest_gap]")
    print(f"300 uploads: {frames} animation frames, longest gap {gap:.0f} ms, progress values seen {intermediate}")
    assert frames > 20 and gap < 1000, (frames, gap)
    expect(page.locator("[data-shown-count]")).to_have_text("300 images")
    expect(page.locator("#project-meta")).to_contain_text("300 images")
    expect(page.locator('.grid input[name="image"]')).to_have_count(60)
    shot(page, "12-upload-300-done")
    service = Service.open(Settings.load(server.data_dir))  # beside the server, as the CLI would
    try:
        assert service.images.count(project_id) == 300
        assert service.images.count(project_id, untagged=True) == 300
    finally:
        service.close()

    # Act on a selection: delete (after the browser's confirm dialog), tag, then untag.
    page.once("dialog", lambda dialog: dialog.accept())
    boxes = page.locator('.grid input[name="image"]')
    for k in range(3):
        boxes.nth(k).check()
    page.get_by_role("button", name="Delete selected").click()
    expect(page.locator(".flash.ok")).to_have_text("3 images deleted.")
    expect(page.locator("[data-shown-count]")).to_have_text("297 images")
    page.get_by_label("New tag").fill("tee")
    page.get_by_role("button", name="Add tag").click()
    page.get_by_label("Select all on this page").check()
    expect(page.locator("[data-selected-count]")).to_have_text("60 selected")
    page.get_by_label("Tag", exact=True).select_option(label="tee")
    page.get_by_role("button", name="Tag selected").click()
    expect(page.locator(".flash.ok")).to_have_text("60 images tagged tee.")
    expect(tag_count(page, "tee")).to_have_text("60")
    expect(tag_count(page, "Untagged")).to_have_text("237")
    page.get_by_role("link", name=re.compile(r"^tee")).click()
    boxes.first.check()
    page.get_by_label("Tag", exact=True).select_option(label="tee")
    page.get_by_role("button", name="Remove tag").click()
    expect(page.locator(".flash.ok")).to_have_text("Tag tee removed from 1 selected image.")
    expect(tag_count(page, "tee")).to_have_text("59")


# ---------------------------------------------------------------------- access


def test_login_cookie_csrf_and_errors(page, server, browser):
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login\?next=%2F$"))
    page.goto("/projects/anything/performance")
    expect(page).to_have_url(re.compile(r"/login\?next="))
    shot(page, "00-login")
    page.get_by_label("Training key").fill("not-the-key")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator(".flash.error")).to_contain_text("That is not this server's training key")
    page.get_by_label("Training key").fill(server.training_key)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(re.compile(r"/projects/anything/performance$"))  # back where it was going
    # A service error reads as a sentence, not a stack trace.
    expect(page.locator("#error-message")).to_have_text("No project named or with id 'anything'.")
    expect(page.locator("body")).not_to_contain_text("Traceback")

    cookie = next(c for c in page.context.cookies() if c["name"] == "tagvision_session")
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Lax" and cookie["secure"] is False

    # A state-changing POST without the CSRF token is refused, with a sentence; so is a wrong token.
    refused = page.request.post("/projects", form={"name": "forged"}, max_redirects=0)
    assert refused.status == 403 and "security token" in refused.text() and "Traceback" not in refused.text()
    forged = page.request.post("/projects", form={"name": "forged", "csrf": "guess"}, max_redirects=0)
    assert forged.status == 403
    upload = page.request.post(
        "/projects/x/images/upload",
        multipart={"file": {"name": "a.jpg", "mimeType": "image/jpeg", "buffer": b"\xff\xd8\xff"}},
    )
    assert upload.status == 403 and json.loads(upload.text())["code"] == "Forbidden"
    page.goto("/")
    expect(page.get_by_text("forged")).to_have_count(0)

    # Without a session: pages redirect to the login page, JSON endpoints answer 401 JSON.
    anonymous = httpx.get(f"{server.endpoint}/projects/x/images", follow_redirects=False)
    assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/login?next=")
    status = httpx.get(f"{server.endpoint}/projects/x/iterations/y/status")
    assert status.status_code == 401 and status.json()["code"] == "Unauthorized"
    assert httpx.post(f"{server.endpoint}/projects", data={"name": "x"}).status_code in (303, 403)

    # Service errors read as sentences on the page they came from.
    project_id = create_project(page, "Errors")
    tab(page, "Train").click()
    page.get_by_role("button", name="Train", exact=True).click()
    expect(page.locator(".flash.error")).to_contain_text("Training needs at least 2 tags with images")
    advanced = page.get_by_label("Advanced training (fine-tunes the backbone within a time budget)")
    expect(advanced).to_be_enabled()
    budget = page.get_by_label("Time budget for advanced training (minutes)")
    expect(budget).to_be_disabled()  # until advanced is chosen
    advanced.check()
    expect(budget).to_have_value("5")
    budget.fill("0.1")
    assert budget.evaluate("b => b.validity.rangeUnderflow")  # the browser asks for at least 0.5 minutes
    budget.fill("0.5")
    page.get_by_role("button", name="Train", exact=True).click()
    expect(page.locator(".flash.error")).to_contain_text("Training needs at least 2 tags with images")
    shot(page, "13-train-error")

    # Delete with a confirmation page.
    page.goto("/")
    page.get_by_role("link", name="Delete Errors").click()
    expect(page.get_by_role("heading", name="Delete the project Errors?")).to_be_visible()
    shot(page, "14-delete-confirmation")
    page.get_by_role("button", name="Delete Errors").click()
    expect(page.locator(".flash.ok")).to_contain_text("Project Errors and its images and iterations are deleted.")
    expect(page.get_by_role("link", name="Open Errors")).to_have_count(0)
    assert httpx.get(server.training(f"/projects/{project_id}"), headers=server.training_headers).status_code == 404

    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile(r"/login$"))
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login"))


# ---------------------------------------------------------------------- search images for tags


def test_search_images_for_tags_review_and_add(page, server, openverse):
    """Search a (loopback) Openverse for "hat, shoes", watch the candidates arrive, untick two, add the rest."""
    login(page, server)
    project_id = create_project(page, "Searched")
    tab(page, "Search images").click()
    expect(page.get_by_role("heading", name="Search images for tags")).to_be_visible()
    provider = page.get_by_label("Provider")
    expect(provider).to_have_value("openverse")
    options = provider.locator("option").evaluate_all("os => os.map(o => o.value)")
    assert options == ["openverse", "wikimedia", "pexels", "unsplash", "pixabay", "bing", "library"], options
    expect(page.get_by_label("Library folder on the server")).to_be_hidden()
    page.get_by_label("Tag names").fill("hat, shoes")
    page.get_by_label("Images per tag").fill("4")
    held = hold(openverse, "hat", free=2)
    page.get_by_role("button", name="Search", exact=True).click()

    message = page.locator("[data-search-message]")
    expect(page.get_by_role("heading", name="Candidates for hat, shoes")).to_be_visible()
    try:  # hat photos 0 and 1 arrive; the rest are held back: the page shows the search under way
        hat = page.get_by_role("region", name="hat", exact=True)
        expect(page.locator("input[data-candidate]")).to_have_count(2)
        expect(message).to_have_text("Searching openverse for hat, shoes: 2 candidates so far.")
        expect(hat.locator("[data-tag-text]")).to_have_text("hat: searching… 2 of 4 candidates.")
        assert hat.locator("[data-tag-bar]").evaluate("b => [b.value, b.max]") == [2, 4]
        expect(page.get_by_role("region", name="shoes", exact=True).locator("[data-tag-text]")).to_have_text(
            "shoes: waiting for the tags before it."
        )
        expect(page.get_by_role("button", name="Add 2 ticked images")).to_be_disabled()  # until it finishes
        shot(page, "15-search-in-progress")
    finally:
        held.set()
    expect(message).to_have_text(
        "Search finished: 8 candidates. Untick the ones that do not fit their tag, then add the rest."
    )
    expect(page.locator("[data-search-announce]")).to_contain_text("Search finished")
    for tag in ("hat", "shoes"):
        group = page.get_by_role("region", name=tag, exact=True)
        expect(group.locator("[data-tag-text]")).to_have_text(f"{tag}: done, 4 candidates found.")
        assert group.locator("[data-tag-bar]").evaluate("b => [b.value, b.max]") == [4, 4]
        expect(group.get_by_role("list", name=f"Candidates for {tag}").locator("li")).to_have_count(4)
    first = page.locator(".cell.candidate").first  # candidates show in the order they arrived
    n = int(re.search(r"Hat photo (\d+)", first.locator(".caption").text_content()).group(1))
    licence = {0: "CC BY 2.0", 1: "CC BY-SA 4.0", 2: "CC0 1.0"}[n % 3]
    expect(first.locator(".credit").first).to_have_text(f"{licence} · by Photographer {n}")
    expect(first.locator(".attribution")).to_contain_text(f'"Hat photo {n}" by Photographer {n} is licensed under')
    assert first.get_attribute("title").startswith(f'"Hat photo {n}" by Photographer {n}')
    assert (
        first.get_by_role("link", name=f"Source page of Hat photo {n}")
        .get_attribute("href")
        .startswith(f"{openverse.url}/photos/")
    )
    thumb = first.locator("img")
    expect(thumb).to_have_js_property("complete", True)
    assert thumb.evaluate("i => i.naturalWidth") > 0

    expect(page.locator("[data-review-count]")).to_have_text("8 of 8 ticked")
    titles = {
        tag: [
            c.removeprefix("Keep ").removesuffix(f" for {tag}")
            for c in page.get_by_role("list", name=f"Candidates for {tag}").locator(".caption").all_text_contents()
        ]
        for tag in ("hat", "shoes")
    }
    dropped = (titles["hat"][1], titles["shoes"][2])
    page.get_by_role("checkbox", name=f"Keep {dropped[0]} for hat").uncheck()  # labelled for keyboard and reader
    page.get_by_role("checkbox", name=f"Keep {dropped[1]} for shoes").uncheck()
    expect(page.locator("[data-review-count]")).to_have_text("6 of 8 ticked")
    expect(page.get_by_label("Keep all hat candidates")).to_have_js_property("indeterminate", True)
    shot(page, "16-search-candidates")
    page.set_viewport_size({"width": 390, "height": 844})  # a phone: nothing wider than the screen
    shot(page, "17-narrow-search-candidates")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    page.set_viewport_size({"width": 1280, "height": 900})
    page.get_by_role("button", name="Add 6 ticked images").click()

    expect(page.locator(".flash.ok")).to_have_text("6 images added to the training images.")
    expect(page).to_have_url(re.compile(rf"/projects/{project_id}/images$"))
    expect(page.locator("[data-shown-count]")).to_have_text("6 images")
    expect(tag_count(page, "hat")).to_have_text("3")
    expect(tag_count(page, "shoes")).to_have_text("3")
    expect(tag_count(page, "Untagged")).to_have_text("0")
    expect(page.locator(".grid .tags")).to_have_text(["shoes"] * 3 + ["hat"] * 3)  # newest first
    shot(page, "18-search-added")
    service = Service.open(Settings.load(server.data_dir))
    try:
        added = service.images.list(project_id, take=50)
        kept = sorted((v.source["title"], [name for _, name, _ in v.tags]) for v in added)
        assert kept == sorted(
            (title, [tag]) for tag, names in titles.items() for title in names if title not in dropped
        ), (kept, titles, dropped)
        assert all(v.source["licence"] and v.source["creator"] and v.source["attribution"] for v in added)
    finally:
        service.close()

    # Stop a search midway: the candidates found so far can be reviewed and added.
    tab(page, "Search images").click()
    page.get_by_label("Tag names").fill("dress")
    page.get_by_label("Images per tag").fill("5")
    held = hold(openverse, "dress", free=2)
    try:
        page.get_by_role("button", name="Search", exact=True).click()
        expect(page.locator("input[data-candidate]")).to_have_count(2)
        expect(message).to_have_text("Searching openverse for dress: 2 candidates so far.")
        page.get_by_role("button", name="Stop searching").click()
        expect(page.locator(".flash.ok")).to_have_text("Search stopped. The candidates found so far are below.")
        expect(message).to_have_text(
            "Search stopped: 2 candidates. Untick the ones that do not fit their tag, then add the rest."
        )
        expect(page.locator("[data-tag-text]")).to_have_text("dress: stopped at 2 of 5 candidates.")
        expect(page.get_by_role("button", name="Stop searching")).to_have_count(0)
        page.get_by_role("button", name="Add 2 ticked images").click()
        expect(page.locator(".flash.ok")).to_have_text("2 images added to the training images.")
        expect(tag_count(page, "dress")).to_have_text("2")
    finally:
        held.set()

    # A provider that cannot be reached: the reason as a sentence, naming the offline way.
    tab(page, "Search images").click()
    expect(page.get_by_role("link", name="hat, shoes")).to_be_visible()  # earlier searches, to revisit
    page.get_by_label("Tag names").fill("scarf")
    page.get_by_label("Provider").select_option("wikimedia")
    page.get_by_label("Images per tag").fill("2")
    page.get_by_role("button", name="Search", exact=True).click()
    expect(message).to_contain_text("The search failed: wikimedia cannot be reached", timeout=WAIT_MS)
    expect(message).to_contain_text("--provider library")
    expect(message).to_contain_text("In the portal, choose “Library (a folder on the server)”")
    expect(page.locator("[data-tag-text]")).to_have_text(
        "scarf: the search failed before finishing this tag (0 of 2 candidates)."
    )
    expect(page.locator("[data-review]")).to_be_hidden()
    expect(message).to_have_class(re.compile(r"\berror\b"))  # styled as the error it is
    expect(page.get_by_label("Tag names")).to_have_value("scarf")  # what was typed, to search again
    expect(page.get_by_label("Provider")).to_have_value("wikimedia")
    shot(page, "19-search-failed")
    expect(page.locator("body")).not_to_contain_text("Traceback")
    page.get_by_label("Provider").select_option("pexels")  # a keyed provider without its key: refused at once
    page.get_by_label("Tag names").fill("scarf")
    page.get_by_role("button", name="Search", exact=True).click()
    expect(page.locator(".flash.error")).to_contain_text("Pexels needs an API key: set TAGVISION_PEXELS_KEY")
    expect(page.get_by_label("Tag names")).to_have_value("scarf")  # the form keeps what was typed
    expect(page.get_by_label("Provider")).to_have_value("pexels")

    # The server has one library folder: a blank folder field means it (it holds no photos here).
    page.get_by_label("Provider").select_option("library")
    expect(page.get_by_label("Library folder on the server")).to_have_value("")
    page.get_by_role("button", name="Search", exact=True).click()
    expect(message).to_contain_text("Search finished without usable images", timeout=WAIT_MS)
    expect(page.locator(".flash.error")).to_have_count(0)


# ---------------------------------------------------------------------- advanced training


ADVANCED_BUDGET_MINUTES = 0.5
BUDGET_TEXT = minutes(ADVANCED_BUDGET_MINUTES * 60)  # "30 s", as the page writes it


def test_advanced_training_from_the_train_page(page, server):
    login(page, server)
    project_id = create_project(page, "Advanced")
    page.get_by_label("New tag").fill("dress, hat")
    page.get_by_role("button", name="Add tag").click()
    for tag in ("dress", "hat"):
        upload_files(page, photos(CLOTHING, "train", tag, 6, skip=60), tag)

    tab(page, "Train").click()
    page.get_by_label("Advanced training (fine-tunes the backbone within a time budget)").check()
    page.get_by_label("Time budget for advanced training (minutes)").fill(str(ADVANCED_BUDGET_MINUTES))
    page.get_by_role("button", name="Train", exact=True).click()
    expect(page.locator(".flash.ok")).to_have_text(f"Iteration 1 is training (advanced, within {BUDGET_TEXT}).")
    iterations = httpx.get(server.training(f"/projects/{project_id}/iterations"), headers=server.training_headers)
    assert [(i["trainingType"], i["budgetSeconds"]) for i in iterations.json()] == [
        ("Advanced", ADVANCED_BUDGET_MINUTES * 60)
    ]
    status = page.locator("[data-poll-text]")
    expect(status).to_have_text(
        re.compile(
            rf"^Iteration 1: (Training \(advanced, budget {BUDGET_TEXT}\)… .+ so far"
            r"(, about \d+ s left)?\.|Failed\. [A-Z].+|Completed in .+)$"
        )
    )
    expect(page.locator("#iteration-table tbody tr").first.locator("td").first).to_have_text(
        f"advanced, budget {BUDGET_TEXT}"
    )
    if status.inner_text().startswith("Iteration 1: Training"):  # the bar fills with the time used of the budget
        page.wait_for_function(
            "() => { const bar = document.querySelector('[data-poll-bar]'); return !bar || bar.value > 0; }"
        )
        shot(page, "20-train-advanced-progress")
    expect(status).to_contain_text("Iteration 1: Completed", timeout=WAIT_MS)
    expect(status).to_contain_text(f"(advanced, budget {BUDGET_TEXT})")
    page.get_by_role("link", name="See the performance of Iteration 1").click()
    view = httpx.get(server.training(f"/projects/{project_id}/iterations"), headers=server.training_headers).json()[0]
    assert view["status"] == "Completed" and view["trainingType"] == "Advanced" and view["metricsFrom"], view
    expect(page.locator("[data-metrics-from]")).to_have_text(f"Figures from: {view['metricsFrom']}.")
    served = (
        f"Advanced training within a {BUDGET_TEXT} budget fine-tuned {view['backbone']} on your images"
        if view["fineTuned"]
        else f"Advanced training within a {BUDGET_TEXT} budget kept the quick model: fine-tuning did not score "
        "better on the held-out images"
    )
    assert view["backbone"] in ("efficientnet-lite0", "efficientnet-lite2"), view
    expect(page.locator("[data-backbone]")).to_have_text(served)
    # Fine-tuned: figures from the held-out validation split; else it is a quick training, cross-validated.
    evaluated_on = "the held-out images" if view["fineTuned"] else "cross-validation"
    expect(page.locator("[data-metrics-from]")).to_contain_text(
        "set aside before training" if view["fineTuned"] else "fold cross-validation"
    )
    spread = view["measuredOn"]["method"] == "cross-validation" and view["measuredOn"]["folds"] > 1
    expect(page.locator(".figures [data-figure-std]")).to_have_count(2 if spread else 0)  # no ± for one split
    expect(page.get_by_role("heading", name=re.compile(f"^Misclassified in {evaluated_on}"))).to_be_visible()
    shot(page, "21-performance-advanced")
    tab(page, "Train").click()  # the form offers the same kind of training again
    expect(page.get_by_label("Advanced training (fine-tunes the backbone within a time budget)")).to_be_checked()
    expect(page.get_by_label("Time budget for advanced training (minutes)")).to_have_value(
        f"{ADVANCED_BUDGET_MINUTES:g}"
    )


# ---------------------------------------------------------------------- offline


def test_api_docs_render_with_the_network_blocked(browser, server):
    """/docs lists the operations (and /redoc renders) with every request to anything but the server aborted:
    Swagger UI's and ReDoc's files come from the installed fastapi-offline package, not a CDN."""
    context = browser.new_context(base_url=server.endpoint, viewport={"width": 1280, "height": 900})
    blocked: list[str] = []

    def only_the_server(route) -> None:
        if route.request.url.startswith(server.endpoint + "/"):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_server)
    try:
        tab = context.new_page()
        errors = watch_console(tab)
        tab.goto("/docs")
        expect(tab.locator(".swagger-ui .info .title")).to_contain_text("tagvision")
        operations = tab.locator(".opblock")
        expect(operations.first).to_be_visible()
        assert operations.count() >= 45
        expect(
            tab.locator(".opblock-summary-path", has_text="/customvision/{version}/training/projects").first
        ).to_be_visible()
        shot(tab, "22-api-docs-offline")
        tab.goto("/redoc")
        expect(tab.get_by_role("heading", name=re.compile(r"^tagvision"), level=1)).to_be_visible()
        logo = tab.locator("img[alt='redocly logo']")  # drawn once the page has rendered; its CDN URL replaced
        expect(logo).to_have_attribute("src", re.compile(r"^data:image/svg"))
        assert blocked == [] and errors == [], (blocked, errors)
        assert tab.request.get("/favicon.ico").ok
    finally:
        context.close()

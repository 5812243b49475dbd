"""Microsoft's quickstart flow, driven by the official SDK (3.1.1) against a real ``tagvision serve``.

Everything here goes through ``CustomVisionTrainingClient`` / ``CustomVisionPredictionClient`` exactly as
user code does, on real clothing photos from ``../shared/datasets``. A module-scoped trained multiclass
project keeps the runtime down; the multilabel project lives inside its own test. Clients are made per test
from the server's current endpoint, so the restart test (a new port) does not disturb the others.
"""

from __future__ import annotations

import functools
import http.server
import io
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import numpy as np
import pytest
from azure.cognitiveservices.vision.customvision.prediction import CustomVisionPredictionClient
from azure.cognitiveservices.vision.customvision.prediction.models import (
    CustomVisionErrorException as PredictionError,
)
from azure.cognitiveservices.vision.customvision.training import CustomVisionTrainingClient
from azure.cognitiveservices.vision.customvision.training.models import (
    CustomVisionErrorException,
    ImageFileCreateBatch,
    ImageFileCreateEntry,
    ImageIdCreateBatch,
    ImageIdCreateEntry,
    ImageTagCreateEntry,
    ImageUrlCreateBatch,
    ImageUrlCreateEntry,
    PredictionQueryTag,
    PredictionQueryToken,
)
from msrest.authentication import ApiKeyCredentials
from PIL import Image

from tests.conftest import CLOTHING, need, photos

pytestmark = [pytest.mark.slow, pytest.mark.process]

COMPACT = "0732100f-1a38-4e49-a514-c9b44c697ab5"  # General (compact): EfficientNet-Lite0
GENERAL = "ee85a74c-405e-4adc-bb47-ffa8ca0c9f31"
TAGS = ("dress", "hat", "shoes", "pants")
PER_TAG = 12  # 10 in one create_images_from_files batch, 1 from bytes or a file object, 1 from a URL
PUBLISHED = "classifyModel"
PREDICTION_RESOURCE = "/subscriptions/0/resourceGroups/rg/providers/Microsoft.CognitiveServices/accounts/pred"
JPEG = b"\xff\xd8\xff"
TRAINING_TIMEOUT = 600.0  # a give-up deadline only: a slow machine must never fail a test


# --------------------------------------------------------------------------- helpers


def trainer_for(server, key: str | None = None, endpoint: str | None = None) -> CustomVisionTrainingClient:
    credentials = ApiKeyCredentials(in_headers={"Training-key": key or server.training_key})
    return CustomVisionTrainingClient(endpoint or server.endpoint, credentials)


def predictor_for(server, key: str | None = None) -> CustomVisionPredictionClient:
    return CustomVisionPredictionClient(
        server.endpoint, ApiKeyCredentials(in_headers={"Prediction-key": key or server.prediction_key})
    )


def wait_trained(trainer: CustomVisionTrainingClient, project_id: str, iteration_id: str):
    """The quickstart's polling loop, with a timeout and no endless wait on Failed."""
    deadline = time.monotonic() + TRAINING_TIMEOUT
    while True:
        iteration = trainer.get_iteration(project_id, iteration_id)
        if iteration.status != "Training":
            break
        assert time.monotonic() < deadline, "training did not finish in time"
        time.sleep(0.3)
    assert iteration.status == "Completed", iteration.training_error_details
    return iteration


def fetch(url: str) -> tuple[int, str, bytes]:
    """A plain GET, without any key header (as users fetch thumbnailUri and downloadUri)."""
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read()


def error_code(info: pytest.ExceptionInfo) -> str:
    return info.value.error.code


def top(prediction) -> str:
    return prediction.predictions[0].tag_name


def probabilities(prediction) -> dict[str, float]:
    return {p.tag_name: p.probability for p in prediction.predictions}


def assert_ranked(prediction, tag_names) -> None:
    values = [p.probability for p in prediction.predictions]
    assert sorted({p.tag_name for p in prediction.predictions}) == sorted(tag_names)
    assert values == sorted(values, reverse=True)
    assert all(0.0 <= v <= 1.0 for v in values)


def entropy(prediction) -> float:
    """Normalised entropy of a multiclass prediction: 0 sure, 1 a coin toss."""
    p = np.clip([x.probability for x in prediction.predictions], 1e-12, 1.0)
    return float(-(p * np.log(p)).sum() / np.log(len(p)))


def query(trainer, project_id: str, **token) -> list:
    return trainer.query_predictions(project_id, PredictionQueryToken(max_count=200, **token)).results


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """One real server for the module (restarted in place by test_restart)."""
    need(CLOTHING)
    from tests.server import Server

    running = Server(tmp_path_factory.mktemp("sdk") / "server-data")
    try:  # Server.start leaves the process running when it times out: stop it in every case
        yield running.start()
    finally:
        running.stop()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *_args) -> None:
        pass


@pytest.fixture(scope="module")
def photo_host(tmp_path_factory):
    """A loopback HTTP server with real photos, for the URL operations: -> (root folder, base URL)."""
    root = tmp_path_factory.mktemp("www")
    for tag in (*TAGS, "shorts", "t-shirt"):
        for split, count in (("train", PER_TAG), ("test", 6)):
            folder = root / split / tag
            folder.mkdir(parents=True)
            for path in photos(CLOTHING, split, tag, count):
                (folder / path.name).write_bytes(path.read_bytes())
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def url_of(photo_host, path: Path) -> str:
    root, base = photo_host
    split, tag = path.parent.parent.name, path.parent.name
    assert (root / split / tag / path.name).is_file()
    return f"{base}/{split}/{tag}/{path.name}"


@dataclass
class Trained:
    """The shared multiclass project and what the SDK answered while it was built."""

    project: object
    tags: dict[str, object]  # name -> Tag as created
    files_result: object
    data_results: list = field(default_factory=list)  # (kind, ImageCreateSummary)
    urls_result: object = None
    untagged_result: object = None
    counts: dict[str, int] = field(default_factory=dict)
    # The first image's links, fetched at once: test_restart gives the server a new port.
    downloads: dict[str, tuple[int, str, bytes]] = field(default_factory=dict)
    tag_counts: dict[str, int] = field(default_factory=dict)
    started: object = None  # the Iteration train_project returned
    before_publish: object = None  # the Iteration as polled, before publishing
    published: object = None  # publish_iteration's return value

    @property
    def project_id(self) -> str:
        return self.project.id

    @property
    def iteration_id(self) -> str:
        return self.started.id

    def tag_id(self, name: str) -> str:
        return self.tags[name].id


@pytest.fixture(scope="module")
def trained(live, photo_host) -> Trained:
    """The quickstart: a compact multiclass project, 4 tags x 12 real photos, trained and published."""
    trainer = trainer_for(live)
    project = trainer.create_project("SDK clothing", domain_id=COMPACT, classification_type="Multiclass")
    tags = {name: trainer.create_tag(project.id, name) for name in TAGS}
    entries = [
        ImageFileCreateEntry(name=path.name, contents=path.read_bytes(), tag_ids=[tags[name].id])
        for name in TAGS
        for path in photos(CLOTHING, "train", name, 10)
    ]
    state = Trained(project, tags, trainer.create_images_from_files(project.id, ImageFileCreateBatch(images=entries)))
    for name in TAGS[:2]:  # one photo as bytes (a part without filename), one as an open file (with filename)
        path = photos(CLOTHING, "train", name, 1, skip=10)[0]
        state.data_results.append(
            ("bytes", trainer.create_images_from_data(project.id, path.read_bytes(), tag_ids=[tags[name].id]))
        )
    for name in TAGS[2:]:
        path = photos(CLOTHING, "train", name, 1, skip=10)[0]
        with open(path, "rb") as stream:
            state.data_results.append(
                ("file", trainer.create_images_from_data(project.id, stream, tag_ids=[tags[name].id]))
            )
    state.urls_result = trainer.create_images_from_urls(
        project.id,
        ImageUrlCreateBatch(
            images=[
                ImageUrlCreateEntry(
                    url=url_of(photo_host, photos(CLOTHING, "train", name, 1, skip=11)[0]), tag_ids=[tags[name].id]
                )
                for name in TAGS
            ]
        ),
    )
    first = state.files_result.images[0].image
    state.downloads = {"thumbnail": fetch(first.thumbnail_uri), "original": fetch(first.original_image_uri)}
    untagged = photos(CLOTHING, "train", "shorts", 1)[0]
    state.untagged_result = trainer.create_images_from_data(project.id, untagged.read_bytes())
    state.counts = {
        "all": trainer.get_image_count(project.id),
        "tagged": trainer.get_tagged_image_count(project.id),
        "untagged": trainer.get_untagged_image_count(project.id),
    }
    state.tag_counts = {t.name: t.image_count for t in trainer.get_tags(project.id)}

    state.started = trainer.train_project(project.id)
    state.before_publish = wait_trained(trainer, project.id, state.started.id)
    state.published = trainer.publish_iteration(project.id, state.started.id, PUBLISHED, PREDICTION_RESOURCE)
    return state


# --------------------------------------------------------------------------- domains, auth, paths, errors


def test_domains_keys_paths_and_errors(live, trained) -> None:
    trainer = trainer_for(live)
    domains = trainer.get_domains()
    assert len(domains) == 18
    classification = [d for d in domains if d.type == "Classification"]
    assert len(classification) == 12 and all(d.enabled and d.exportable for d in classification)
    assert {d.id for d in classification} >= {COMPACT, GENERAL}
    assert trainer.get_domain(COMPACT).name == "General (compact)"
    assert all(not d.enabled for d in domains if d.type == "ObjectDetection")

    # Unknown ids, a wrong key, an unknown published name: CustomVisionErrorException with Custom Vision's codes.
    with pytest.raises(CustomVisionErrorException) as info:
        trainer.get_project(str(uuid.uuid4()))
    assert error_code(info) == "NotFoundProject" and info.value.response.status_code == 404
    with pytest.raises(CustomVisionErrorException) as info:
        trainer.get_iteration(trained.project_id, str(uuid.uuid4()))
    assert error_code(info) == "NotFoundIteration"
    with pytest.raises(CustomVisionErrorException) as info:
        trainer_for(live, key="0" * 32).get_projects()
    assert info.value.response.status_code == 401 and error_code(info) == "Unauthorized"
    photo = photos(CLOTHING, "test", "hat", 1)[0].read_bytes()
    with pytest.raises(PredictionError) as info:
        predictor_for(live, key="0" * 32).classify_image(trained.project_id, PUBLISHED, photo)
    assert info.value.response.status_code == 401 and error_code(info) == "Unauthorized"
    with pytest.raises(PredictionError) as info:
        predictor_for(live).classify_image(trained.project_id, "noSuchModel", photo)
    assert error_code(info) == "NotFoundIteration" and info.value.response.status_code == 404
    with pytest.raises(CustomVisionErrorException) as info:  # the prediction key does not train
        trainer_for(live, key=live.prediction_key).get_projects()
    assert error_code(info) == "Unauthorized"

    # The endpoint with a trailing slash, and the capitalised paths of Microsoft's samples.
    assert trained.project_id in {p.id for p in trainer_for(live, endpoint=live.endpoint + "/").get_projects()}
    response = httpx.get(
        f"{live.endpoint}/customvision/v3.4-preview/Training/projects",
        headers={"Training-key": live.training_key},
        timeout=120,
    )
    assert response.status_code == 200 and trained.project_id in {p["id"] for p in response.json()}
    response = httpx.post(
        f"{live.endpoint}/customvision/v3.1/Prediction/{trained.project_id.upper()}/Classify/"
        f"iterations/{PUBLISHED}/image/nostore",
        headers={"Prediction-key": live.prediction_key, "Content-Type": "application/octet-stream"},
        content=photo,
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["tagName"] == "hat"
    response = httpx.get(
        f"{live.endpoint}/customvision/v3.4-preview/Training/projects", headers={"Training-key": "wrong"}, timeout=120
    )
    assert response.status_code == 401 and response.json()["code"] == "Unauthorized"


# --------------------------------------------------------------------------- projects, tags, images


def test_projects_and_tags(live, trained) -> None:
    trainer = trainer_for(live)
    created = trained.project
    assert created.name == "SDK clothing" and created.description == ""
    assert created.settings.domain_id == COMPACT and created.settings.classification_type == "Multiclass"
    assert trained.project_id in {p.id for p in trainer.get_projects()}

    project = trainer.get_project(trained.project_id)  # re-send what we got, as user code does
    project.description = "real clothing photos"
    updated = trainer.update_project(project.id, project)
    assert updated.description == "real clothing photos" and updated.name == "SDK clothing"
    assert updated.settings.domain_id == COMPACT and updated.settings.classification_type == "Multiclass"
    assert trainer.get_project(project.id).description == "real clothing photos"

    assert {name: t.description for name, t in trained.tags.items()} == {name: "" for name in TAGS}
    assert all(t.type == "Regular" and t.image_count == 0 for t in trained.tags.values())
    tag = trainer.get_tag(trained.project_id, trained.tag_id("hat"))
    tag.description = "anything worn on the head"
    updated_tag = trainer.update_tag(trained.project_id, tag.id, tag)
    assert (updated_tag.name, updated_tag.description, updated_tag.type) == (
        "hat",
        "anything worn on the head",
        "Regular",
    )
    listed = {t.name: t for t in trainer.get_tags(trained.project_id)}
    assert set(listed) == set(TAGS)
    assert listed["hat"].description == "anything worn on the head"
    assert trained.tag_counts == {name: PER_TAG for name in TAGS}
    with pytest.raises(CustomVisionErrorException) as info:
        trainer.create_tag(trained.project_id, "Hat")  # names are unique, case-insensitively
    assert info.value.response.status_code in (400, 409) and error_code(info)


def test_uploads(live, trained, photo_host) -> None:
    trainer = trainer_for(live)
    batch = trained.files_result
    assert batch.is_batch_successful is True and len(batch.images) == 10 * len(TAGS)
    first = photos(CLOTHING, "train", TAGS[0], 10)
    for result, path in zip(batch.images[:10], first, strict=True):
        assert result.status == "OK" and result.source_url == path.name
        with Image.open(path) as img:
            assert {result.image.width, result.image.height} == set(img.size)
        assert [t.tag_name for t in result.image.tags] == [TAGS[0]]
        assert [t.tag_id for t in result.image.tags] == [trained.tag_id(TAGS[0])]
    status, content_type, body = trained.downloads["thumbnail"]  # fetched without a key: a signed link
    assert status == 200 and content_type == "image/jpeg" and body.startswith(JPEG)
    with Image.open(io.BytesIO(body)) as thumbnail:
        assert max(thumbnail.size) <= max(batch.images[0].image.width, batch.images[0].image.height)
    status, _, body = trained.downloads["original"]
    assert status == 200 and body == first[0].read_bytes()

    assert [kind for kind, _ in trained.data_results] == ["bytes", "bytes", "file", "file"]
    for (_, summary), name in zip(trained.data_results, TAGS, strict=True):
        assert summary.is_batch_successful is True and [r.status for r in summary.images] == ["OK"]
        assert [t.tag_name for t in summary.images[0].image.tags] == [name]
    urls = trained.urls_result
    assert urls.is_batch_successful is True and [r.status for r in urls.images] == ["OK"] * len(TAGS)
    assert [r.image.tags[0].tag_name for r in urls.images] == list(TAGS)
    assert all(r.source_url.startswith(photo_host[1]) for r in urls.images)
    untagged = trained.untagged_result
    assert untagged.is_batch_successful is True and untagged.images[0].image.tags in (None, [])

    # The quickstart's check: a photo already in the project makes the batch unsuccessful.
    again = trainer.create_images_from_files(
        trained.project_id,
        ImageFileCreateBatch(
            images=[
                ImageFileCreateEntry(
                    name=first[0].name, contents=first[0].read_bytes(), tag_ids=[trained.tag_id("dress")]
                )
            ]
        ),
    )
    assert again.is_batch_successful is False
    assert [r.status for r in again.images] == ["OKDuplicate"]
    assert again.images[0].image.id == batch.images[0].image.id
    again = trainer.create_images_from_data(
        trained.project_id, first[1].read_bytes(), tag_ids=[trained.tag_id("dress")]
    )
    assert again.is_batch_successful is False and again.images[0].status == "OKDuplicate"
    assert trained.counts == {"all": len(TAGS) * PER_TAG + 1, "tagged": len(TAGS) * PER_TAG, "untagged": 1}
    assert trainer.get_untagged_image_count(trained.project_id) == 1
    assert trainer.get_image_count(trained.project_id, tagging_status="Untagged") == 1
    assert [i.id for i in trainer.get_untagged_images(trained.project_id)] == [untagged.images[0].image.id]


def test_listing_tagging_and_metadata(live, trained) -> None:
    trainer = trainer_for(live)
    pid, dress, hat = trained.project_id, trained.tag_id("dress"), trained.tag_id("hat")
    assert trainer.get_tagged_image_count(pid, tag_ids=[dress]) >= PER_TAG
    dresses = trainer.get_tagged_images(pid, tag_ids=[dress], take=256)
    assert len(dresses) == trainer.get_tagged_image_count(pid, tag_ids=[dress])
    assert all(any(t.tag_id == dress for t in image.tags) for image in dresses)
    page1 = trainer.get_tagged_images(pid, tag_ids=[dress], take=5, skip=0)
    page2 = trainer.get_tagged_images(pid, tag_ids=[dress], take=5, skip=5)
    assert len(page1) == len(page2) == 5 and not {i.id for i in page1} & {i.id for i in page2}
    assert [i.id for i in page1 + page2] == [i.id for i in dresses[:10]]  # newest first, stable paging
    both = trainer.get_tagged_images(pid, tag_ids=[dress, hat], take=256)
    assert (
        len(both)
        == trainer.get_tagged_image_count(pid, tag_ids=[dress, hat])
        == len(dresses) + trainer.get_tagged_image_count(pid, tag_ids=[hat])
    )
    oldest = trainer.get_tagged_images(pid, tag_ids=[dress], order_by="Oldest", take=256)
    assert [i.id for i in oldest] == [i.id for i in reversed(dresses)]

    wanted = [page1[0].id, page2[0].id]
    by_ids = trainer.get_images_by_ids(pid, image_ids=wanted)
    assert sorted(i.id for i in by_ids) == sorted(wanted)
    assert all(i.tags[0].tag_name == "dress" and i.width > 0 and i.thumbnail_uri for i in by_ids)

    summary = trainer.update_image_metadata(pid, image_ids=wanted, metadata={"shop": "sdk-test"})
    assert summary.is_batch_successful is True
    assert all(r.status == "OK" and r.metadata == {"shop": "sdk-test"} for r in summary.images)
    found = trainer.get_images(pid, filter="metadata=shop eq 'sdk-test'")
    assert sorted(i.id for i in found) == sorted(wanted)
    assert all(i.metadata == {"shop": "sdk-test"} for i in found)
    assert trainer.get_image_count(pid, filter="metadata=shop eq 'sdk-test'") == 2
    assert trainer.get_images(pid, filter="metadata=shop eq 'elsewhere'") == []
    not_there = trainer.get_images(pid, filter="metadata=shop ne 'sdk-test'", tagging_status="Tagged", take=256)
    assert not set(wanted) & {i.id for i in not_there}

    with pytest.raises(CustomVisionErrorException) as info:
        trainer.get_tagged_images(str(uuid.uuid4()))
    assert error_code(info) == "NotFoundProject"


# --------------------------------------------------------------------------- training and performance


def test_training_and_performance(live, trained) -> None:
    trainer = trainer_for(live)
    pid, iid = trained.project_id, trained.iteration_id
    assert trained.started.status == "Training" and trained.started.name == "Iteration 1"
    done = trained.before_publish
    assert (done.name, done.status, done.classification_type, done.domain_id) == (
        "Iteration 1",
        "Completed",
        "Multiclass",
        COMPACT,
    )
    assert done.publish_name == "" and done.trained_at is not None and done.project_id == pid
    assert trained.published is True
    now = trainer.get_iteration(pid, iid)
    assert now.publish_name == PUBLISHED and now.original_publish_resource_id == PREDICTION_RESOURCE
    assert iid in {i.id for i in trainer.get_iterations(pid)}

    loose = trainer.get_iteration_performance(pid, iid, threshold=0.5)
    strict = trainer.get_iteration_performance(pid, iid, threshold=0.9)
    for perf in (loose, strict):
        assert 0.0 <= perf.precision <= 1.0 and 0.0 <= perf.recall <= 1.0
        assert 0.0 <= perf.average_precision <= 1.0
        assert sorted(t.name for t in perf.per_tag_performance) == sorted(TAGS)
        assert {t.id for t in perf.per_tag_performance} == {trained.tag_id(n) for n in TAGS}
        assert all(0.0 <= t.precision <= 1.0 and 0.0 <= t.recall <= 1.0 for t in perf.per_tag_performance)
    assert strict.recall <= loose.recall + 1e-9
    assert loose.precision > 0.7 and loose.recall > 0.6 and loose.average_precision > 0.8
    loose_tags = {t.name: t for t in loose.per_tag_performance}
    for t in strict.per_tag_performance:
        assert t.recall <= loose_tags[t.name].recall + 1e-9

    performances = trainer.get_image_performances(pid, iid, take=256)
    assert len(performances) == len(TAGS) * PER_TAG
    assert trainer.get_image_performance_count(pid, iid) == len(TAGS) * PER_TAG
    for image in performances:
        assert image.tags and len(image.predictions) == len(TAGS)
        values = [p.probability for p in image.predictions]
        assert values == sorted(values, reverse=True) and abs(sum(values) - 1.0) < 1e-4
    right = sum(image.predictions[0].tag_id == image.tags[0].tag_id for image in performances)
    assert right / len(performances) > 0.7  # cross-validated top-1
    hats = trainer.get_image_performances(pid, iid, tag_ids=[trained.tag_id("hat")], take=256)
    assert len(hats) == PER_TAG and all(i.tags[0].tag_name == "hat" for i in hats)


# --------------------------------------------------------------------------- prediction


def test_prediction_and_stored_predictions(live, trained, photo_host) -> None:
    trainer, predictor = trainer_for(live), predictor_for(live)
    pid = trained.project_id
    app = f"predict-{uuid.uuid4().hex[:8]}"  # keeps this test's stored predictions apart from the others'

    stored, right = [], 0
    for name in TAGS:
        for path in photos(CLOTHING, "test", name, 3):
            result = predictor.classify_image(pid, PUBLISHED, path.read_bytes(), application=app)
            assert result.project == pid and result.iteration == trained.iteration_id and result.id
            assert_ranked(result, TAGS)
            assert abs(sum(probabilities(result).values()) - 1.0) < 1e-4  # softmax
            right += top(result) == name
            stored.append(result)
    assert right / len(stored) >= 0.8, f"{right}/{len(stored)} held-out photos right"

    shoes_url = url_of(photo_host, photos(CLOTHING, "test", "shoes", 1, skip=3)[0])
    by_url = predictor.classify_image_url(pid, PUBLISHED, url=shoes_url, application=app)
    assert top(by_url) == "shoes"
    stored.append(by_url)
    hat = photos(CLOTHING, "test", "hat", 1)[0]  # classified (and stored) above, as bytes
    with open(hat, "rb") as stream:
        quiet = predictor.classify_image_with_no_store(pid, PUBLISHED, stream, application=app)
    quiet_url = predictor.classify_image_url_with_no_store(pid, PUBLISHED, url=shoes_url, application=app)
    assert probabilities(quiet) == pytest.approx(probabilities(stored[3]), abs=1e-6) and top(quiet_url) == "shoes"
    assert probabilities(quiet_url) == pytest.approx(probabilities(by_url), abs=1e-6)

    results = query(trainer, pid, application=app)
    assert {r.id for r in results} == {r.id for r in stored}
    assert quiet.id not in {r.id for r in results} and quiet_url.id not in {r.id for r in results}
    for r in results:
        assert r.domain and r.iteration == trained.iteration_id and r.original_image_uri
        values = [p.probability for p in r.predictions]
        assert values == sorted(values, reverse=True) and len(values) == len(TAGS)
    original = {r.id: r for r in stored}
    sample = results[0]
    assert probabilities(sample) == pytest.approx(probabilities(original[sample.id]), abs=1e-6)
    status, content_type, body = fetch(sample.thumbnail_uri)
    assert status == 200 and content_type == "image/jpeg" and body.startswith(JPEG)

    newest = query(trainer, pid, application=app, order_by="Newest")
    oldest = query(trainer, pid, application=app, order_by="Oldest")
    assert [r.id for r in newest] == [r.id for r in reversed(oldest)]
    assert newest[0].id == by_url.id and oldest[0].id == stored[0].id
    assert all(a.created >= b.created for a, b in zip(newest, newest[1:], strict=False))
    suggested = query(trainer, pid, application=app, order_by="Suggested")
    assert sorted(r.id for r in suggested) == sorted(r.id for r in newest)
    uncertainty = [entropy(r) for r in suggested]  # the SDK model has no predictionUncertainty field
    assert all(a >= b - 1e-6 for a, b in zip(uncertainty, uncertainty[1:], strict=False))
    assert uncertainty[0] > uncertainty[-1]
    assert suggested[0].predictions[0].probability <= suggested[-1].predictions[0].probability

    dress = trained.tag_id("dress")
    likely = query(
        trainer, pid, application=app, tags=[PredictionQueryTag(id=dress, min_threshold=0.5, max_threshold=1.0)]
    )
    expected = {r.id for r in stored if probabilities(r)["dress"] >= 0.5}
    assert {r.id for r in likely} == expected and len(expected) >= 2
    unlikely = query(
        trainer, pid, application=app, tags=[PredictionQueryTag(id=dress, min_threshold=0.0, max_threshold=0.1)]
    )
    assert {r.id for r in unlikely} == {r.id for r in stored if probabilities(r)["dress"] <= 0.1}
    page = trainer.query_predictions(pid, PredictionQueryToken(application=app, max_count=5, order_by="Oldest"))
    assert [r.id for r in page.results] == [r.id for r in oldest[:5]] and page.token.continuation
    following = trainer.query_predictions(pid, page.token)
    assert [r.id for r in following.results] == [r.id for r in oldest[5:10]]

    trainer.delete_prediction(pid, ids=[stored[0].id])
    assert stored[0].id not in {r.id for r in query(trainer, pid, application=app)}
    assert len(query(trainer, pid, application=app)) == len(stored) - 1

    # Quick tests run on any completed iteration; store=True lands in the review queue, store=False does not.
    pants = photos(CLOTHING, "test", "pants", 1, skip=3)[0]
    quick = trainer.quick_test_image(pid, pants.read_bytes(), iteration_id=trained.iteration_id)
    quick_quiet = trainer.quick_test_image(pid, pants.read_bytes(), iteration_id=trained.iteration_id, store=False)
    dress_url = url_of(photo_host, photos(CLOTHING, "test", "dress", 1, skip=3)[0])
    quick_url = trainer.quick_test_image_url(pid, url=dress_url, iteration_id=trained.iteration_id)
    quick_url_quiet = trainer.quick_test_image_url(pid, url=dress_url, iteration_id=trained.iteration_id, store=False)
    assert top(quick) == top(quick_quiet) == "pants" and top(quick_url) == top(quick_url_quiet) == "dress"
    assert_ranked(quick, TAGS)
    everything = {r.id for r in query(trainer, pid, iteration_id=trained.iteration_id)}
    assert {quick.id, quick_url.id} <= everything
    assert not {quick_quiet.id, quick_url_quiet.id} & everything


def test_retrain_from_predictions_and_snapshots(live, trained, photo_host) -> None:
    trainer, predictor = trainer_for(live), predictor_for(live)
    pid, hat = trained.project_id, trained.tag_id("hat")
    photo = photos(CLOTHING, "test", "hat", 1, skip=4)[0]
    prediction = predictor.classify_image(pid, PUBLISHED, photo.read_bytes())
    hats_before = trainer.get_tagged_image_count(pid, tag_ids=[hat])
    tagged_before = trainer.get_tagged_image_count(pid)
    iterations_before = len(trainer.get_iterations(pid))

    summary = trainer.create_images_from_predictions(
        pid, ImageIdCreateBatch(images=[ImageIdCreateEntry(id=prediction.id, tag_ids=[hat])])
    )
    assert summary.is_batch_successful is True and summary.images[0].status == "OK"
    new_image = summary.images[0].image
    assert [t.tag_name for t in new_image.tags] == ["hat"]
    assert trainer.get_tagged_image_count(pid, tag_ids=[hat]) == hats_before + 1
    assert trainer.get_tagged_image_count(pid) == tagged_before + 1

    second = trainer.train_project(pid)
    assert second.status == "Training" and second.name == f"Iteration {iterations_before + 1}"
    second = wait_trained(trainer, pid, second.id)
    assert second.publish_name == "" and second.name == f"Iteration {iterations_before + 1}"

    with pytest.raises(CustomVisionErrorException) as info:
        trainer.train_project(pid)
    assert error_code(info) == "BadRequestTrainingNotNeeded" and info.value.response.status_code == 400
    forced = trainer.train_project(pid, force_train=True)
    assert forced.status == "Training" and forced.name == f"Iteration {iterations_before + 2}"
    wait_trained(trainer, pid, forced.id)

    # An iteration's snapshot: iteration 1 never saw the image made from the prediction.
    first = trained.iteration_id
    assert new_image.id not in {i.id for i in trainer.get_tagged_images(pid, iteration_id=first, take=256)}
    assert new_image.id in {i.id for i in trainer.get_tagged_images(pid, iteration_id=second.id, take=256)}
    assert trainer.get_tagged_image_count(pid, iteration_id=first) == len(TAGS) * PER_TAG
    assert trainer.get_tagged_image_count(pid, iteration_id=second.id) == tagged_before + 1
    old_tags = {t.name: t.image_count for t in trainer.get_tags(pid, iteration_id=first)}
    new_tags = {t.name: t.image_count for t in trainer.get_tags(pid, iteration_id=second.id)}
    assert old_tags == {name: PER_TAG for name in TAGS}
    assert new_tags["hat"] == hats_before + 1
    assert {t.name: t.image_count for t in trainer.get_tags(pid)}["hat"] == hats_before + 1
    assert trainer.get_tag(pid, hat, iteration_id=first).image_count == PER_TAG

    # The published model is still iteration 1; quick tests default to the newest iteration.
    assert predictor.classify_image_with_no_store(pid, PUBLISHED, photo.read_bytes()).iteration == first
    assert trainer.quick_test_image(pid, photo.read_bytes(), store=False).iteration == forced.id


def test_export_onnx_matches_the_server(live, trained) -> None:
    import onnxruntime as ort

    from tagvision import backbone

    trainer, predictor = trainer_for(live), predictor_for(live)
    pid, iid = trained.project_id, trained.iteration_id
    started = trainer.export_iteration(pid, iid, platform="ONNX")
    assert started.platform == "ONNX" and started.status == "Exporting" and not started.download_uri
    deadline = time.monotonic() + 600
    while True:
        (export,) = [e for e in trainer.get_exports(pid, iid) if e.platform == "ONNX"]
        if export.status != "Exporting":
            break
        assert time.monotonic() < deadline, "export did not finish in time"
        time.sleep(0.3)
    assert export.status == "Done" and export.download_uri.startswith("http")

    status, content_type, body = fetch(export.download_uri)
    assert status == 200 and content_type == "application/zip"
    with zipfile.ZipFile(io.BytesIO(body)) as bundle:
        assert {"model.onnx", "labels.txt"} <= set(bundle.namelist())
        labels = bundle.read("labels.txt").decode().splitlines()
        model = bundle.read("model.onnx")
    assert sorted(labels) == sorted(TAGS)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    assert json.loads(session.get_modelmeta().custom_metadata_map["labels"]) == labels
    spec = backbone.spec_for("general-compact")
    for name in ("shoes", "dress"):
        data = photos(CLOTHING, "test", name, 1, skip=5)[0].read_bytes()
        (onnx_row,) = session.run(None, {session.get_inputs()[0].name: backbone.preprocess_bytes(data, spec)[None]})[0]
        served = probabilities(predictor.classify_image_with_no_store(pid, PUBLISHED, data))
        assert max(abs(float(onnx_row[j]) - served[label]) for j, label in enumerate(labels)) < 1e-4
        assert labels[int(np.argmax(onnx_row))] == name
        assert abs(float(onnx_row.sum()) - 1.0) < 1e-4

    # The link is signed: any change to it is refused (with a JSON error, like the API).
    parts = urlsplit(export.download_uri)
    params = dict(parse_qsl(parts.query))
    params["sig"] = ("0" if params["sig"][0] != "0" else "1") + params["sig"][1:]
    status, content_type, body = fetch(urlunsplit(parts._replace(query=urlencode(params))))
    assert status == 401 and json.loads(body)["code"] == "Unauthorized"
    params = dict(parse_qsl(parts.query))
    params["expires"] = str(int(params["expires"]) + 3600)
    assert fetch(urlunsplit(parts._replace(query=urlencode(params))))[0] == 401


# --------------------------------------------------------------------------- multilabel, and the iteration lifecycle


def test_multilabel_project_lifecycle(live, photo_host) -> None:
    trainer, predictor = trainer_for(live), predictor_for(live)
    names = ("hat", "shoes", "t-shirt")
    # No domain_id: the default domain, General (EfficientNet-Lite2 here).
    project = trainer.create_project(
        "SDK multilabel", description="several tags per photo", classification_type="Multilabel"
    )
    assert project.description == "several tags per photo"
    assert (project.settings.domain_id, project.settings.classification_type) == (GENERAL, "Multilabel")
    pid = project.id
    tags = {name: trainer.create_tag(pid, name) for name in names}
    for name in names:  # batch-level tag ids this time
        batch = ImageFileCreateBatch(
            images=[
                ImageFileCreateEntry(name=p.name, contents=p.read_bytes())
                for p in photos(CLOTHING, "train", name, PER_TAG)
            ],
            tag_ids=[tags[name].id],
        )
        result = trainer.create_images_from_files(pid, batch)
        assert result.is_batch_successful and all(r.image.tags[0].tag_name == name for r in result.images)
    assert {t.name: t.image_count for t in trainer.get_tags(pid)} == {name: PER_TAG for name in names}

    # Add a second tag to one photo, then take it off again.
    image = trainer.get_tagged_images(pid, tag_ids=[tags["hat"].id], take=1)[0]
    added = trainer.create_image_tags(pid, tags=[ImageTagCreateEntry(image_id=image.id, tag_id=tags["shoes"].id)])
    assert [(c.image_id, c.tag_id) for c in added.created] == [(image.id, tags["shoes"].id)]
    (both,) = trainer.get_images_by_ids(pid, image_ids=[image.id])
    assert sorted(t.tag_name for t in both.tags) == ["hat", "shoes"]
    assert trainer.get_tag(pid, tags["shoes"].id).image_count == PER_TAG + 1
    again = trainer.create_image_tags(pid, tags=[ImageTagCreateEntry(image_id=image.id, tag_id=tags["shoes"].id)])
    assert not again.created and [(d.image_id, d.tag_id) for d in again.duplicated] == [(image.id, tags["shoes"].id)]
    trainer.delete_image_tags(pid, image_ids=[image.id], tag_ids=[tags["shoes"].id])
    (one,) = trainer.get_images_by_ids(pid, image_ids=[image.id])
    assert [t.tag_name for t in one.tags] == ["hat"]
    assert trainer.get_tag(pid, tags["shoes"].id).image_count == PER_TAG

    iteration = trainer.train_project(pid)
    assert iteration.status == "Training" and iteration.name == "Iteration 1"
    iteration = wait_trained(trainer, pid, iteration.id)
    assert (iteration.classification_type, iteration.domain_id, iteration.publish_name) == ("Multilabel", GENERAL, "")
    perf = trainer.get_iteration_performance(pid, iteration.id, threshold=0.5)
    assert sorted(t.name for t in perf.per_tag_performance) == sorted(names)
    assert perf.precision > 0.7
    assert trainer.publish_iteration(pid, iteration.id, "labels", PREDICTION_RESOURCE) is True

    results, right = [], 0
    for name in names:
        for path in photos(CLOTHING, "test", name, 3):
            result = predictor.classify_image(pid, "labels", path.read_bytes())
            assert_ranked(result, names)
            right += top(result) == name
            results.append(result)
    assert right / len(results) >= 0.75, f"{right}/{len(results)} held-out photos right"
    sums = [sum(probabilities(r).values()) for r in results]
    assert any(abs(s - 1.0) > 1e-3 for s in sums), "multilabel probabilities look like a softmax"
    shirt = photos(CLOTHING, "test", "t-shirt", 1)[0]  # classified above, as bytes
    by_url = predictor.classify_image_url(pid, "labels", url=url_of(photo_host, shirt))
    assert probabilities(by_url) == pytest.approx(probabilities(results[2 * 3]), abs=1e-6)

    # A published iteration cannot be deleted; unpublishing ends prediction under that name.
    with pytest.raises(CustomVisionErrorException) as info:
        trainer.delete_iteration(pid, iteration.id)
    assert error_code(info) == "BadRequestIterationIsPublished"
    trainer.unpublish_iteration(pid, iteration.id)
    assert trainer.get_iteration(pid, iteration.id).publish_name == ""
    with pytest.raises(PredictionError) as info:
        predictor.classify_image(pid, "labels", photos(CLOTHING, "test", "hat", 1)[0].read_bytes())
    assert error_code(info) == "NotFoundIteration"
    trainer.delete_iteration(pid, iteration.id)
    assert trainer.get_iterations(pid) == []
    with pytest.raises(CustomVisionErrorException) as info:
        trainer.get_iteration(pid, iteration.id)
    assert error_code(info) == "NotFoundIteration"

    trainer.delete_project(pid)
    with pytest.raises(CustomVisionErrorException) as info:
        trainer.get_project(pid)
    assert error_code(info) == "NotFoundProject"
    assert pid not in {p.id for p in trainer.get_projects()}


# --------------------------------------------------------------------------- restart


def test_restart_keeps_everything(live, trained) -> None:
    trainer, predictor = trainer_for(live), predictor_for(live)
    pid = trained.project_id
    app = f"restart-{uuid.uuid4().hex[:8]}"
    photo = photos(CLOTHING, "test", "shoes", 1, skip=4)[0].read_bytes()
    before = predictor.classify_image(pid, PUBLISHED, photo, application=app)
    iterations = {i.id: (i.name, i.status, i.publish_name) for i in trainer.get_iterations(pid)}
    images = trainer.get_image_count(pid)
    tags = {t.id: t.name for t in trainer.get_tags(pid)}

    live.stop()
    live.start()
    trainer, predictor = trainer_for(live), predictor_for(live)
    assert trainer.get_project(pid).name == "SDK clothing"
    assert {i.id: (i.name, i.status, i.publish_name) for i in trainer.get_iterations(pid)} == iterations
    assert iterations[trained.iteration_id] == ("Iteration 1", "Completed", PUBLISHED)
    assert trainer.get_image_count(pid) == images
    assert {t.id: t.name for t in trainer.get_tags(pid)} == tags
    (kept,) = query(trainer, pid, application=app)
    assert kept.id == before.id
    assert probabilities(kept) == pytest.approx(probabilities(before), abs=1e-6)
    after = predictor.classify_image(pid, PUBLISHED, photo, application=app)
    assert top(after) == "shoes" and after.iteration == trained.iteration_id
    assert probabilities(after) == pytest.approx(probabilities(before), abs=1e-5)
    assert {r.id for r in query(trainer, pid, application=app)} == {before.id, after.id}

"""Images over HTTP: bad images in batches, for prediction and quick test, by URL (and the SSRF guard),
batch and body size limits. Every refusal is JSON ``{"code", "message"}`` and nothing is stored half-way.

Raw HTTP to the app in this process (tests/api.py); tests marked ``slow`` use a project trained on
real photos. A real socket (a body refused before it is sent) is in tests/test_api_server.py.
"""

from __future__ import annotations

import base64
import json
import random
import uuid

import httpx
import pytest

from tests.api import (
    MB,
    PUBLISHED,
    Api,
    Site,
    Trained,
    assert_error,
    bad_images,
    image_site,
    photo,
    png,
    png_header_only,
    serving,
    statuses,
    train_and_publish,
)


@pytest.fixture(scope="module")
def site():
    running = image_site()
    yield running
    running.close()


# --------------------------------------------------------------------------- images in batches


def test_bad_images_in_a_multipart_batch(api: Api) -> None:
    pid = api.project("multipart")
    tag = api.tag(pid, "dress")
    good = photo("dress", 2)
    bad = bad_images()
    parts = [("imageData", ("good.jpg", good))] + [("imageData", (name, data)) for name, data, _ in bad]
    response = api.t("POST", f"/projects/{pid}/images", params={"tagIds": tag}, files=parts)
    assert statuses(response) == ["OK"] + [want for _, _, want in bad]
    body = response.json()
    assert body["isBatchSuccessful"] is False
    assert body["images"][0]["image"]["id"]
    assert all(entry["image"] is None for entry in body["images"][1:]), body["images"]
    assert api.image_count(pid) == 1
    assert api.stored(good) and not any(api.stored(data) for _, data, _ in bad if data)
    # v3.0-v3.2 clients get 200 for a partly failed batch; still only good images land
    parts = [("imageData", ("good2.jpg", photo("dress", 3)))] + [("imageData", (n, d)) for n, d, _ in bad[:2]]
    old = api.http.post(
        api.endpoint + f"/customvision/v3.2/training/projects/{pid}/images",
        headers=api.training_headers,
        params={"tagIds": tag},
        files=parts,
    )
    assert statuses(old, 200) == ["OK", "ErrorImageFormat", "ErrorImageFormat"]
    # a raw octet-stream body is one image
    raw = api.t(
        "POST",
        f"/projects/{pid}/images",
        content=b"GIF89a" + b"\0" * 50,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert statuses(raw) == ["ErrorImageFormat"]
    assert api.image_count(pid) == 2
    assert api.ok(api.t("GET", f"/projects/{pid}/tags/{tag}"))["imageCount"] == 2


def test_bad_images_in_a_base64_batch(api: Api) -> None:
    pid = api.project("files")
    tag = api.tag(pid, "dress")
    bad = bad_images()
    entries = [{"name": "good.jpg", "contents": base64.b64encode(photo("dress", 4)).decode()}]
    entries += [{"name": name, "contents": base64.b64encode(data).decode()} for name, data, _ in bad]
    entries += [
        {"name": "not-base64.jpg", "contents": "this is ** not base64 !!"},
        {"name": "good2.jpg", "contents": base64.b64encode(photo("dress", 5)).decode()},
    ]
    response = api.t("POST", f"/projects/{pid}/images/files", json={"images": entries, "tagIds": [tag]})
    got = statuses(response)
    assert got == ["OK"] + [want for _, _, want in bad] + ["ErrorImageFormat", "OK"]
    assert api.image_count(pid) == 2
    assert not any(api.stored(data) for _, data, _ in bad if data)
    # the same good image again is a duplicate, not a second copy
    again = api.t("POST", f"/projects/{pid}/images/files", json={"images": entries[:1]})
    assert statuses(again) == ["OKDuplicate"]
    assert api.image_count(pid) == 2


def test_batch_limits(api: Api) -> None:
    pid = api.project("limits")
    tag = api.tag(pid, "colour")
    tiny = [png(16, 16, (i, 255 - i, 7)) for i in range(65)]
    too_many = api.t(
        "POST",
        f"/projects/{pid}/images",
        params={"tagIds": tag},
        files=[("imageData", (f"{i}.png", data)) for i, data in enumerate(tiny)],
    )
    assert_error(too_many, 400, "BadRequestExceededBatchSize")
    entries = [{"contents": base64.b64encode(data).decode()} for data in tiny]
    assert_error(
        api.t("POST", f"/projects/{pid}/images/files", json={"images": entries}), 400, "BadRequestExceededBatchSize"
    )
    urls = [{"url": f"http://127.0.0.1:9/{i}.png"} for i in range(65)]
    assert_error(
        api.t("POST", f"/projects/{pid}/images/urls", json={"images": urls}), 400, "BadRequestExceededBatchSize"
    )
    ids = ",".join(str(uuid.uuid4()) for _ in range(21))
    assert_error(
        api.t("POST", f"/projects/{pid}/images", params={"tagIds": ids}, files={"imageData": ("a.png", tiny[0])}), 400
    )
    assert_error(
        api.t("POST", f"/projects/{pid}/images/files", json={"images": entries[:1], "tagIds": ids.split(",")}), 400
    )
    assert_error(api.t("GET", f"/projects/{pid}/images", params={"tagIds": ids}), 400)
    assert_error(api.t("POST", f"/projects/{pid}/images/files", json={"images": []}), 400)
    assert api.image_count(pid) == 0
    # 64 is fine
    ok = api.t(
        "POST",
        f"/projects/{pid}/images",
        params={"tagIds": tag},
        files=[("imageData", (f"{i}.png", data)) for i, data in enumerate(tiny[:64])],
    )
    assert statuses(ok, 200) == ["OK"] * 64
    assert api.image_count(pid) == 64


# --------------------------------------------------------------------------- prediction and quick test


@pytest.mark.slow
def test_bad_images_for_prediction_and_quick_test(api: Api, trained: Trained) -> None:
    pid = trained.pid
    before = api.prediction_count(pid)
    test_photo = photo("shoes", 0, "test")
    routes = {
        "classify": (api.p, f"/{pid}/classify/iterations/{PUBLISHED}/image", 4 * MB),
        "classify nostore": (api.p, f"/{pid}/classify/iterations/{PUBLISHED}/image/nostore", 4 * MB),
        "quicktest": (api.t, f"/projects/{pid}/quicktest/image", 6 * MB),
    }
    for label, (call, path, limit) in routes.items():

        def post(**kw) -> httpx.Response:
            return call("POST", path, **kw)  # noqa: B023 (used at once)

        corrupt = b"\xff\xd8\xff\xe0" + random.Random(1).randbytes(3000)
        assert_error(post(files={"imageData": ("c.jpg", corrupt)}), 400, "BadRequestImageFormat")
        assert_error(
            post(content=corrupt, headers={"Content-Type": "application/octet-stream"}), 400, "BadRequestImageFormat"
        )
        assert_error(
            post(files={"imageData": ("r.jpg", random.Random(2).randbytes(3000))}), 400, "BadRequestImageFormat"
        )
        assert_error(post(files={"imageData": ("t.jpg", test_photo[:2000])}), 400, "BadRequestImageFormat")
        assert_error(post(files={"imageData": ("w.png", png(12000, 10))}), 400, "BadRequestImageDimensions")
        assert_error(
            post(files={"imageData": ("b.png", png_header_only(60000, 60000))}), 400, "BadRequestImageDimensions"
        )
        # over the limit by a little (the image check) and by a lot (the body limit)
        assert_error(
            post(files={"imageData": ("l.jpg", test_photo + b"\0" * (limit + 1 - len(test_photo)))}),
            (400, 413),
            "BadRequestImageSizeBytes",
        )
        assert_error(
            post(files={"imageData": ("h.jpg", test_photo + b"\0" * (limit + MB))}),
            (400, 413),
            "BadRequestImageSizeBytes",
        )
        assert_error(post(content=b"", headers={"Content-Type": "application/octet-stream"}), 400)
        assert_error(post(content=b""), 400)
        assert_error(post(files={"imageData": ("e.jpg", b"")}), 400)
        assert_error(post(json={"url": "http://example.com/a.jpg"}), 415, "UnsupportedMediaType")
        assert_error(post(content=b"hello", headers={"Content-Type": "text/plain"}), 415, "UnsupportedMediaType")
        assert_error(post(files=[("imageData", ("1.jpg", test_photo)), ("imageData", ("2.jpg", test_photo))]), 400)
        assert_error(post(content=b"--xyz--\r\n", headers={"Content-Type": "multipart/form-data; boundary=xyz"}), 400)
        assert_error(post(content=b"garbage", headers={"Content-Type": "multipart/form-data"}), 400)
        assert api.prediction_count(pid) == before, label
        assert not api.stored(corrupt), label
    # and good requests still work: stored once, not stored, stored once
    for label, (call, path, _) in routes.items():
        result = api.ok(call("POST", path, files={"imageData": ("s.jpg", test_photo)}))
        assert [p["tagName"] for p in result["predictions"]][0] == "shoes", label
    assert api.prediction_count(pid) == before + 2


# --------------------------------------------------------------------------- bodies


def test_body_size_limits(api: Api) -> None:
    pid = api.project("bodies")
    api.upload(pid, api.tag(pid, "colour"), [png(16, 16)])
    before = api.image_count(pid)
    big_json = json.dumps({"images": [{"url": "http://example.com/" + "a" * 2 * MB}]})
    assert_error(
        api.t("POST", f"/projects/{pid}/images/urls", content=big_json, headers={"Content-Type": "application/json"}),
        413,
    )
    assert_error(
        api.t(
            "POST",
            f"/projects/{pid}/predictions/query",
            content=b"{" + b" " * 2 * MB + b"}",
            headers={"Content-Type": "application/json"},
        ),
        413,
    )

    def chunks():  # no Content-Length: the limit is counted as the body arrives
        yield b'{"maxCount": 5, "application": "'
        for _ in range(40):
            yield b"a" * 65536
        yield b'"}'

    assert_error(
        api.t(
            "POST", f"/projects/{pid}/predictions/query", content=chunks(), headers={"Content-Type": "application/json"}
        ),
        413,
    )
    assert api.image_count(pid) == before
    assert api.ok(api.t("GET", f"/projects/{pid}"))["id"] == pid


# --------------------------------------------------------------------------- URLs


@pytest.mark.slow
def test_image_urls_that_fail(api: Api, trained: Trained, site: Site) -> None:
    pid = api.project("urls")
    tag = api.tag(pid, "hat")
    entries = [{"url": site.url(path)} for path in ("/good.jpg", "/missing.jpg", "/page.jpg", "/to-big", "/to-stream")]
    entries += [
        {"url": "ftp://127.0.0.1/a.jpg"},
        {"url": "not a url"},
        {"url": "http://user:pw@127.0.0.1/a.jpg"},
        {"url": "http://does-not-exist.invalid/a.jpg"},
    ]
    response = api.t("POST", f"/projects/{pid}/images/urls", json={"images": entries, "tagIds": [tag]})
    assert statuses(response) == [
        "OK",
        "ErrorSource",
        "ErrorImageFormat",
        "ErrorImageSize",
        "ErrorImageSize",
        "ErrorSource",
        "ErrorSource",
        "ErrorSource",
        "ErrorSource",
    ]
    assert api.image_count(pid) == 1

    before = api.prediction_count(trained.pid)
    single = [
        (api.t, f"/projects/{trained.pid}/quicktest/url"),
        (api.p, f"/{trained.pid}/classify/iterations/{PUBLISHED}/url"),
        (api.p, f"/{trained.pid}/classify/iterations/{PUBLISHED}/url/nostore"),
    ]
    for call, path in single:
        assert_error(call("POST", path, json={"url": site.url("/missing.jpg")}), 400, "BadRequestImageUrl")
        assert_error(call("POST", path, json={"url": site.url("/page.jpg")}), 400, "BadRequestImageFormat")
        assert_error(call("POST", path, json={"url": site.url("/to-big")}), 400, "BadRequestImageSizeBytes")
        assert_error(call("POST", path, json={"url": "file:///etc/passwd"}), 400, "BadRequestImageUrl")
        assert_error(call("POST", path, json={"url": ""}), 400)
    assert api.prediction_count(trained.pid) == before
    result = api.ok(
        api.p("POST", f"/{trained.pid}/classify/iterations/{PUBLISHED}/url", json={"url": site.url("/good.jpg")})
    )
    assert result["predictions"][0]["tagName"] == "hat"
    assert api.prediction_count(trained.pid) == before + 1


@pytest.fixture
def guarded(create_app, tmp_path, monkeypatch):
    """A second app that refuses private addresses (the production default), with a trained project."""
    monkeypatch.setenv("TAGVISION_ALLOW_PRIVATE_URLS", "0")
    with serving(create_app, tmp_path / "data") as running:
        yield running, train_and_publish(running, "guarded")


@pytest.mark.slow
def test_private_urls_are_refused(guarded, site: Site) -> None:
    api, trained = guarded
    site.requests.clear()
    forbidden = [
        site.url("/good.jpg"),
        f"http://localhost:{site.port}/good.jpg",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/",
        f"http://[::ffff:127.0.0.1]:{site.port}/",
        "file:///etc/passwd",
        "http://10.0.0.1/",
        "http://192.168.1.1/a.jpg",
        "http://2130706433/",
        "http://0x7f.1/",
        "http://0.0.0.0/",
        "gopher://127.0.0.1:25/",
    ]
    pid = trained.pid
    images_before, predictions_before = api.image_count(pid), api.prediction_count(pid)
    response = api.t(
        "POST",
        f"/projects/{pid}/images/urls",
        json={"images": [{"url": url} for url in forbidden], "tagIds": [trained.tags["hat"]]},
    )
    assert statuses(response) == ["ErrorSource"] * len(forbidden)
    for url in forbidden:
        for call, path in (
            (api.t, f"/projects/{pid}/quicktest/url"),
            (api.p, f"/{pid}/classify/iterations/{PUBLISHED}/url"),
            (api.p, f"/{pid}/classify/iterations/{PUBLISHED}/url/nostore"),
        ):
            assert_error(call("POST", path, json={"url": url}), 400, "BadRequestImageUrl")
    assert site.requests == [], "the guard let a request through to a loopback server"
    assert api.image_count(pid) == images_before
    assert api.prediction_count(pid) == predictions_before
    # the guarded app still works for uploads
    result = api.ok(
        api.p(
            "POST",
            f"/{pid}/classify/iterations/{PUBLISHED}/image",
            files={"imageData": ("h.jpg", photo("hat", 1, "test"))},
        )
    )
    assert result["predictions"][0]["tagName"] == "hat"
    api.assert_survived()


# --------------------------------------------------------------------------- afterwards


def test_the_app_survived(api: Api) -> None:
    api.assert_survived()

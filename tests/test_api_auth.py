"""Keys, routes and paths over HTTP: every route needs its key, unknown things are clear 404s, the
documented routes exist, and paths are case-insensitive. Each refusal is JSON ``{"code", "message"}``.

Raw HTTP to the app in this process (tests/api.py); tests marked ``slow`` use a project trained on
real photos (the module's ``trained`` fixture).
"""

from __future__ import annotations

import json
import re
import stat

import pytest

from tests.api import DUMMY, PUBLISHED, Api, Trained, assert_error, openapi_operations, photo
from tests.cli import tagvision

# --------------------------------------------------------------------------- keys


@pytest.mark.slow
def test_missing_wrong_and_swapped_keys_are_401(api: Api, trained: Trained) -> None:
    http = api.http
    projects = api.training("/projects")
    classify = api.prediction(f"/{trained.pid}/classify/iterations/{PUBLISHED}/image")
    image = {"imageData": ("a.jpg", photo("hat", 0, "test"))}
    refusals = [
        http.get(projects),
        http.get(projects, headers={"Training-Key": "0" * 32}),
        http.get(projects, headers={"Training-Key": ""}),
        http.get(projects, headers={"Training-Key": api.prediction_key}),  # the prediction key in the right header
        http.get(projects, headers={"Prediction-Key": api.prediction_key}),  # the prediction header
        http.get(projects, headers={"Prediction-Key": api.training_key}),  # the right key in the wrong header
        http.get(projects, headers={"Training-Key": api.training_key + "x"}),
        http.get(projects, headers={"Training-Key": api.training_key.upper()}),
        http.post(classify, files=image),
        http.post(classify, files=image, headers={"Prediction-Key": api.training_key}),
        http.post(classify, files=image, headers={"Training-Key": api.training_key}),
        http.post(classify, files=image, headers={"Prediction-Key": "nope"}),
    ]
    for response in refusals:
        assert_error(response, 401, "Unauthorized")
    for header in ("Training-Key", "Training-key", "training-key", "TRAINING-KEY"):
        assert http.get(projects, headers={header: api.training_key}).status_code == 200, header
    for header in ("Prediction-Key", "prediction-key", "PREDICTION-KEY"):
        response = http.post(classify, files=image, headers={header: api.prediction_key})
        assert response.status_code == 200, (header, response.text[:300])


def test_every_api_route_needs_its_key(api: Api) -> None:
    checked = 0
    for method, template in openapi_operations(api):
        if "/training" in template:
            path = template.replace("{version}", "v3.4-preview")
        elif "/prediction" in template:
            path = template.replace("{version}", "v3.1")
        else:
            continue
        path = re.sub(r"\{[^}]+\}", lambda m: "dummy" if m[0] == "{publishedName}" else DUMMY, path)
        for headers in ({}, {"Training-Key": "wrong", "Prediction-Key": "wrong"}):
            response = api.http.request(method, f"{api.endpoint}{path}", headers=headers)
            assert_error(response, 401, "Unauthorized")
        checked += 1
    assert checked >= 45, f"only {checked} API operations in /openapi.json"


def test_regenerated_training_key_takes_effect_without_restart(api: Api) -> None:
    old, prediction_key = api.training_key, api.prediction_key
    projects = api.training("/projects")
    assert api.http.get(projects, headers={"Training-Key": old}).status_code == 200
    # The command line's own KeyStore writes keys.json, as `tagvision keys` run beside the server would.
    result = tagvision("keys", "--regenerate", "training", "--json", data_dir=api.data_dir)
    keys_file = api.data_dir / "keys.json"
    stored = json.loads(keys_file.read_text())
    new = stored["trainingKey"]
    assert new != old and json.loads(result.stdout)["trainingKey"] == new
    assert stored["predictionKey"] == prediction_key  # the other key is untouched
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    assert_error(api.http.get(projects, headers={"Training-Key": old}), 401, "Unauthorized")
    assert api.http.get(projects, headers={"Training-Key": new}).status_code == 200
    assert api.http.get(projects, headers={"training-key": new}).status_code == 200


# --------------------------------------------------------------------------- unknown things


@pytest.mark.slow
def test_unknown_ids_routes_methods_and_versions(api: Api, trained: Trained) -> None:
    pid, hat = trained.pid, trained.tags["hat"]
    image_id = api.ok(api.t("GET", f"/projects/{pid}/images", params={"take": 1}))[0]["id"]
    before = api.image_count(pid)
    assert_error(api.t("GET", f"/projects/{DUMMY}"), 404, "NotFoundProject")
    assert_error(api.t("GET", "/projects/not-a-project"), 404, "NotFoundProject")
    assert_error(api.t("DELETE", f"/projects/{DUMMY}"), 404, "NotFoundProject")
    assert_error(api.t("PATCH", f"/projects/{DUMMY}", json={"name": "x"}), 404, "NotFoundProject")
    assert_error(api.t("GET", f"/projects/{DUMMY}/images/count"), 404, "NotFoundProject")
    assert_error(
        api.t("POST", f"/projects/{DUMMY}/images", files={"imageData": ("a.jpg", photo("dress", 1))}),
        404,
        "NotFoundProject",
    )
    assert_error(api.t("GET", f"/projects/{pid}/tags/{DUMMY}"), 404, "NotFoundTag")
    assert_error(api.t("DELETE", f"/projects/{pid}/tags/{DUMMY}"), 404, "NotFoundTag")
    assert_error(api.t("PATCH", f"/projects/{pid}/tags/{DUMMY}", json={"name": "x"}), 404, "NotFoundTag")
    assert_error(
        api.t(
            "POST",
            f"/projects/{pid}/images",
            params={"tagIds": DUMMY},
            files={"imageData": ("a.jpg", photo("dress", 1))},
        ),
        404,
        "NotFoundTag",
    )
    assert_error(
        api.t("POST", f"/projects/{pid}/images/tags", json={"tags": [{"imageId": image_id, "tagId": DUMMY}]}),
        404,
        "NotFoundTag",
    )
    assert_error(
        api.t("DELETE", f"/projects/{pid}/images/tags", params={"imageIds": image_id, "tagIds": DUMMY}),
        404,
        "NotFoundTag",
    )
    assert_error(
        api.t("POST", f"/projects/{pid}/images/tags", json={"tags": [{"imageId": DUMMY, "tagId": hat}]}),
        404,
        "NotFoundImage",
    )
    for method, suffix in (
        ("GET", ""),
        ("DELETE", ""),
        ("GET", "/performance"),
        ("GET", "/export"),
        ("DELETE", "/publish"),
    ):
        assert_error(api.t(method, f"/projects/{pid}/iterations/{DUMMY}{suffix}"), 404, "NotFoundIteration")
    assert_error(api.t("PATCH", f"/projects/{pid}/iterations/{DUMMY}", json={"name": "x"}), 404, "NotFoundIteration")
    assert_error(
        api.t(
            "POST", f"/projects/{pid}/iterations/{DUMMY}/publish", params={"publishName": "other", "predictionId": "x"}
        ),
        404,
        "NotFoundIteration",
    )
    assert_error(
        api.t(
            "POST",
            f"/projects/{pid}/quicktest/image",
            params={"iterationId": DUMMY},
            files={"imageData": ("a.jpg", photo("hat", 0, "test"))},
        ),
        404,
        "NotFoundIteration",
    )
    assert_error(api.t("GET", f"/domains/{DUMMY}"), 404, "NotFoundDomain")
    image = {"imageData": ("a.jpg", photo("hat", 0, "test"))}
    assert_error(api.p("POST", f"/{pid}/classify/iterations/NoSuchName/image", files=image), 404, "NotFoundIteration")
    assert_error(
        api.p("POST", f"/{pid}/classify/iterations/NoSuchName/url", json={"url": "http://x/a.jpg"}),
        404,
        "NotFoundIteration",
    )
    assert_error(
        api.p("POST", f"/{DUMMY}/classify/iterations/{PUBLISHED}/image", files=image),
        404,
        ("NotFoundIteration", "NotFoundProject"),
    )
    # routes and methods that do not exist
    for url in (
        f"{api.endpoint}/nothing",
        api.training("/nothing"),
        api.training(f"/projects/{pid}/nothing"),
        api.prediction(f"/{pid}/nothing"),
        f"{api.endpoint}/customvision/v9.9/training/projects",
        f"{api.endpoint}/customvision/v3.4/training/projects",
    ):
        headers = {**api.training_headers, **api.prediction_headers}
        assert_error(api.http.get(url, headers=headers), 404, "NotFound")
    assert_error(
        api.http.post(
            f"{api.endpoint}/customvision/v9.9/training/projects", params={"name": "v99"}, headers=api.training_headers
        ),
        404,
        "NotFound",
    )
    assert_error(
        api.http.post(
            f"{api.endpoint}/customvision/v9.9/prediction/{pid}/classify/iterations/{PUBLISHED}/url",
            json={"url": "http://x/a.jpg"},
            headers=api.prediction_headers,
        ),
        404,
        "NotFound",
    )
    for method, path in (
        ("PUT", "/projects"),
        ("DELETE", "/domains"),
        ("POST", f"/projects/{pid}/images/count"),
        ("GET", f"/projects/{pid}/train"),
    ):
        assert_error(api.t(method, path), 405)
    assert_error(api.p("GET", f"/{pid}/classify/iterations/{PUBLISHED}/image"), 405)
    assert api.image_count(pid) == before
    assert api.ok(api.t("GET", f"/projects/{pid}"))["id"] == pid


# --------------------------------------------------------------------------- OpenAPI and path case

DOCUMENTED = [  # docs/custom-vision-api.md 2.1 and 2.2 (less export_project, import_project, get_artifact)
    ("GET", "/domains"),
    ("GET", "/domains/{domainId}"),
    ("GET", "/projects"),
    ("POST", "/projects"),
    ("GET", "/projects/{projectId}"),
    ("PATCH", "/projects/{projectId}"),
    ("DELETE", "/projects/{projectId}"),
    ("GET", "/projects/{projectId}/images"),
    ("POST", "/projects/{projectId}/images"),
    ("DELETE", "/projects/{projectId}/images"),
    ("GET", "/projects/{projectId}/images/count"),
    ("POST", "/projects/{projectId}/images/files"),
    ("GET", "/projects/{projectId}/images/id"),
    ("POST", "/projects/{projectId}/images/metadata"),
    ("POST", "/projects/{projectId}/images/predictions"),
    ("GET", "/projects/{projectId}/images/tagged"),
    ("GET", "/projects/{projectId}/images/tagged/count"),
    ("POST", "/projects/{projectId}/images/tags"),
    ("DELETE", "/projects/{projectId}/images/tags"),
    ("GET", "/projects/{projectId}/images/untagged"),
    ("GET", "/projects/{projectId}/images/untagged/count"),
    ("POST", "/projects/{projectId}/images/urls"),
    ("GET", "/projects/{projectId}/iterations"),
    ("GET", "/projects/{projectId}/iterations/{iterationId}"),
    ("DELETE", "/projects/{projectId}/iterations/{iterationId}"),
    ("PATCH", "/projects/{projectId}/iterations/{iterationId}"),
    ("GET", "/projects/{projectId}/iterations/{iterationId}/export"),
    ("POST", "/projects/{projectId}/iterations/{iterationId}/export"),
    ("GET", "/projects/{projectId}/iterations/{iterationId}/performance"),
    ("GET", "/projects/{projectId}/iterations/{iterationId}/performance/images"),
    ("GET", "/projects/{projectId}/iterations/{iterationId}/performance/images/count"),
    ("POST", "/projects/{projectId}/iterations/{iterationId}/publish"),
    ("DELETE", "/projects/{projectId}/iterations/{iterationId}/publish"),
    ("DELETE", "/projects/{projectId}/predictions"),
    ("POST", "/projects/{projectId}/predictions/query"),
    ("POST", "/projects/{projectId}/quicktest/image"),
    ("POST", "/projects/{projectId}/quicktest/url"),
    ("GET", "/projects/{projectId}/tags"),
    ("POST", "/projects/{projectId}/tags"),
    ("GET", "/projects/{projectId}/tags/{tagId}"),
    ("DELETE", "/projects/{projectId}/tags/{tagId}"),
    ("PATCH", "/projects/{projectId}/tags/{tagId}"),
    ("POST", "/projects/{projectId}/tagsandregions/suggestions"),
    ("POST", "/projects/{projectId}/images/suggested"),
    ("POST", "/projects/{projectId}/images/suggested/count"),
    ("POST", "/projects/{projectId}/train"),
]
DOCUMENTED_PREDICTION = [
    ("POST", "/{projectId}/classify/iterations/{publishedName}/image"),
    ("POST", "/{projectId}/classify/iterations/{publishedName}/image/nostore"),
    ("POST", "/{projectId}/classify/iterations/{publishedName}/url"),
    ("POST", "/{projectId}/classify/iterations/{publishedName}/url/nostore"),
]


def test_openapi_lists_the_documented_routes(api: Api) -> None:
    operations = set(openapi_operations(api))
    wanted = {(m, "/customvision/{version}/training" + p) for m, p in DOCUMENTED}
    wanted |= {(m, "/customvision/{version}/prediction" + p) for m, p in DOCUMENTED_PREDICTION}
    assert len(wanted) >= 45
    assert sorted(wanted - operations) == []
    docs = api.http.get(f"{api.endpoint}/docs")
    assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
    assert "<html" in docs.text.lower()


@pytest.mark.slow
def test_paths_are_case_insensitive_but_publish_names_are_not(api: Api, trained: Trained) -> None:
    pid = trained.pid
    lower = api.ok(api.t("GET", "/projects"))
    for path in (
        "/customvision/v3.4-preview/Training/Projects",
        "/CustomVision/V3.4-Preview/TRAINING/projects",
        "/customvision/v3.3/training/PROJECTS",
    ):
        response = api.http.get(api.endpoint + path, headers=api.training_headers)
        assert response.status_code == 200, (path, response.text[:300])
        assert {p["id"] for p in response.json()} == {p["id"] for p in lower}
    upper = api.http.get(
        api.endpoint + f"/customvision/v3.4-preview/Training/Projects/{pid.upper()}/Tags", headers=api.training_headers
    )
    assert upper.status_code == 200 and {t["id"] for t in upper.json()} == set(trained.tags.values())
    image = {"imageData": ("h.jpg", photo("hat", 2, "test"))}
    works = api.http.post(
        api.endpoint + f"/customvision/v3.1/Prediction/{pid.upper()}/Classify/Iterations/{PUBLISHED}/Image/NoStore",
        headers=api.prediction_headers,
        files=image,
    )
    assert works.status_code == 200, works.text[:300]
    assert api.ok(api.p("POST", f"/{pid}/classify/iterations/{PUBLISHED}/image/nostore", files=image))
    for wrong_case in (PUBLISHED.lower(), PUBLISHED.upper()):
        assert_error(
            api.p("POST", f"/{pid}/classify/iterations/{wrong_case}/image/nostore", files=image),
            404,
            "NotFoundIteration",
        )
    assert_error(
        api.http.get(api.endpoint + "/customvision/v3.4-preview/Training/Nothing", headers=api.training_headers),
        404,
        "NotFound",
    )


# --------------------------------------------------------------------------- afterwards


def test_the_app_survived(api: Api) -> None:
    api.assert_survived()

"""Malformed requests over HTTP: bad JSON, names, query parameters, object detection, and the rules of
training, publishing and exporting. Every refusal is JSON ``{"code", "message"}``, nothing is stored
half-way, and the app keeps answering.

Raw HTTP to the app in this process (tests/api.py); tests marked ``slow`` use a project trained on
real photos (the module's ``trained`` fixture) or train one.
"""

from __future__ import annotations

import base64
import unicodedata
import uuid

import pytest

from tests.api import COMPACT, DETECTION, DUMMY, PUBLISHED, Api, Trained, assert_error, photo

# --------------------------------------------------------------------------- JSON bodies


@pytest.mark.slow
def test_malformed_and_mistyped_json(api: Api, trained: Trained) -> None:
    pid = trained.pid
    before_images, before_predictions = api.image_count(pid), api.prediction_count(pid)
    json_type = {"Content-Type": "application/json"}
    files = f"/projects/{pid}/images/files"
    assert_error(api.t("POST", files, content=b'{"images": [', headers=json_type), 400, "BadRequestInvalid")
    assert_error(api.t("POST", files, content=b"{'images': []}", headers=json_type), 400, "BadRequestInvalid")
    assert_error(api.t("POST", files, content=b"\xff\xfe\x00garbage", headers=json_type), 400)
    assert_error(api.t("POST", files, json={"images": "x"}), 400)
    assert_error(api.t("POST", files, json=[1, 2, 3]), 400)
    assert_error(api.t("POST", files, json={"images": [{"contents": 5}]}), 400)
    assert_error(api.t("POST", files, json={"images": [{"name": "no contents"}]}), 400)
    assert_error(api.t("POST", files, json={"images": [{"contents": "AAAA"}], "tagIds": "not-a-list"}), 400)
    assert_error(
        api.t("POST", files, content=b"<images><image/></images>", headers={"Content-Type": "application/xml"}),
        415,
        "UnsupportedMediaType",
    )
    assert_error(api.t("POST", f"/projects/{pid}/images/urls", json={"images": [{}]}), 400)
    assert_error(api.t("POST", f"/projects/{pid}/images/urls", json={"images": [{"url": None}]}), 400)
    assert_error(api.t("POST", f"/projects/{pid}/images/tags", json={"tags": [{"imageId": "x"}]}), 400)
    assert_error(api.t("POST", f"/projects/{pid}/quicktest/url", json={}), 400)
    assert_error(
        api.t("POST", f"/projects/{pid}/quicktest/url", content=b'{"url": ', headers=json_type),
        400,
        "BadRequestInvalid",
    )
    assert_error(
        api.t(
            "POST",
            f"/projects/{pid}/quicktest/url",
            content=b"<ImageUrl><Url>http://x/a.jpg</Url></ImageUrl>",
            headers={"Content-Type": "application/xml"},
        ),
        415,
        "UnsupportedMediaType",
    )
    assert_error(api.t("POST", f"/projects/{pid}/predictions/query", json={"maxCount": "many"}), 400)
    assert_error(api.t("PATCH", f"/projects/{pid}", json={"name": 5}), 400)
    assert_error(api.t("PATCH", f"/projects/{pid}/iterations/{trained.iteration}", json={"name": ["x"]}), 400)
    url = f"/{pid}/classify/iterations/{PUBLISHED}/url"
    assert_error(api.p("POST", url, json={}), 400)
    assert_error(api.p("POST", url, json={"url": 7}), 400)
    assert_error(api.p("POST", url, content=b"{", headers=json_type), 400, "BadRequestInvalid")
    assert_error(
        api.p("POST", url, content=b"<ImageUrl/>", headers={"Content-Type": "application/xml"}),
        415,
        "UnsupportedMediaType",
    )
    assert api.image_count(pid) == before_images
    assert api.prediction_count(pid) == before_predictions
    project = api.ok(api.t("GET", f"/projects/{pid}"))
    assert project["name"].startswith("trained-")


# --------------------------------------------------------------------------- names

GOOD_NAMES = [
    "🐱 cats & dogs 🐶",
    "👩\u200d💻 coder 👨\u200d👩\u200d👧 family 🏳️\u200d🌈",  # emoji ZWJ sequences
    "מודל עברית",
    "نموذج عربي",
    "می\u200cخواهم",  # Persian with a zero-width non-joiner
    "x\u0301\u0302 q\u0323\u0307 combining",
    "x'); DROP TABLE projects;--",
    "Robert'); DELETE FROM tags WHERE 1=1; --",
    '<script>alert("x")</script><img src=x onerror=alert(1)>',
    "%s %n {0} ${HOME} \\x00 %00",
    "a/b?c=d&e#f",
    "名前 " + "n" * 250,
    "a" * 255,
]
BAD_NAMES = [
    "",
    "   ",
    "a" * 256,
    "🐱" * 256,
    "a\x00b",
    "line\nbreak",
    "tab\there",
    "esc\x1b[31m",
    "del\x7f",
    "\u202eevil.exe",
    "bidi\u2066x\u2069",
]


def test_project_and_tag_names(api: Api) -> None:
    for name in GOOD_NAMES:
        assert unicodedata.normalize("NFC", name) == name  # so "round-trips exactly" is the right test
    created = {}
    for name in GOOD_NAMES:
        project = api.ok(api.t("POST", "/projects", params={"name": name, "domainId": COMPACT}))
        assert project["name"] == name
        assert api.ok(api.t("GET", f"/projects/{project['id']}"))["name"] == name
        created[name] = project["id"]
    for name in GOOD_NAMES:
        assert_error(api.t("POST", "/projects", params={"name": name}), 400, "BadRequestProjectNameNotUnique")
    for name in BAD_NAMES:
        assert_error(api.t("POST", "/projects", params={"name": name}), 400, "BadRequestProjectName")
    assert_error(api.t("POST", "/projects"), 400, "BadRequestProjectName")
    # decomposed input is stored composed (NFC), so "é" typed either way is one name
    decomposed = api.ok(api.t("POST", "/projects", params={"name": "Ame\u0301lie " + uuid.uuid4().hex[:6]}))
    assert decomposed["name"].startswith("Am\u00e9lie ")
    assert_error(api.t("POST", "/projects", params={"name": decomposed["name"]}), 400, "BadRequestProjectNameNotUnique")

    pid = created[GOOD_NAMES[0]]
    for name in GOOD_NAMES:
        tag = api.ok(api.t("POST", f"/projects/{pid}/tags", params={"name": name}))
        assert tag["name"] == name
        assert api.ok(api.t("GET", f"/projects/{pid}/tags/{tag['id']}"))["name"] == name
    for name in GOOD_NAMES:
        assert_error(api.t("POST", f"/projects/{pid}/tags", params={"name": name}), 400, "BadRequestTagNameNotUnique")
    api.tag(pid, "Hat")
    assert_error(api.t("POST", f"/projects/{pid}/tags", params={"name": "hat"}), 400, "BadRequestTagNameNotUnique")
    for name in BAD_NAMES:
        assert_error(api.t("POST", f"/projects/{pid}/tags", params={"name": name}), 400, "BadRequestTagName")
    assert_error(
        api.t("POST", f"/projects/{pid}/tags", params={"name": "x", "type": "Bogus"}), 400, "BadRequestTagType"
    )
    tag_names = [t["name"] for t in api.ok(api.t("GET", f"/projects/{pid}/tags"))]
    assert sorted(tag_names) == sorted(GOOD_NAMES + ["Hat"])
    # renames are held to the same rules
    some = api.ok(api.t("GET", f"/projects/{created[GOOD_NAMES[1]]}"))
    assert_error(api.t("PATCH", f"/projects/{some['id']}", json={"name": "a\x00b"}), 400, "BadRequestProjectName")
    assert_error(
        api.t("PATCH", f"/projects/{some['id']}", json={"name": GOOD_NAMES[2]}), 400, "BadRequestProjectNameNotUnique"
    )

    listed = api.ok(api.t("GET", "/projects"))
    names = [p["name"] for p in listed]
    for name in GOOD_NAMES:
        assert names.count(name) == 1, name
    assert not any(n in names for n in BAD_NAMES)
    assert api.ok(api.t("GET", f"/projects/{created[GOOD_NAMES[6]]}"))["name"] == "x'); DROP TABLE projects;--"
    api.project("after-names")  # the projects table still takes new rows


# --------------------------------------------------------------------------- query parameters


@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/images", {"take": 257}),
        ("/images", {"take": -1}),
        ("/images", {"take": "ten"}),
        ("/images", {"skip": -1}),
        ("/images", {"taggingStatus": "Bogus"}),
        ("/images", {"orderBy": "Sideways"}),
        ("/images", {"$filter": "metadata=key eq"}),
        ("/images", {"$filter": "key = 'value'"}),
        ("/images/count", {"taggingStatus": "Bogus"}),
        ("/images/count", {"$filter": "metadata=k eq 'unterminated"}),
        ("/images/tagged", {"take": 1000}),
        ("/images/tagged", {"orderBy": "Sideways"}),
        ("/images/untagged", {"skip": -5}),
        ("/images/untagged", {"skip": 2**31}),
        ("/images", {"skip": 10**30}),  # past SQLite's integers
        ("/images/tagged", {"skip": 2**63}),
        ("/images/id", {"imageIds": ",".join(str(uuid.uuid4()) for _ in range(257))}),
        ("/iterations/{it}/performance", {"threshold": 2}),
        ("/iterations/{it}/performance", {"threshold": -0.1}),
        ("/iterations/{it}/performance", {"threshold": "high"}),
        ("/iterations/{it}/performance/images", {"take": 257}),
        ("/iterations/{it}/performance/images", {"orderBy": "Sideways"}),
        ("/iterations/{it}/performance/images", {"skip": 10**30}),
    ],
)
def test_bad_query_parameters(api: Api, trained: Trained, path: str, params: dict) -> None:
    response = api.t("GET", f"/projects/{trained.pid}" + path.replace("{it}", trained.iteration), params=params)
    assert_error(response, 400)


@pytest.mark.slow
def test_bad_query_parameters_on_writes(api: Api, trained: Trained) -> None:
    pid = trained.pid
    before = api.image_count(pid)
    assert_error(
        api.t("POST", "/projects", params={"name": "ct", "classificationType": "Sideways"}),
        400,
        "BadRequestProjectUnknownClassification",
    )
    assert_error(api.t("POST", f"/projects/{pid}/train", params={"forceTrain": "perhaps"}), 400)
    assert_error(api.t("POST", f"/projects/{pid}/train", params={"reservedBudgetInHours": "lots"}), 400)
    assert_error(
        api.t("POST", f"/projects/{pid}/train", params={"reservedBudgetInHours": 10**30, "forceTrain": "true"}), 400
    )
    for continuation in ("junk", "-5", "9" * 40, str(2**63)):
        assert_error(
            api.t("POST", f"/projects/{pid}/predictions/query", json={"continuation": continuation}),
            400,
            "BadRequestPredictionInvalidQueryParameters",
        )
    assert_error(api.t("POST", f"/projects/{pid}/predictions/query", json={"orderBy": "Sideways"}), 400)
    assert_error(
        api.t("POST", f"/projects/{pid}/predictions/query", json={"tags": [{"id": t} for t in ("a", "b", "c")]}),
        400,
        "BadRequestPredictionTagsExceededCount",
    )
    assert_error(api.t("DELETE", f"/projects/{pid}/predictions"), 400, "BadRequestPredictionIdsMissing")
    assert_error(
        api.p(
            "POST",
            f"/{pid}/classify/iterations/{PUBLISHED}/image",
            params={"application": "a" * 300},
            files={"imageData": ("a.jpg", photo("hat", 0, "test"))},
        ),
        400,
    )
    assert_error(api.t("DELETE", f"/projects/{pid}/images"), 400)
    assert_error(api.t("DELETE", f"/projects/{pid}/images", params={"allImages": "maybe"}), 400)
    assert_error(api.t("DELETE", f"/projects/{pid}/images/tags", params={"imageIds": DUMMY}), 400)
    assert_error(
        api.t(
            "POST",
            f"/projects/{pid}/quicktest/image",
            params={"store": "sometimes"},
            files={"imageData": ("a.jpg", photo("hat", 0, "test"))},
        ),
        400,
    )
    assert_error(
        api.t(
            "POST",
            f"/projects/{pid}/iterations/{trained.iteration}/publish",
            params={"publishName": "a/b", "predictionId": "x"},
        ),
        400,
        "BadRequestInvalidPublishName",
    )
    assert_error(
        api.t("POST", f"/projects/{pid}/iterations/{trained.iteration}/publish", params={"predictionId": "x"}), 400
    )
    assert api.image_count(pid) == before
    assert [i["id"] for i in api.ok(api.t("GET", f"/projects/{pid}/iterations"))] == [trained.iteration]


# --------------------------------------------------------------------------- object detection


@pytest.mark.slow
def test_object_detection_is_refused(api: Api, trained: Trained) -> None:
    pid = trained.pid
    before = api.image_count(pid)
    projects_before = len(api.ok(api.t("GET", "/projects")))
    not_supported = "BadRequestNotSupported"
    region = {"tagId": trained.tags["hat"], "left": 0.1, "top": 0.1, "width": 0.5, "height": 0.5}
    assert_error(
        api.t("POST", f"/projects/{pid}/images/regions", json={"regions": [{"imageId": DUMMY, **region}]}),
        400,
        not_supported,
    )
    assert_error(api.t("DELETE", f"/projects/{pid}/images/regions", params={"regionIds": DUMMY}), 400, not_supported)
    assert_error(api.t("POST", f"/projects/{pid}/images/{DUMMY}/regionproposals"), 400, not_supported)
    contents = base64.b64encode(photo("hat", 30)).decode()
    assert_error(
        api.t("POST", f"/projects/{pid}/images/files", json={"images": [{"contents": contents, "regions": [region]}]}),
        400,
        not_supported,
    )
    image = {"imageData": ("h.jpg", photo("hat", 0, "test"))}
    for suffix in ("image", "image/nostore"):
        assert_error(api.p("POST", f"/{pid}/detect/iterations/{PUBLISHED}/{suffix}", files=image), 400, not_supported)
    for suffix in ("url", "url/nostore"):
        assert_error(
            api.p("POST", f"/{pid}/detect/iterations/{PUBLISHED}/{suffix}", json={"url": "http://example.com/a.jpg"}),
            400,
            not_supported,
        )
    for domain in (DETECTION, "a27d5ca5-bb19-49d8-a70a-fec086c47f5b"):
        assert_error(
            api.t("POST", "/projects", params={"name": f"od-{domain[:4]}", "domainId": domain}), 400, not_supported
        )
    assert_error(
        api.t("POST", "/projects", params={"name": "unknown-domain", "domainId": DUMMY}),
        400,
        "BadRequestProjectUnknownDomain",
    )
    assert_error(
        api.t("POST", "/projects", params={"name": "junk-domain", "domainId": "junk"}),
        400,
        "BadRequestProjectUnknownDomain",
    )
    project = api.ok(api.t("GET", f"/projects/{pid}"))
    detection_settings = {**project["settings"], "domainId": DETECTION}
    assert_error(api.t("PATCH", f"/projects/{pid}", json={**project, "settings": detection_settings}), 400)
    assert api.ok(api.t("GET", f"/projects/{pid}"))["settings"]["domainId"] == COMPACT
    assert len(api.ok(api.t("GET", "/projects"))) == projects_before
    assert api.image_count(pid) == before


# --------------------------------------------------------------------------- training, publishing and exporting


@pytest.mark.slow
def test_training_publishing_and_export_rules(api: Api, trained: Trained) -> None:
    pid = api.project("training-rules")
    hat = api.tag(pid, "hat")
    api.upload(pid, hat, [photo("hat", i) for i in range(5, 17)])
    assert_error(api.t("POST", f"/projects/{pid}/train"), 400, "BadRequestTrainingValidationFailed")
    shoes = api.tag(pid, "shoes")
    api.upload(pid, shoes, [photo("shoes", i) for i in range(5, 7)])
    assert_error(api.t("POST", f"/projects/{pid}/train"), 400, "BadRequestTrainingValidationFailed")  # 2 < 5
    api.upload(pid, shoes, [photo("shoes", i) for i in range(7, 17)])
    assert_error(
        api.t("POST", f"/projects/{pid}/train", params={"trainingType": "Advanced", "budgetMinutes": 0.1}),
        400,
        "BadRequestReservedBudgetInHoursNotEnoughForAdvancedTraining",
    )
    assert_error(api.t("POST", f"/projects/{pid}/train", params={"trainingType": "Expert"}), 400, "BadRequestInvalid")
    assert_error(
        api.t("POST", f"/projects/{pid}/train", params={"trainingType": "Advanced", "budgetMinutes": -1}),
        400,
        "BadRequestInvalid",
    )
    assert_error(
        api.t(
            "POST",
            f"/projects/{pid}/train",
            json={"customBaseModelInfo": {"projectId": trained.pid, "iterationId": trained.iteration}},
        ),
        400,
        "BadRequestNotSupported",
    )
    assert api.ok(api.t("GET", f"/projects/{pid}/iterations")) == []  # the refusals left nothing behind

    first = api.t("POST", f"/projects/{pid}/train", params={"forceTrain": "true"})
    second = api.t("POST", f"/projects/{pid}/train", params={"forceTrain": "true"})
    publish = api.t(
        "POST",
        f"/projects/{pid}/iterations/{api.ok(first)['id']}/publish",
        params={"publishName": "early", "predictionId": "x"},
    )
    iteration = first.json()
    assert iteration["status"] == "Training"
    assert_error(second, 400, "BadRequestTrainingAlreadyInProgress")
    assert_error(publish, 400, "BadRequestIterationIsNotTrained")
    assert_error(api.t("DELETE", f"/projects/{pid}"), 400, "BadRequestTrainingAlreadyInProgress")
    assert api.wait_trained(pid, iteration["id"])["status"] == "Completed"
    assert len(api.ok(api.t("GET", f"/projects/{pid}/iterations"))) == 1
    assert_error(api.t("POST", f"/projects/{pid}/train"), 400, "BadRequestTrainingNotNeeded")

    it = iteration["id"]
    assert_error(api.t("POST", f"/projects/{pid}/iterations/{it}/export", params={"platform": "CoreML"}), 400)
    assert_error(api.t("POST", f"/projects/{pid}/iterations/{it}/export", params={"platform": "Bogus"}), 400)
    assert_error(api.t("POST", f"/projects/{pid}/iterations/{it}/export"), 400)
    assert_error(
        api.t("POST", f"/projects/{pid}/iterations/{it}/export", params={"platform": "ONNX", "flavor": "ONNX99"}), 400
    )
    assert api.ok(api.t("GET", f"/projects/{pid}/iterations/{it}/export")) == []
    assert_error(
        api.t(
            "POST", f"/projects/{pid}/iterations/{DUMMY}/publish", params={"publishName": "ghost", "predictionId": "x"}
        ),
        404,
        "NotFoundIteration",
    )
    assert_error(api.t("DELETE", f"/projects/{pid}/iterations/{it}/publish"), 400, "BadRequestIterationNotPublished")
    # a publish name may be any text without "/", and keeps its case
    fancy = "Modèle ✓ v1"
    assert (
        api.ok(
            api.t(
                "POST", f"/projects/{pid}/iterations/{it}/publish", params={"publishName": fancy, "predictionId": "x"}
            )
        )
        is True
    )
    image = {"imageData": ("h.jpg", photo("hat", 3, "test"))}
    assert api.ok(api.p("POST", f"/{pid}/classify/iterations/{fancy}/image/nostore", files=image))
    assert_error(
        api.p("POST", f"/{pid}/classify/iterations/{fancy.upper()}/image/nostore", files=image),
        404,
        "NotFoundIteration",
    )
    assert api.t("DELETE", f"/projects/{pid}/iterations/{it}/publish").status_code == 204
    assert_error(
        api.p("POST", f"/{pid}/classify/iterations/{fancy}/image/nostore", files=image), 404, "NotFoundIteration"
    )
    # the publish name of another project is no clash
    assert (
        api.ok(
            api.t(
                "POST",
                f"/projects/{pid}/iterations/{it}/publish",
                params={"publishName": PUBLISHED, "predictionId": "x"},
            )
        )
        is True
    )
    # a published iteration cannot be deleted
    assert_error(
        api.t("DELETE", f"/projects/{trained.pid}/iterations/{trained.iteration}"),
        400,
        "BadRequestIterationIsPublished",
    )
    assert_error(api.t("DELETE", f"/projects/{pid}/iterations/{it}"), 400, "BadRequestIterationIsPublished")
    assert api.ok(api.t("GET", f"/projects/{trained.pid}/iterations/{trained.iteration}"))["publishName"] == PUBLISHED
    assert_error(api.t("PATCH", f"/projects/{pid}/iterations/{it}", json={"name": ""}), 400)


# --------------------------------------------------------------------------- afterwards


def test_the_app_survived(api: Api) -> None:
    api.assert_survived()

"""Vehicle insurance on real car-damage photos, over the HTTP API in this process: a catalogue of damage tags with
a premium factor, a decision rule on top of the probabilities, predictions stored with a claim number, records
exported, and a later catalogue edit that must leave the exported records of earlier predictions as they were.
Then retention (a clock moved past it), bad input with its row or field, and the atomicity of what lands.
"""

from __future__ import annotations

import csv
import io
import json
import time

import pytest

from tagvision.clock import ManualClock
from tests.api import PUBLISHED, Api, assert_error
from tests.conftest import CAR_DAMAGE, need, photos

pytestmark = pytest.mark.slow

DAMAGE = ("glass_shatter", "door_dent", "bumper_scratch", "tail_lamp", "unknown")
PER_TAG = 8
CATALOGUE = (
    "tag,premiumFactor,severity,repair\n"
    "glass_shatter,1.8,3,Replace the glass\n"
    "door_dent,1.25,2,Panel beating\n"
    "bumper_scratch,1.1,1,Polish and paint\n"
    "tail_lamp,1.3,2,Replace the lamp unit\n"
    "unknown,1.0,0,Inspect in person\n"
)
RULES = [
    {"rule": "most-probable-above", "attribute": "premiumFactor", "threshold": 0.5, "default": 1.0, "name": "premium"},
    {"rule": "probability-weighted", "attribute": "premiumFactor", "name": "expectedFactor"},
    {"rule": "max-above", "attribute": "severity", "threshold": 0.2, "name": "worstSeverity"},
]


def claim_photos() -> list[tuple[str, str, bytes]]:
    """(claim number, true tag, photo) for two claims of three photos each, from test/ (never trained on)."""
    chosen = [("CLM-1001", "glass_shatter"), ("CLM-1001", "door_dent"), ("CLM-1001", "tail_lamp")]
    chosen += [("CLM-1002", "glass_shatter"), ("CLM-1002", "bumper_scratch"), ("CLM-1002", "unknown")]
    return [
        (claim, tag, photos(CAR_DAMAGE, "test", tag, 1, skip=i)[0].read_bytes())
        for i, (claim, tag) in enumerate(chosen)
    ]


@pytest.fixture(scope="module")
def claims(api: Api) -> dict:
    """A compact project of 5 damage tags x 8 photos with its catalogue and rules, trained and published."""
    need(CAR_DAMAGE)
    pid = api.project("claims")
    for name in DAMAGE:
        tag = api.tag(pid, name)
        api.upload(pid, tag, [p.read_bytes() for p in photos(CAR_DAMAGE, "train", name, PER_TAG)])
    report = api.ok(api.t("POST", f"/projects/{pid}/catalogue", params={"format": "csv"}, content=CATALOGUE.encode()))
    assert (report["updated"], report["failed"]) == (len(DAMAGE), 0)
    assert api.ok(api.t("PUT", f"/projects/{pid}/rules", json={"rules": RULES}))["rules"][0]["name"] == "premium"
    iteration = api.ok(api.t("POST", f"/projects/{pid}/train"))["id"]
    assert api.wait_trained(pid, iteration)["status"] == "Completed"
    api.ok(
        api.t(
            "POST",
            f"/projects/{pid}/iterations/{iteration}/publish",
            params={"publishName": PUBLISHED, "predictionId": "x"},
        )
    )
    tags = {t["name"]: t["id"] for t in api.ok(api.t("GET", f"/projects/{pid}/tags"))}
    return {"pid": pid, "tags": tags}


def classify(api: Api, pid: str, data: bytes, headers: dict[str, str] | None = None, **params) -> dict:
    response = api.p(
        "POST",
        f"/{pid}/classify/iterations/{PUBLISHED}/image",
        params=params,
        content=data,
        headers={"Content-Type": "application/octet-stream", **(headers or {})},
    )
    return api.ok(response)


def export(api: Api, pid: str, fmt: str, claim: str) -> list[dict]:
    response = api.t(
        "GET", f"/projects/{pid}/predictions/export", params={"format": fmt, "metadata": json.dumps({"claim": claim})}
    )
    assert response.status_code == 200, response.text
    if fmt == "jsonl":
        assert response.headers["content-type"].startswith("application/x-ndjson")
        return [json.loads(line) for line in response.text.splitlines()]
    return list(csv.DictReader(io.StringIO(response.text)))


def without_links(records: list[dict]) -> list[dict]:
    """Signed image links name an expiry hour; everything else in a record must stay as it was."""
    return [{k: v for k, v in r.items() if k != "imageUri"} for r in records]


def test_premium_decisions_with_claim_numbers_and_records_that_keep_their_history(api: Api, claims: dict) -> None:
    pid, tag_ids = claims["pid"], claims["tags"]
    factors = {"glass_shatter": 1.8, "door_dent": 1.25, "bumper_scratch": 1.1, "tail_lamp": 1.3, "unknown": 1.0}
    answers = []
    for claim, _truth, data in claim_photos():
        header = {"X-Tagvision-Metadata": json.dumps({"claim": claim, "adjuster": "kim"})}
        body = classify(api, pid, data, header)
        answers.append((claim, body))
        top = body["predictions"][0]
        assert body["metadata"] == {"claim": claim, "adjuster": "kim"}
        assert top["information"]["premiumFactor"] == factors[top["tagName"]] and "repair" in top["information"]
        premium = body["decision"]["premium"]
        assert premium["inputs"][0] == {
            "tagId": top["tagId"],
            "tagName": top["tagName"],
            "probability": top["probability"],
            "value": factors[top["tagName"]],
        }
        if top["probability"] >= 0.5:
            assert (premium["value"], premium["matched"], premium["tagName"]) == (
                factors[top["tagName"]],
                True,
                top["tagName"],
            )
        else:
            assert (premium["value"], premium["matched"]) == (1.0, False)
        expected = sum(p["probability"] * factors[p["tagName"]] for p in body["predictions"])
        assert body["decision"]["expectedFactor"]["value"] == pytest.approx(
            expected / sum(p["probability"] for p in body["predictions"])
        )
        assert len(body["decision"]["expectedFactor"]["inputs"]) == len(DAMAGE)
    right = sum(
        body["predictions"][0]["tagName"] == truth
        for (_, body), (_, truth, _) in zip(answers, claim_photos(), strict=True)
    )
    assert right >= 3, "the classifier itself must be doing its job on held-out photos"

    # Search by claim number: the stored query (a tagvision field in Custom Vision's token) and the records.
    found = api.ok(
        api.t("POST", f"/projects/{pid}/predictions/query", json={"metadata": {"claim": "CLM-1001"}, "maxCount": 50})
    )
    assert {r["id"] for r in found["results"]} == {b["id"] for c, b in answers if c == "CLM-1001"}
    assert all(r["metadata"] == {"claim": "CLM-1001", "adjuster": "kim"} for r in found["results"])
    assert found["token"]["metadata"] == {"claim": "CLM-1001"}
    assert (
        api.ok(api.t("POST", f"/projects/{pid}/predictions/query", json={"metadata": {"claim": "CLM-9"}}))["results"]
        == []
    )

    before_jsonl, before_csv = export(api, pid, "jsonl", "CLM-1001"), export(api, pid, "csv", "CLM-1001")
    assert [r["id"] for r in before_jsonl] == [b["id"] for c, b in answers if c == "CLM-1001"]  # oldest first
    for record, (_, body) in zip(before_jsonl, [a for a in answers if a[0] == "CLM-1001"], strict=True):
        assert record["decision"] == body["decision"] and record["metadata"] == body["metadata"]
        assert (
            record["predictions"][0]["information"]["premiumFactor"]
            == body["predictions"][0]["information"]["premiumFactor"]
        )
        assert record["imageUri"].startswith(api.endpoint) and record["sha256"]
        assert api.http.get(record["imageUri"]).status_code == 200, "the image link works without a key"
    row = before_csv[0]
    assert row["metadata.claim"] == "CLM-1001" and row["decision.premium"] == json.dumps(
        before_jsonl[0]["decision"]["premium"]["value"]
    )
    assert row["information.premiumFactor"] == json.dumps(
        before_jsonl[0]["predictions"][0]["information"]["premiumFactor"]
    )

    # The insurer changes the catalogue: new factors (and one tag's information edited on its own).
    edited = CATALOGUE.replace("1.8,3", "2.4,4").replace("1.25,2", "1.5,2")
    assert api.ok(api.t("POST", f"/projects/{pid}/catalogue", content=edited.encode()))["updated"] == 2
    patched = api.ok(
        api.t(
            "PATCH",
            f"/projects/{pid}/tags/{tag_ids['tail_lamp']}",
            json={"information": {"premiumFactor": 1.6, "severity": 2}},
        )
    )
    assert patched["information"] == {"premiumFactor": 1.6, "severity": 2} and patched["name"] == "tail_lamp"

    assert without_links(export(api, pid, "jsonl", "CLM-1001")) == without_links(before_jsonl), "history was rewritten"
    assert without_links(export(api, pid, "csv", "CLM-1001")) == without_links(before_csv)
    again = api.ok(api.t("POST", f"/projects/{pid}/predictions/query", json={"metadata": {"claim": "CLM-1001"}}))[
        "results"
    ]
    assert {r["id"]: r["decision"] for r in again} == {b["id"]: b["decision"] for c, b in answers if c == "CLM-1001"}

    # A new prediction uses the new catalogue.
    fresh = classify(api, pid, claim_photos()[0][2], metadata="claim=CLM-1003")
    new_factors = {**factors, "glass_shatter": 2.4, "door_dent": 1.5, "tail_lamp": 1.6}
    assert fresh["predictions"][0]["information"]["premiumFactor"] == new_factors[fresh["predictions"][0]["tagName"]]
    assert fresh["metadata"] == {"claim": "CLM-1003"}


def test_information_options_on_a_prediction(api: Api, claims: dict) -> None:
    pid, data = claims["pid"], claim_photos()[0][2]
    scorings = api.http.app.state.service.scorings  # batch scoring's rows carry what the tags know
    assert scorings.information(pid)["glass_shatter"]["repair"] == "Replace the glass"
    some = classify(api, pid, data, attributes="premiumFactor", informationThreshold="0.3")
    carrying = [p for p in some["predictions"] if "information" in p]
    assert all(p["probability"] >= 0.3 for p in carrying) and carrying
    assert all(set(p["information"]) == {"premiumFactor"} for p in carrying)
    assert all("information" not in p for p in some["predictions"] if p["probability"] < 0.3)
    none = classify(api, pid, data, information="false")
    assert all("information" not in p for p in none["predictions"]) and "decision" in none, "rules still decide"
    assert_error(
        api.p(
            "POST", f"/{pid}/classify/iterations/{PUBLISHED}/image", params={"informationThreshold": 2}, content=data
        ),
        400,
    )
    bad = api.p(
        "POST",
        f"/{pid}/classify/iterations/{PUBLISHED}/image",
        headers={"X-Tagvision-Metadata": json.dumps({"k": "v" * 300})},
        content=data,
    )
    assert "256" in assert_error(bad, 400, "BadRequestPredictionMetadata")["message"]


def test_retention_purges_old_records_and_their_images_and_never_stores(api: Api, claims: dict) -> None:
    pid = claims["pid"]
    data = photos(CAR_DAMAGE, "test", "head_lamp", 1)[0].read_bytes()  # an image no other record holds
    kept = classify(api, pid, data, metadata="claim=CLM-2001")
    assert api.stored(data)
    assert api.ok(api.t("PUT", f"/projects/{pid}/retention", json={"retention": 30})) == {
        "project": 30,
        "server": "forever",
        "effective": 30,
        "purged": 0,
    }
    service = api.http.app.state.service
    count = api.prediction_count(pid)
    real_clock, service.records.clock = service.records.clock, ManualClock(unix=time.time() + 31 * 86400)
    try:
        purged = service.records.purge(pid)  # a month later
    finally:
        service.records.clock = real_clock
    assert purged == count and api.prediction_count(pid) == 0
    assert not api.stored(data), "the image of a purged record goes with it"
    assert api.t("GET", f"/projects/{pid}/predictions/export", params={"metadata": '{"claim": "CLM-2001"}'}).text == ""
    assert kept["id"]

    assert api.ok(api.t("PUT", f"/projects/{pid}/retention", json={"retention": "never"}))["effective"] == "never"
    body = classify(api, pid, data, metadata="claim=CLM-2002")
    assert "decision" in body and "metadata" not in body, "nothing is stored, so no metadata is kept"
    assert api.prediction_count(pid) == 0 and not api.stored(data)
    assert api.ok(api.t("PUT", f"/projects/{pid}/retention", json={"retention": "default"}))["effective"] == "forever"
    assert_error(api.t("PUT", f"/projects/{pid}/retention", json={"retention": "soon"}), 400, "BadRequestInvalid")


def test_bad_input_names_the_row_or_field_and_the_rest_lands(api: Api, claims: dict) -> None:
    pid, tag_ids = claims["pid"], claims["tags"]
    rules_before = api.ok(api.t("GET", f"/projects/{pid}/rules"))
    # Malformed rows and duplicate keys: 207, each error with its line; the good rows applied (in one transaction).
    data = (
        "tag,premiumFactor,severity,repair\n"
        "head_lamp,1.35,2,Replace the headlamp\n"  # 2: good (a new tag)
        'door_dent,1.5,2,"unclosed\n'  # 3: runs to the end
    )
    response = api.t("POST", f"/projects/{pid}/catalogue", content=data.encode())
    assert response.status_code == 207, response.text
    report = response.json()
    assert (report["created"], report["failed"]) == (1, 1) and report["errors"][0]["line"] == 3
    tags = {t["name"]: t for t in api.ok(api.t("GET", f"/projects/{pid}/tags"))}
    assert tags["head_lamp"]["information"] == {"premiumFactor": 1.35, "severity": 2, "repair": "Replace the headlamp"}

    dup = (
        b"[\n"
        b' {"tag": "unknown", "premiumFactor": 1.0, "premiumFactor": 0.9},\n'
        b' {"tag": "bumper_dent", "severity": 1},\n'
        b' {"tag": "Bumper_Dent", "severity": 2}\n'
        b"]\n"
    )
    report = api.t("POST", f"/projects/{pid}/catalogue", params={"format": "json"}, content=dup).json()
    assert [(e["line"], e["field"]) for e in report["errors"]] == [(2, "premiumFactor"), (4, "tag")]
    assert "appears twice" in report["errors"][0]["message"] and "already on line 3" in report["errors"][1]["message"]
    assert report["created"] == 1

    typed = api.t("POST", f"/projects/{pid}/catalogue", content=b"tag,premiumFactor\ntail_lamp,expensive\n").json()
    assert typed["errors"][0]["field"] == "premiumFactor" and "'expectedFactor'" in typed["errors"][0]["message"]

    # Whole-file errors are one error: nothing changes.
    body = assert_error(
        api.t("POST", f"/projects/{pid}/catalogue", content=b"name,price\nx,1\n"), 400, "BadRequestCatalogue"
    )
    assert "no 'tag' column" in body["message"]
    assert_error(api.t("POST", f"/projects/{pid}/catalogue", params={"format": "xlsx"}, content=b"x"), 400)

    # Oversized or malformed information on a tag: the field is named, the tag unchanged.
    huge = {f"k{i}": "x" * 7000 for i in range(6)}
    body = assert_error(api.t("PATCH", f"/projects/{pid}/tags/{tag_ids['unknown']}", json={"information": huge}), 400)
    assert body["code"] == "BadRequestTagInformation" and "bytes of JSON" in body["message"]
    body = assert_error(
        api.t(
            "PATCH",
            f"/projects/{pid}/tags/{tag_ids['unknown']}",
            json={"name": "renamed", "information": {"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}},
        ),
        400,
    )
    assert "information.a.b.c.d.e.f" in body["message"]
    assert api.ok(api.t("GET", f"/projects/{pid}/tags/{tag_ids['unknown']}"))["name"] == "unknown"

    # Rules: unknown tags, unknown attributes, type errors, unknown fields; the saved rules stay.
    for rules, words in (
        (
            [{"rule": "max-above", "attribute": "severity", "tags": ["glass_shatter", "wheel"]}],
            "rules[0].tags[1]: the project has no tag named 'wheel'",
        ),
        (
            [{"rule": "most-probable-above", "attribute": "premium"}],
            "rules[0].attribute: no tag's information has the attribute 'premium'",
        ),
        ([{"rule": "probability-weighted", "attribute": "repair"}], "rules[0].attribute: 'repair' of tag"),
        (
            [{"rule": "max-above", "attribute": "severity", "threshold": "high"}],
            "rules[0].threshold: must be a probability",
        ),
        (
            [RULES[0], {"rule": "max-above", "attribute": "severity", "weight": 2}],
            "rules[1].weight: is not a rule field",
        ),
    ):
        body = assert_error(
            api.t("PUT", f"/projects/{pid}/rules", json={"rules": rules}), 400, "BadRequestDecisionRule"
        )
        assert words in body["message"], body
    assert api.ok(api.t("GET", f"/projects/{pid}/rules")) == rules_before
    api.assert_survived()

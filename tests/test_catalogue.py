"""Catalogue import and export, tag information and rules through the service and the CLI, on a real store.

No training here: reference images are real photos (read from paths, and fetched from a loopback site through
the SSRF-safe downloader), validated and tagged; the predictions side is in tests/test_taginfo_*.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tagvision.config import Settings
from tagvision.errors import InvalidInput, NotFound, TagvisionError
from tagvision.service import Service
from tagvision.service import catalogue as catalogue_module
from tagvision.service.records import check_metadata, metadata_from_pairs, metadata_from_text, parse_retention
from tests.api import Site
from tests.cli import tagvision
from tests.conftest import CLOTHING, photos


@pytest.fixture
def shop(svc: Service) -> str:
    project = svc.projects.create("shop", classification="multiclass")
    svc.projects.create_tags(project.id, ["dress", "hat"])
    return project.id


def info_of(svc: Service, project: str) -> dict[str, dict]:
    return {t.name: t.information for t in svc.projects.list_tags(project)}


def test_good_rows_land_together_bad_rows_are_reported_and_reimport_updates_in_place(svc: Service, shop: str) -> None:
    data = (
        b"tag,brand,price,sizes,note\n"
        b'dress,Acme,49.9,"[""S"",""M""]",<i>new</i>\n'
        b"hat,Hats & Co,15,[],plain\n"
        b"shoes,Boots,120,[40],x\n"  # a new tag
        b"hat,Again,1,[],dup\n"  # duplicate key
        b'pants,P,"12\n'  # unclosed quote (to the end of the file)
    )
    dry = svc.catalogue.import_(shop, data, "csv", dry_run=True)
    assert dry.dry_run and [(r.tag, r.action) for r in dry.rows] == [
        ("dress", "update"),
        ("hat", "update"),
        ("shoes", "create"),
    ]
    assert [(e.line, e.field) for e in dry.errors] == [(5, "tag"), (6, None)]
    assert info_of(svc, shop) == {"dress": {}, "hat": {}}, "a dry run changes nothing"

    report = svc.catalogue.import_(shop, data, "csv")
    assert report.to_json()["created"] == 1 and report.to_json()["updated"] == 2 and report.to_json()["failed"] == 2
    assert info_of(svc, shop) == {
        "dress": {"brand": "Acme", "price": 49.9, "sizes": ["S", "M"], "note": "<i>new</i>"},
        "hat": {"brand": "Hats & Co", "price": 15, "sizes": [], "note": "plain"},
        "shoes": {"brand": "Boots", "price": 120, "sizes": [40], "note": "x"},
    }

    again = svc.catalogue.import_(shop, b'[{"tag": "dress", "brand": "Acme", "price": 45}, {"tag": "Hat"}]', "json")
    plans = {r.tag: r for r in again.rows}
    assert plans["dress"].action == "update" and plans["dress"].changed == ["price"]
    assert plans["dress"].removed == ["sizes", "note"] and plans["hat"].removed == ["brand", "price", "sizes", "note"]
    assert info_of(svc, shop)["dress"] == {"brand": "Acme", "price": 45} and info_of(svc, shop)["hat"] == {}
    assert svc.catalogue.import_(shop, b'{"tag": "dress", "brand": "Acme", "price": 45}\n', "jsonl").rows[0].action == (
        "unchanged"
    )

    for fmt in ("csv", "json", "jsonl"):
        name, exported = svc.catalogue.export(shop, fmt)
        assert name == f"shop-catalogue.{fmt}"
        back = svc.catalogue.import_(shop, exported, fmt, dry_run=True)
        assert back.errors == [] and {r.action for r in back.rows} == {"unchanged"}


def test_a_failure_mid_transaction_leaves_the_project_as_it_was(svc: Service, shop: str, monkeypatch) -> None:
    svc.catalogue.import_(shop, b"tag,price\ndress,10\nhat,20\n", "csv")
    before = info_of(svc, shop)
    written = []

    def write_then_fail(session, project, tag, new) -> None:
        written.append(tag.name)
        if len(written) == 3:
            raise OSError("disk gone")
        real(session, project, tag, new)

    real = catalogue_module.write_information
    monkeypatch.setattr(catalogue_module, "write_information", write_then_fail)
    with pytest.raises(OSError):
        svc.catalogue.import_(shop, b"tag,price\ndress,11\nhat,21\nskirt,5\nshirt,6\n", "csv")
    assert written == ["dress", "hat", "skirt"]
    assert info_of(svc, shop) == before, "no row of the failed import landed, not even the first two"
    assert [t.name for t in svc.projects.list_tags(shop)] == ["dress", "hat"], "no tag was created"


def test_rules_refuse_rows_that_would_break_them(svc: Service, shop: str) -> None:
    svc.catalogue.import_(shop, b"tag,premiumFactor,label\ndress,1.2,D\nhat,1.5,H\n", "csv")
    svc.knowledge.set_rules(shop, [{"rule": "probability-weighted", "attribute": "premiumFactor", "name": "premium"}])
    report = svc.catalogue.import_(shop, b"tag,premiumFactor\ndress,high\nhat,1.7\n", "csv")
    assert [(e.line, e.field, e.code) for e in report.errors] == [(2, "premiumFactor", "BadRequestDecisionRule")]
    assert "'premium'" in report.errors[0].message and "text ('high')" in report.errors[0].message
    assert info_of(svc, shop) == {"dress": {"premiumFactor": 1.2, "label": "D"}, "hat": {"premiumFactor": 1.7}}
    with pytest.raises(TagvisionError, match="rule 'premium'"):
        svc.projects.update_tag(shop, "hat", information={"premiumFactor": "x"})
    with pytest.raises(InvalidInput, match="rules\\[0\\].tags\\[0\\]: the project has no tag named 'boots'"):
        svc.knowledge.set_rules(shop, [{"rule": "max-above", "attribute": "premiumFactor", "tags": ["boots"]}])
    assert svc.knowledge.rules(shop)[0]["name"] == "premium", "a refused rule set leaves the saved one"


def test_tag_information_through_the_service(svc: Service, shop: str) -> None:
    view = svc.knowledge.set(shop, "hat", {"brand": "Hatco", "sizes": ["S"]})
    assert view.information == {"brand": "Hatco", "sizes": ["S"]}
    knowledge = svc.knowledge.for_project(shop)
    hat_id = view.id
    assert knowledge.information[hat_id] == {"brand": "Hatco", "sizes": ["S"]}
    assert svc.knowledge.for_project(shop) is knowledge, "cached until something changes"
    svc.knowledge.set(shop, "hat", updates={"price": 12}, remove=("sizes",))
    assert svc.knowledge.for_project(shop).information[hat_id] == {"brand": "Hatco", "price": 12}
    renamed = svc.projects.update_tag(shop, hat_id, name="cap")  # information is kept when not given
    assert renamed.name == "cap" and renamed.information == {"brand": "Hatco", "price": 12}
    assert svc.knowledge.information_by_name(shop) == {"cap": {"brand": "Hatco", "price": 12}}
    assert svc.knowledge.information_by_name(shop, ("price",)) == {"cap": {"price": 12}}

    with pytest.raises(InvalidInput, match="information.blob: has 9,000 characters"):
        svc.projects.update_tag(shop, hat_id, name="hat", information={"blob": "x" * 9000})
    assert svc.knowledge.get(shop, hat_id).name == "cap", "a refused update renames nothing"
    with pytest.raises(InvalidInput, match="no attribute 'nope'"):
        svc.knowledge.set(shop, hat_id, remove=("nope",))
    with pytest.raises(NotFound):
        svc.knowledge.set(shop, "boots", {"a": 1})
    svc.knowledge.set(shop, hat_id, {})
    assert svc.knowledge.for_project(shop).information == {}


def test_reference_images_from_paths_and_urls(data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TAGVISION_ALLOW_PRIVATE_URLS", "1")  # the site is on loopback
    dress, dress2, hat = (
        photos(CLOTHING, "train", "dress", 2)[0],
        photos(CLOTHING, "train", "dress", 2)[1],
        photos(CLOTHING, "train", "hat", 1)[0],
    )
    site = Site({"/hat.jpg": (200, {"Content-Type": "image/jpeg"}, hat.read_bytes())})
    folder = tmp_path / "catalogue"
    folder.mkdir()
    (folder / "dress.jpg").write_bytes(dress.read_bytes())
    (folder / "dress2.jpg").write_bytes(dress2.read_bytes())
    data = (
        "tag,brand,photos\n"
        "dress,Acme,dress.jpg|dress2.jpg\n"
        f"hat,Hatco,{site.url('/hat.jpg')}\n"
        f"shoes,Boots,{site.url('/missing.jpg')}\n"
        "skirt,S,no-such-file.jpg\n"
        "shirt,T,dress.jpg\n"  # multiclass: already a dress image
    ).encode()
    svc = Service.open(Settings.load(data_dir))
    try:
        project = svc.projects.create("photos").id
        over_http = svc.catalogue.import_(project, data, "csv", images_column="photos", local_files=None)
        assert {e.line for e in over_http.errors} == {2, 4, 5, 6}, "over HTTP only URLs are fetched"
        assert "local paths work from the CLI" in over_http.errors[0].message
        assert [r.tag for r in over_http.rows] == ["hat"] and over_http.images_added == 1
        report = svc.catalogue.import_(project, data, "csv", images_column="photos", local_files=folder)
        assert [r.tag for r in report.rows] == ["dress", "hat"] and report.images_added == 2
        by_line = {e.line: e for e in report.errors}
        assert sorted(by_line) == [4, 5, 6]
        assert by_line[4].field == "images" and "missing.jpg" in by_line[4].message
        assert by_line[5].field == "images" and "cannot read it" in by_line[5].message
        assert "another tag" in by_line[6].message
        tags = {t.name: t for t in svc.projects.list_tags(project)}
        assert set(tags) == {"dress", "hat"} and tags["dress"].image_count == 2 and tags["hat"].image_count == 1
        images = svc.images.list(project)
        assert {i.source.get("name") for i in images} == {"dress.jpg", "dress2.jpg", site.url("/hat.jpg")}
        again = svc.catalogue.import_(project, data, "csv", images_column="photos", local_files=folder)
        assert again.images_added == 0 and svc.images.count(project) == 3, "re-import finds the images there"
    finally:
        svc.close()
        site.close()


def test_metadata_and_retention_values() -> None:
    assert metadata_from_text('{"claim": "C-1", "n": 7}') == {"claim": "C-1", "n": "7"}
    assert metadata_from_text("claim=C-1; field = 12") == {"claim": "C-1", "field": "12"}
    assert metadata_from_text(None) == {} and metadata_from_pairs(["a=b=c"]) == {"a": "b=c"}
    for bad in ({f"k{i}": "v" for i in range(11)}, {"": "v"}, {"k": "v" * 257}, {"k": ["x"]}, {"k\n": "v"}, "x"):
        with pytest.raises(InvalidInput) as caught:
            check_metadata(bad)
        assert caught.value.code == "BadRequestPredictionMetadata"
    with pytest.raises(InvalidInput, match="key=value"):
        metadata_from_pairs(["claim"])
    with pytest.raises(InvalidInput, match="not valid JSON"):
        metadata_from_text("{claim")
    assert [parse_retention(v) for v in ("default", None, "forever", "never", 0, "30")] == [None, None, -1, 0, 0, 30]
    for bad in ("-1", "1.5", "soon", 40000):
        with pytest.raises(InvalidInput, match="Retention"):
            parse_retention(bad)
    for raw, days in (("", None), ("forever", None), ("never", 0), ("0", 0), ("30", 30)):
        with pytest.MonkeyPatch.context() as env:
            env.setenv("TAGVISION_PREDICTION_RETENTION_DAYS", raw)
            assert Settings.load("/tmp/x").prediction_retention_days == days
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TAGVISION_PREDICTION_RETENTION_DAYS", "a week")
        with pytest.raises(ValueError, match="TAGVISION_PREDICTION_RETENTION_DAYS"):
            Settings.load("/tmp/x")


def test_the_cli_commands(data_dir: Path, tmp_path: Path) -> None:
    tagvision("project", "create", "shop", data_dir=data_dir)
    catalogue = tmp_path / "products.csv"
    catalogue.write_text('sku,brand,price\ndress,Acme,49.9\nhat,"Hats\n')
    dry = tagvision("catalogue", "import", "shop", str(catalogue), "--key", "sku", "--dry-run", data_dir=data_dir)
    assert "1 tags would be created" in dry.stdout and "line 3: cannot be read as CSV" in dry.stdout
    assert json.loads(tagvision("tag", "list", "shop", "--json", data_dir=data_dir).stdout) == []
    done = json.loads(
        tagvision("catalogue", "import", "shop", str(catalogue), "--key", "sku", "--json", data_dir=data_dir).stdout
    )
    assert (done["created"], done["failed"], done["errors"][0]["line"]) == (1, 1, 3)

    shown = tagvision("tag", "info", "shop", "dress", "--set", "sizes=[\"S\",\"M\"]", "--set", "sale=true",
                      "--unset", "price", data_dir=data_dir)  # fmt: skip
    assert json.loads(shown.stdout) == {"brand": "Acme", "sizes": ["S", "M"], "sale": True}
    replacement = tmp_path / "info.json"
    replacement.write_text('{"brand": "<b>Acme</b>", "price": 45}')
    assert json.loads(
        tagvision("tag", "info", "shop", "dress", "--json", str(replacement), data_dir=data_dir).stdout
    ) == {
        "brand": "<b>Acme</b>",
        "price": 45,
    }
    assert json.loads(tagvision("tag", "info", "shop", "dress", "--show", data_dir=data_dir).stdout)["price"] == 45
    replacement.write_text('{"a": 1, "a": 2}')
    failed = tagvision("tag", "info", "shop", "dress", "--json", str(replacement), data_dir=data_dir, check=False)
    assert failed.returncode == 1 and "appears twice" in failed.stderr

    exported = tagvision("catalogue", "export", "shop", "--format", "jsonl", "--key", "sku", data_dir=data_dir).stdout
    assert json.loads(exported) == {"sku": "dress", "brand": "<b>Acme</b>", "price": 45}
    out = tmp_path / "out" / "catalogue.csv"
    tagvision("catalogue", "export", "shop", "--out", str(out), data_dir=data_dir)
    assert out.read_text() == "tag,brand,price\ndress,<b>Acme</b>,45\n"

    rules = tmp_path / "rules.json"
    rules.write_text('[{"rule": "max-above", "attribute": "brand"}]')
    refused = tagvision("rules", "set", "shop", str(rules), data_dir=data_dir, check=False)
    assert refused.returncode == 1
    assert "BadRequestDecisionRule: rules[0].attribute: 'brand' of tag 'dress' is text" in refused.stderr
    rules.write_text('{"rules": [{"rule": "most-probable-above", "attribute": "price", "default": 0}]}')
    saved = json.loads(tagvision("rules", "set", "shop", str(rules), data_dir=data_dir).stdout)
    assert saved == [
        {"name": "price", "rule": "most-probable-above", "attribute": "price", "threshold": 0.5, "default": 0}
    ]
    assert json.loads(tagvision("rules", "show", "shop", data_dir=data_dir).stdout) == saved
    tagvision("rules", "clear", "shop", data_dir=data_dir)
    assert json.loads(tagvision("rules", "show", "shop", data_dir=data_dir).stdout) == []

    assert "kept forever (the server's setting)" in tagvision("records", "retention", "shop", data_dir=data_dir).stdout
    assert (
        "30 days (the project's setting)" in tagvision("records", "retention", "shop", "30", data_dir=data_dir).stdout
    )
    never = json.loads(tagvision("records", "retention", "shop", "never", "--json", data_dir=data_dir).stdout)
    assert never == {"project": "never", "server": "forever", "effective": "never", "purged": 0}
    assert "Purged 0" in tagvision("records", "purge", data_dir=data_dir).stdout

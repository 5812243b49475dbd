"""The service layer on real photos: names, tags, images, training, performance, prediction; every test on SQLite
and on PostgreSQL (a throw-away cluster of the session's own, tests/pg.py)."""

from __future__ import annotations

import io
from datetime import UTC, timedelta

import numpy as np
import pytest
from PIL import Image

from tagvision.errors import Conflict, InvalidInput, NotFound, TrainingError
from tagvision.service import NewImage
from tests.conftest import CLOTHING, DATABASES, each_database, photos


@pytest.fixture(params=DATABASES)
def database_url(request) -> str | None:
    """Each test runs on both stores: the data dir's SQLite file, and a fresh PostgreSQL database."""
    return each_database(request)


def new(path, *tags: str) -> NewImage:
    return NewImage(path.name, path.read_bytes, tags)


@pytest.mark.parametrize(
    "name", ["shoes 👟", "Robert'); DROP TABLE projects;--", "<script>alert(1)</script>", "ünïcödé", "a" * 255]
)
def test_project_names_are_stored_verbatim(svc, name: str) -> None:
    project = svc.projects.create(name)
    assert svc.projects.get(name).id == project.id
    assert svc.projects.get(project.id).name == name
    assert [p.name for p in svc.projects.list()] == [name]


@pytest.mark.parametrize("name", ["", "   ", "a" * 256, "tab\there", "nul\x00"])
def test_bad_names_are_refused_with_a_code(svc, name: str) -> None:
    with pytest.raises(InvalidInput) as info:
        svc.projects.create(name)
    assert info.value.code == "BadRequestProjectName"
    assert svc.projects.list() == []


def test_duplicate_names_and_unknown_references(svc) -> None:
    svc.projects.create("p")
    with pytest.raises(Conflict) as info:
        svc.projects.create("p")
    assert info.value.code == "BadRequestProjectNameNotUnique"
    svc.projects.create_tags("p", ["a"])
    with pytest.raises(Conflict):
        svc.projects.create_tags("p", ["b", "A"])  # case-insensitive clash, all or nothing
    assert [t.name for t in svc.projects.list_tags("p")] == ["a"]
    with pytest.raises(NotFound) as missing:
        svc.projects.get("nope")
    assert missing.value.code == "NotFoundProject"
    with pytest.raises(NotFound):
        svc.images.add("p", [NewImage("x", lambda: b"", ("zzz",))])  # unknown tag
    with pytest.raises(InvalidInput):
        svc.projects.create("q", classification="objectdetection")


def test_add_reports_each_bad_image_and_keeps_the_good_ones(svc, tmp_path) -> None:
    svc.projects.create("p")
    svc.projects.create_tags("p", ["hat"])
    good = photos(CLOTHING, "train", "hat", 3)
    half = good[0].read_bytes()[:4000]
    buffer = io.BytesIO()
    Image.new("RGB", (10241, 8)).save(buffer, "PNG")
    huge = good[1].read_bytes() + b"\0" * (6 * 1024 * 1024)

    def unreadable() -> bytes:
        raise PermissionError("denied")

    items = [
        new(good[0], "hat"),
        NewImage("half.jpg", lambda: half, ("hat",)),
        NewImage("text.jpg", lambda: b"hello, world", ("hat",)),
        NewImage("wide.png", buffer.getvalue, ("hat",)),
        NewImage("huge.jpg", lambda: huge, ("hat",)),
        NewImage("gone.jpg", unreadable, ("hat",)),
        new(good[1], "hat"),
        new(good[0], "hat"),
        new(good[2]),
    ]
    summary = svc.images.add("p", items)
    assert [r.status for r in summary.results] == [
        "OK",
        "ErrorImageFormat",
        "ErrorImageFormat",
        "ErrorImageDimensions",
        "ErrorImageSize",
        "ErrorSource",
        "OK",
        "OKDuplicate",
        "OK",
    ]
    assert summary.results[7].image_id == summary.results[0].image_id
    assert not summary.is_batch_successful
    listed = svc.images.list("p")
    assert len(listed) == 3
    assert len(svc.images.list("p", tag="hat")) == 2 and len(svc.images.list("p", untagged=True)) == 1
    assert svc.images.data("p", summary.results[0].image_id) == good[0].read_bytes()
    assert svc.projects.list_tags("p")[0].image_count == 2


def test_multiclass_images_take_one_tag(svc) -> None:
    svc.projects.create("p")
    svc.projects.create_tags("p", ["a", "b"])
    path = photos(CLOTHING, "train", "hat", 1)[0]
    with pytest.raises(InvalidInput):
        svc.images.add("p", [new(path, "a", "b")])
    assert svc.images.list("p") == []


def add_classes(svc, project: str, tags: dict[str, int], split: str = "train") -> None:
    svc.projects.create_tags(project, list(tags))
    items = [new(p, tag) for tag, count in tags.items() for p in photos(CLOTHING, split, tag, count)]
    assert svc.images.add(project, items).is_batch_successful


def test_training_needs_two_tags_with_five_images(svc) -> None:
    svc.projects.create("p")
    add_classes(svc, "p", {"hat": 6})
    with pytest.raises(TrainingError) as one:
        svc.training.train("p")
    assert one.value.code == "BadRequestTrainingValidationFailed"
    add_classes(svc, "p", {"shoes": 4})
    with pytest.raises(TrainingError) as few:
        svc.training.train("p")
    assert few.value.code == "BadRequestTrainingValidationFailed" and "shoes (4)" in few.value.message
    assert svc.training.iterations("p") == []


@pytest.mark.slow  # embeds real photos
def test_train_performance_predict_and_embedding_cache(svc) -> None:
    svc.projects.create("p")
    add_classes(svc, "p", {"hat": 12, "shoes": 12, "pants": 12})
    first = svc.training.train("p")
    assert first.status == "Completed" and first.name == "Iteration 1" and first.image_count == 36
    assert not first.fine_tuned and first.backbone == "efficientnet-lite0"  # the domain's, stock
    with pytest.raises(TrainingError) as same:
        svc.training.train("p")
    assert same.value.code == "BadRequestTrainingNotNeeded"
    second = svc.training.train("p", force=True)
    with svc.ctx.db.session() as session:
        from tagvision.store.models import Iteration

        details = [session.get(Iteration, i.id).details for i in (first, second)]
    assert details[0]["embeddingsComputed"] == 36
    assert details[1]["embeddingsComputed"] == 0, "a second run on the same images computes no embedding"

    unseen = [p for tag in ("hat", "shoes", "pants") for p in photos(CLOTHING, "test", tag, 3)]
    results = svc.prediction.predict("p", [(p.name, p.read_bytes) for p in unseen] + [("bad", lambda: b"xx")])
    truth = ["hat"] * 3 + ["shoes"] * 3 + ["pants"] * 3
    assert sum(r.predictions[0].tag_name == tag for r, tag in zip(results, truth, strict=False)) >= 8
    for r in results[:9]:
        probabilities = [p.probability for p in r.predictions]
        assert probabilities == sorted(probabilities, reverse=True)
        assert abs(sum(probabilities) - 1) < 1e-5
    assert results[9].error_code == "ErrorImageFormat" and results[9].predictions == []
    assert (
        svc.prediction.predict("p", [(unseen[0].name, unseen[0].read_bytes)], "Iteration 1")[0].iteration_id == first.id
    )


@pytest.mark.slow  # embeds real photos
def test_performance_is_recomputed_at_any_threshold(svc) -> None:
    svc.projects.create("tops")
    add_classes(svc, "tops", {"shirt": 15, "t-shirt": 15, "longsleeve": 15})  # easily confused
    iteration = svc.training.train("tops")
    perf = svc.training.performance("tops")
    assert perf.iteration_id == iteration.id and perf.performance.folds == 5 and perf.image_count == 45
    assert 0.4 < perf.performance.recall < 1.0
    assert sorted(name for _, name in perf.tags) == ["longsleeve", "shirt", "t-shirt"]
    assert [t.support for t in perf.performance.per_tag] == [15, 15, 15]
    strict = svc.training.performance("tops", threshold=0.95)
    loose = svc.training.performance("tops", threshold=0.05)
    assert strict.performance.recall < perf.performance.recall <= loose.performance.recall
    assert loose.performance.precision < perf.performance.precision
    assert strict.performance.average_precision == perf.performance.average_precision  # AP has no threshold
    with pytest.raises(TrainingError):
        svc.training.performance("tops", threshold=1.5)


@pytest.mark.slow  # embeds real photos
def test_multilabel_project_trains_independent_sigmoids(svc) -> None:
    svc.projects.create("m", classification="multilabel")
    svc.projects.create_tags("m", ["top", "bottom", "tee"])
    items = (
        [new(p, "top", "tee") for p in photos(CLOTHING, "train", "t-shirt", 10)]
        + [new(p, "top") for p in photos(CLOTHING, "train", "longsleeve", 10)]
        + [new(p, "bottom") for p in photos(CLOTHING, "train", "pants", 10)]
    )
    assert svc.images.add("m", items).is_batch_successful
    iteration = svc.training.train("m")
    assert iteration.classification_type == "Multilabel"
    perf = svc.training.performance("m").performance
    assert perf.recall > 0.7
    shirt = photos(CLOTHING, "test", "t-shirt", 1)[0]
    (result,) = svc.prediction.predict("m", [(shirt.name, shirt.read_bytes)])
    probabilities = {p.tag_name: p.probability for p in result.predictions}
    assert probabilities["top"] > 0.5 and probabilities["bottom"] < 0.5
    assert not np.isclose(sum(probabilities.values()), 1.0)


@pytest.mark.slow  # embeds real photos
def test_suggestions_for_untagged_images_page_and_count(svc) -> None:
    from tagvision.service.prediction import SuggestionQuery

    svc.projects.create("s")
    add_classes(svc, "s", {"hat": 6, "shoes": 6})
    iteration = svc.training.train("s")
    untagged = [new(p) for tag in ("hat", "shoes", "pants") for p in photos(CLOTHING, "test", tag, 2)][:5]
    added = svc.images.add("s", untagged)
    assert added.is_batch_successful

    pages, token = [], None
    while True:
        page, token = svc.prediction.suggested("s", iteration.id, SuggestionQuery(max_count=2, continuation=token))
        pages.append(page)
        if token is None:
            break
    assert [len(p) for p in pages] == [2, 2, 1]
    descending = [v.uncertainty for p in pages for v in p]
    assert descending == sorted(descending, reverse=True)
    everything = SuggestionQuery(sort_by="UncertaintyAscending", max_count=10, continuation="x")  # a bad token
    ascending, token = svc.prediction.suggested("s", iteration.id, everything)
    assert [v.uncertainty for v in ascending] == sorted(descending) and token is None

    tags = {t.name: t.id for t in svc.projects.list_tags("s")}
    assert svc.prediction.suggested_counts("s", iteration.id) == {t: 5 for t in sorted(tags.values())}
    counts = svc.prediction.suggested_counts("s", iteration.id, [tags["hat"]], threshold=0.5)
    assert list(counts) == [tags["hat"]] and 0 <= counts[tags["hat"]] <= 5
    sure = SuggestionQuery(tag_ids=(tags["hat"],), threshold=0.5, max_count=10)
    assert len(svc.prediction.suggested("s", iteration.id, sure)[0]) == counts[tags["hat"]]

    trained = [v.id for v in svc.images.list("s", tagged=True)][:2]
    fresh = [r.image_id for r in added.results][:2]
    assert [v.id for v in svc.images.by_ids("s", fresh + trained)] == fresh + trained
    assert [v.id for v in svc.images.by_ids("s", fresh + trained, iteration=iteration.id)] == trained
    with pytest.raises(NotFound):
        svc.images.by_ids("s", trained, iteration="no such iteration")


@pytest.mark.slow  # embeds real photos
def test_mistakes_and_confirmed_predictions(svc) -> None:
    svc.projects.create("c")
    add_classes(svc, "c", {"shirt": 8, "t-shirt": 8})  # easily confused: some cross-validation mistakes
    iteration = svc.training.train("c")
    assert svc.training.image_performance_count("c", iteration.id) == 16
    wrong = svc.training.misclassified("c", iteration.id)
    assert all(w.predictions[0].tag_id != w.image.tags[0][0] for w in wrong)
    confidence = [w.predictions[0].probability for w in wrong]
    assert confidence == sorted(confidence, reverse=True)
    right = len(svc.training.image_performances("c", iteration.id)) - len(wrong)
    assert right == sum(
        p.predictions[0].tag_id == p.image.tags[0][0] for p in svc.training.image_performances("c", iteration.id)
    )

    shirt = photos(CLOTHING, "test", "shirt", 1)[0]
    stored = svc.prediction.classify("c", shirt.read_bytes())
    tag_id = next(t.id for t in svc.projects.list_tags("c") if t.name == "shirt")
    result = svc.prediction.to_training_image("c", stored.id, (tag_id,))
    assert result.ok and svc.images.by_ids("c", [result.image_id])[0].tags[0][0] == tag_id
    with pytest.raises(NotFound):
        svc.prediction.stored("c", stored.id)  # it left the review list
    again = svc.prediction.to_training_image("c", stored.id, (tag_id,))
    assert not again.ok


def test_uncertainty_orders_sure_before_unsure() -> None:
    from tagvision.service.prediction import uncertainty

    assert uncertainty(np.array([1.0, 0.0, 0.0]), multilabel=False) < 1e-6
    assert abs(uncertainty(np.array([1 / 3] * 3), multilabel=False) - 1.0) < 1e-9
    assert uncertainty(np.array([0.9, 0.05, 0.05]), False) < uncertainty(np.array([0.5, 0.4, 0.1]), False)
    # Multilabel: the tag closest to 0.5 decides.
    assert abs(uncertainty(np.array([0.99, 0.5]), multilabel=True) - 1.0) < 1e-9
    assert uncertainty(np.array([0.99, 0.01]), True) < uncertainty(np.array([0.99, 0.3]), True)


def test_metadata_filter_reads_custom_vision_syntax() -> None:
    from tagvision.service.images import MetadataCondition, parse_metadata_filter

    assert parse_metadata_filter("metadata=shop eq 'north' and aisle ne 'it''s 4'") == [
        MetadataCondition("shop", True, "north"),
        MetadataCondition("aisle", False, "it's 4"),
    ]
    assert parse_metadata_filter("camera EQ 'x'") == [MetadataCondition("camera", True, "x")]
    for bad in ("shop = 'north'", "shop eq north", "metadata=", "shop eq 'a' or b eq 'c'"):
        with pytest.raises(InvalidInput) as caught:
            parse_metadata_filter(bad)
        assert caught.value.code == "BadRequestInvalid"


def test_domains_map_custom_vision_ids_onto_our_backbones() -> None:
    from tagvision import domains

    assert domains.backbone_for("0732100f-1a38-4e49-a514-c9b44c697ab5") == "general-compact"
    assert domains.backbone_for("6B4FAEDA-8396-481B-9F8B-177B9FA3097F") == "general-compact"  # Retail (compact)
    assert domains.backbone_for("ee85a74c-405e-4adc-bb47-ffa8ca0c9f31") == "general"
    assert domains.resolve("general-compact").name == "General (compact)"
    assert domains.resolve("Food").id == "c151d5b5-dd07-472a-acc8-15d29dea8518"
    with pytest.raises(InvalidInput) as caught:
        domains.resolve("da2e3a8a-40a5-4171-82f4-58522f70fbc1")  # object detection
    assert caught.value.code == "BadRequestNotSupported"
    with pytest.raises(InvalidInput) as caught:
        domains.resolve("not-a-domain")
    assert caught.value.code == "BadRequestProjectUnknownDomain"


def test_training_progress_keeps_the_estimated_time_left(svc) -> None:
    """Advanced training reports its time left; the store keeps it, and the portal counts it down."""
    from tagvision.web.training import progress_bar, status_sentence

    svc.projects.create("p")
    add_classes(svc, "p", {"hat": 6, "shoes": 6})
    started = svc.training.start("p", training_type="Advanced", budget_minutes=5)
    record = svc.training.recorder(started.id, every=0.0)
    record("fine-tuning", 3, 10, eta=42.0)
    view = svc.training.iterations("p")[0]
    assert view.progress["stage"] == "fine-tuning" and view.progress["etaSeconds"] == 42.0
    # Read 5 s after the estimate was recorded: 42 - 5 s left, whatever the machine's speed.
    now = view.created.replace(tzinfo=UTC) + timedelta(seconds=view.progress["elapsedSeconds"] + 5)
    sentence = status_sentence(view, now)
    assert sentence.startswith("Iteration 1: Training (advanced, budget 5 min)… fine-tuning 3 of 10, ")
    assert sentence.endswith(", about 37 s left."), sentence
    bar = progress_bar(view, now)  # time used against time used + time left, not against the 5-minute budget
    assert bar["max"] - bar["value"] == pytest.approx(37, abs=0.1) and bar["max"] < 60, bar

    record("embedding images", 1, 2)  # quick stages have no estimate: none is shown
    view = svc.training.iterations("p")[0]
    assert "etaSeconds" not in view.progress and status_sentence(view).endswith(" so far.")
    assert progress_bar(view)["max"] == 300


def test_a_fine_tuned_network_names_the_backbone_it_takes_input_for(svc) -> None:
    """A General project's fine-tuned network may be Lite0: the service reads that from the network file (older
    files say nothing: they were fine-tuned from their domain's backbone)."""
    import onnx

    from tagvision import backbone

    lite0 = backbone.BACKBONES["general-compact"]
    model = onnx.load(str(backbone.ensure_onnx(lite0, svc.ctx.settings.models_dir)))
    del model.metadata_props[:]
    silent = svc.ctx.blobs.put(model.SerializeToString())
    onnx.helper.set_model_props(model, {"domain": "general-compact", "backbone": "efficientnet-lite0"})
    named = svc.ctx.blobs.put(model.SerializeToString())
    assert svc.ctx.spec("general") == backbone.BACKBONES["general"]
    assert svc.ctx.spec("general", silent) == backbone.BACKBONES["general"]
    assert svc.ctx.spec("general", named) == lite0
    assert svc.ctx.embedder("general", named).spec == lite0

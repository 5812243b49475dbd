"""The look that ranks and filters candidates, on generated embeddings (clusters per tag): ranking, judging from
5 images on, the tag a doubtful candidate looks like, rejected candidates as negatives, one-class projects."""

from __future__ import annotations

import numpy as np
import pytest

from tagvision.sources import look

DIM = 48


def cluster(rng: np.random.Generator, centre: np.ndarray, n: int) -> np.ndarray:
    """Non-negative embeddings around ``centre``, as ReLU6 averages are."""
    return np.clip(centre + rng.normal(0, 0.15, (n, DIM)), 0, None).astype(np.float32)


@pytest.fixture
def centres() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {name: rng.uniform(0, 1, DIM) * (rng.uniform(0, 1, DIM) > 0.5) for name in ("rose", "tulip", "daisy", "car")}


def examples(centres: dict[str, np.ndarray], counts: dict[str, int], rejected: int = 0, seed: int = 0) -> look.Examples:
    rng = np.random.default_rng(seed)
    tags = tuple(counts)
    rows, labels = [], []
    for t, tag in enumerate(tags):
        rows.append(cluster(rng, centres[tag], counts[tag]))
        labels += [np.eye(len(tags), dtype=bool)[t]] * counts[tag]
    if rejected:
        rows.append(cluster(rng, centres["car"], rejected))
        labels += [np.zeros(len(tags), bool)] * rejected
    plain = np.concatenate(rows)
    return look.Examples(tags, plain, plain.copy(), np.array(labels))


def test_multiclass_ranks_by_every_tag_and_sets_aside_what_looks_like_another(centres) -> None:
    fitted = look.fit(examples(centres, {"rose": 6, "tulip": 6, "daisy": 4}))
    assert isinstance(fitted, look.LookClassifier)
    assert fitted.judges("rose") and fitted.judges("tulip") and not fitted.judges("daisy")  # 4 < MIN_TO_JUDGE
    assert fitted.scores("daisy") and not fitted.scores("lily")
    rng = np.random.default_rng(1)
    candidates = np.concatenate([cluster(rng, centres["rose"], 10), cluster(rng, centres["tulip"], 5)])
    order = fitted.rank("rose", candidates, candidates)
    assert sorted(order[:10]) == list(range(10)) and sorted(order) == list(range(15))  # roses first, then the rest
    verdicts = fitted.verdicts("rose", candidates, candidates)
    assert not any(v.doubtful for v in verdicts[:10]) and all(v.doubtful for v in verdicts[10:])
    assert all(v.likelier == "tulip" and v.score < 0.5 < v.likelier_score for v in verdicts[10:])
    assert verdicts[10].message("rose").startswith("It looks more like 'tulip' (")
    assert verdicts[0].message("rose") == "" and 0.5 < verdicts[0].score <= 1
    daisy = fitted.verdicts("daisy", candidates, candidates)  # scored, not judged: never set aside
    assert not any(v.doubtful for v in daisy) and all(v.score is not None for v in daisy)
    assert fitted.rank("lily", candidates, candidates).size == 0


def test_rejected_candidates_become_the_other_class(centres) -> None:
    fitted = look.fit(examples(centres, {"rose": 6, "tulip": 6}, rejected=6))
    assert look.OTHER in fitted.models_[0].classes_
    rng = np.random.default_rng(2)
    cars = cluster(rng, centres["car"], 4)
    verdicts = fitted.verdicts("rose", cars, cars)
    assert all(v.doubtful and v.likelier == look.OTHER for v in verdicts)
    assert "candidates you rejected" in verdicts[0].message("rose")
    alone = look.fit(examples(centres, {"rose": 6}, rejected=3))  # one tag and rejections: two classes
    assert isinstance(alone, look.LookClassifier) and alone.judges("rose")


def test_multilabel_judges_each_tag_on_its_own(centres) -> None:
    fitted = look.fit(examples(centres, {"rose": 6, "tulip": 6, "daisy": 6}), multilabel=True)
    rng = np.random.default_rng(3)
    roses = cluster(rng, centres["rose"], 5)
    assert not any(v.doubtful for v in fitted.verdicts("rose", roses, roses))
    assert all(v.doubtful and v.likelier is None for v in fitted.verdicts("tulip", roses, roses))
    assert fitted.verdicts("tulip", roses, roses)[0].message("tulip").startswith("It does not look like 'tulip'")


def test_one_class_falls_back_to_centroids_and_judges_nothing(centres) -> None:
    fitted = look.fit(examples(centres, {"rose": 6, "tulip": 0}))
    assert isinstance(fitted, look.Centroid)
    assert not fitted.judges("rose") and not fitted.scores("rose")
    rng = np.random.default_rng(4)
    mixed = np.concatenate([cluster(rng, centres["tulip"], 3), cluster(rng, centres["rose"], 3)])
    assert sorted(fitted.rank("rose", mixed, mixed)[:3]) == [3, 4, 5]
    assert fitted.rank("tulip", mixed, mixed).size == 0
    assert [v.doubtful for v in fitted.verdicts("rose", mixed, mixed)] == [False] * 6


def test_fits_on_at_most_max_per_tag_images_of_a_tag(centres) -> None:
    many = examples(centres, {"rose": 200, "tulip": 6})
    fitted = look.LookClassifier(max_per_tag=20).fit(many)
    assert fitted.counts_ == {"rose": 200, "tulip": 6}  # judged on what the project has
    kept = fitted._subsample(many.labels)
    assert many.labels[kept].sum(axis=0).tolist() == [20, 6]
    with pytest.raises(ValueError, match="two tags"):
        look.LookClassifier().fit(examples(centres, {"rose": 6}))


def test_a_pool_smooths_each_candidate_with_its_neighbours(centres) -> None:
    fitted = look.fit(examples(centres, {"rose": 6, "tulip": 6}))
    rng = np.random.default_rng(5)
    pool = np.concatenate([cluster(rng, centres["rose"], 12), cluster(rng, centres["tulip"], 12)])
    graph = look.neighbours(pool, pool, k=4)
    assert graph.shape == (24, 4) and not (graph == np.arange(24)[:, None]).any()  # never its own neighbour
    assert (graph[:12] < 12).mean() > 0.9  # roses' neighbours are roses
    raw, _ = fitted.proba(pool, pool)
    smooth, _ = fitted.proba(pool, pool, graph)
    assert np.allclose(smooth, (1 - look.SMOOTHING) * raw + look.SMOOTHING * raw[graph].mean(axis=1))
    assert sorted(fitted.rank("rose", pool, pool, graph)[:12]) == list(range(12))
    assert look.neighbours(pool[:4], pool[:4], k=4) is None  # too few to have neighbours

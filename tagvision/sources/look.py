"""How much a candidate looks like each tag: a classifier fitted on the project's tagged images.

Gathering images ranks and filters candidates by look, whatever the provider. The look is learnt
from every tagged image of the project, each tag's images being the other tags' negatives, and
from the candidates the user rejected ("other"):

* **multiclass**: one multinomial logistic regression over the tags (and "other", once the user
  rejected some); a candidate belongs to the tag it is most likely to show;
* **multilabel**: one logistic regression per tag (its images against every other image,
  classes balanced); a candidate shows a tag when that tag's probability is at least one half.

Features are the power-normalised backbone embeddings (:func:`tagvision.learn.features`), L2
normalised, with the mirrored images as more rows and the two probabilities averaged at scoring
(test-time flip). ``C=10``. Why not cosine to a tag's centroid ("more like these" until now): it
ignores that two tags may look closer to each other than to a third. With 5 seed images per class
(``bench/library.py``; precision of 50 images gathered per tag from a library with hashed names)
the classifier is ahead by more than 0.10 on clothing-small and car-damage; the same classifier's
shrinkage-LDA sibling (:class:`~tagvision.learn.QuickClassifier`) ranks as well but spends ~40x
longer choosing its shrinkage by cross-validation, too slow to refit between review pages.

Within a pool of candidates known at once (a library), each candidate's probabilities are smoothed
with those of its :data:`NEIGHBOURS` nearest candidates (cosine of the same features), half and half:
pictures that look alike tend to show the same thing. On the same benchmark this added 0.01 to 0.02
(k of 5 to 20 and weights of 0.3 to 0.7 all within 0.01 of each other).

A tag is *judged* (its doubtful candidates set aside) once it has :data:`MIN_TO_JUDGE` images;
until then its candidates are only ranked. A project whose images fall in fewer than two classes
cannot be told apart; :class:`Centroid` then ranks by cosine to each tag's centroid, judging none.

Shapes: ``n`` images, ``d`` embedding dimensions, ``T`` tags.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from sklearn.linear_model import LogisticRegression

from tagvision.learn import features

MIN_TO_JUDGE = 5  # images a tag needs before its candidates can be found doubtful
NEIGHBOURS, SMOOTHING = 10, 0.5  # within a pool: each row's probabilities half its own, half its neighbours'
MAX_POOL = 20_000  # larger pools are not smoothed (the neighbour search grows with the square of the pool)
REGULARISATION = 10.0  # scikit-learn's C, chosen on bench/library.py (1, 10 and 100 within 0.01)
MAX_PER_TAG = 300  # images of a tag the classifier is fitted on (a seeded draw beyond): fitting stays ~1 s
OTHER = "candidates you rejected"  # what the extra class of a multiclass look is called in messages


def vectors(embeddings: np.ndarray) -> np.ndarray:
    """Embeddings (n, d) -> the classifier's features: power-normalised, unit length, float64."""
    x = features(np.asarray(embeddings, np.float32)).astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class Examples:
    """What a look is learnt from: the project's tagged images and the candidates the user rejected.

    ``labels`` (n, T) bool has one column per name in ``tags``; a row without any tag is a
    rejected candidate (a negative for every tag).
    """

    tags: tuple[str, ...]
    plain: np.ndarray  # (n, d) embeddings
    flipped: np.ndarray  # (n, d) embeddings of the mirrored images
    labels: np.ndarray  # (n, T) bool

    def count(self, tag: str) -> int:
        return int(self.labels[:, self.tags.index(tag)].sum()) if tag in self.tags else 0


@dataclass(frozen=True)
class Verdict:
    """What the look says about one candidate for one tag."""

    score: float | None  # the probability that it shows the tag; None where the tag cannot be scored
    doubtful: bool  # set it aside for review: the tag is judged and the candidate looks like something else
    likelier: str | None = None  # what it looks more like (a tag name, or OTHER), when doubtful
    likelier_score: float | None = None

    def message(self, tag: str) -> str:
        if not self.doubtful:
            return ""
        if self.likelier is None:
            return f"It does not look like {tag!r} ({self.score:.0%})."
        return (
            f"It looks more like {_named(self.likelier)} ({self.likelier_score:.0%}) than {tag!r} ({self.score:.0%})."
        )


def neighbours(plain: np.ndarray, flipped: np.ndarray, k: int = NEIGHBOURS) -> np.ndarray | None:
    """The ``k`` nearest other rows of each row, (n, k) indices (cosine of the flip-mean features); None for a
    pool too small (``k`` rows or fewer) or too large (over :data:`MAX_POOL`) to smooth over."""
    n = len(plain)
    if n <= k or n > MAX_POOL:
        return None
    x = vectors((np.asarray(plain, np.float32) + np.asarray(flipped, np.float32)) / 2).astype(np.float32)
    out = np.empty((n, k), np.int64)
    for start in range(0, n, 1024):
        sims = x[start : start + 1024] @ x.T
        sims[np.arange(len(sims)), np.arange(start, start + len(sims))] = -np.inf  # not its own neighbour
        out[start : start + len(sims)] = np.argpartition(-sims, k, axis=1)[:, :k]
    return out


class Look(Protocol):
    """Scores and orders candidates for a tag by how they look. ``neighbours``: where the rows are a pool of
    candidates, :func:`neighbours` of it, to smooth each row's probabilities with its neighbours'."""

    def scores(self, tag: str) -> bool:
        """Whether it gives candidates for ``tag`` a probability (a :class:`Verdict` with a score)."""
        ...

    def judges(self, tag: str) -> bool:
        """Whether ``tag`` has enough images for its candidates to be found doubtful."""
        ...

    def rank(
        self, tag: str, plain: np.ndarray, flipped: np.ndarray, neighbours: np.ndarray | None = None
    ) -> np.ndarray:
        """Indices of the rows in the order to offer them for ``tag``: those that look like it (its most likely
        class, or probability >= 1/2) by probability, then the others by probability."""
        ...

    def verdicts(
        self, tag: str, plain: np.ndarray, flipped: np.ndarray, neighbours: np.ndarray | None = None
    ) -> list[Verdict]:
        """One :class:`Verdict` per row."""
        ...


@dataclass
class LookClassifier:
    """Logistic regression on every tag's images (see the module docstring); ``fit`` sets the ``_`` fields.

    - ``tags_``: the tags it can score (those with at least one image), in ``Examples.tags`` order;
    - ``counts_``: images per tag name;
    - ``models_``: one multinomial model (multiclass), or one binary model per scored tag (multilabel).
    """

    multilabel: bool = False
    C: float = REGULARISATION
    min_to_judge: int = MIN_TO_JUDGE
    max_per_tag: int = MAX_PER_TAG
    seed: int = 0
    tags_: tuple[str, ...] = field(init=False, default=())
    counts_: dict[str, int] = field(init=False, default_factory=dict)
    models_: list[LogisticRegression] = field(init=False, default_factory=list)
    _classes: list[str] = field(init=False, default_factory=list)  # multiclass: model column -> tag or OTHER

    @staticmethod
    def can_fit(examples: Examples, multilabel: bool = False) -> bool:
        """At least two classes to tell apart: two tags with images, or one and rejected candidates."""
        counts = examples.labels.sum(axis=0)
        if multilabel:  # a tag some images have and others have not
            return bool(((counts > 0) & (counts < len(examples.labels))).any())
        return int((counts > 0).sum()) + int((~examples.labels.any(axis=1)).any()) >= 2

    def fit(self, examples: Examples) -> LookClassifier:
        if not self.can_fit(examples, self.multilabel):
            raise ValueError("a look needs images of two tags, or of one tag and rejected candidates")
        keep = self._subsample(examples.labels)
        labels = examples.labels[keep]
        x = np.concatenate([vectors(examples.plain[keep]), vectors(examples.flipped[keep])])
        counts = examples.labels.sum(axis=0)
        self.counts_ = {t: int(c) for t, c in zip(examples.tags, counts, strict=True)}
        most = len(examples.labels) if not self.multilabel else len(examples.labels) - 1  # binary: both classes
        self.tags_ = tuple(t for t, c in zip(examples.tags, counts, strict=True) if 0 < c <= most)
        if self.multilabel:
            self.models_ = []
            for tag in self.tags_:
                y = labels[:, examples.tags.index(tag)]
                model = LogisticRegression(C=self.C, class_weight="balanced", max_iter=2000)
                self.models_.append(model.fit(x, np.concatenate([y, y])))
        else:
            names = np.array([examples.tags[i] for i in labels.argmax(axis=1)], dtype=object)
            names[~labels.any(axis=1)] = OTHER
            model = LogisticRegression(C=self.C, max_iter=2000).fit(x, np.concatenate([names, names]))
            self.models_, self._classes = [model], [str(c) for c in model.classes_]
        return self

    def scores(self, tag: str) -> bool:
        return tag in self.tags_

    def judges(self, tag: str) -> bool:
        return tag in self.tags_ and self.counts_.get(tag, 0) >= self.min_to_judge

    def proba(
        self, plain: np.ndarray, flipped: np.ndarray, neighbours: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(n, len(tags_)) probabilities of the scored tags, and (n,) of "other" (zeros for multilabel)."""
        a, b = vectors(plain), vectors(flipped)
        if self.multilabel:
            p = np.stack([(m.predict_proba(a)[:, 1] + m.predict_proba(b)[:, 1]) / 2 for m in self.models_], axis=1)
            other = np.zeros(len(a))
        else:
            model = self.models_[0]
            full = (model.predict_proba(a) + model.predict_proba(b)) / 2
            other = full[:, self._classes.index(OTHER)] if OTHER in self._classes else np.zeros(len(a))
            p = full[:, [self._classes.index(t) for t in self.tags_]]
        if neighbours is not None:
            p = (1 - SMOOTHING) * p + SMOOTHING * p[neighbours].mean(axis=1)
            other = (1 - SMOOTHING) * other + SMOOTHING * other[neighbours].mean(axis=1)
        return p, other

    def rank(
        self, tag: str, plain: np.ndarray, flipped: np.ndarray, neighbours: np.ndarray | None = None
    ) -> np.ndarray:
        if tag not in self.tags_ or not len(plain):
            return np.zeros(0, np.int64)
        p, other = self.proba(plain, flipped, neighbours)
        own = p[:, self.tags_.index(tag)]
        order = np.argsort(-own, kind="stable")
        fits = self._fits(p, other, own)
        return np.concatenate([order[fits[order]], order[~fits[order]]])  # those that look like the tag first

    def verdicts(
        self, tag: str, plain: np.ndarray, flipped: np.ndarray, neighbours: np.ndarray | None = None
    ) -> list[Verdict]:
        if tag not in self.tags_:
            return [Verdict(None, False) for _ in range(len(plain))]
        p, other = self.proba(plain, flipped, neighbours)
        own = p[:, self.tags_.index(tag)]
        fits = self._fits(p, other, own)
        judged = self.judges(tag)
        out = []
        for i in range(len(plain)):
            if fits[i] or not judged:
                out.append(Verdict(float(own[i]), False))
            elif self.multilabel:
                out.append(Verdict(float(own[i]), True))
            else:
                best = int(p[i].argmax())
                likelier, value = (OTHER, other[i]) if other[i] > p[i, best] else (self.tags_[best], p[i, best])
                out.append(Verdict(float(own[i]), True, likelier, float(value)))
        return out

    def _fits(self, p: np.ndarray, other: np.ndarray, own: np.ndarray) -> np.ndarray:
        """Rows that show the tag: its most likely class (multiclass), probability >= 1/2 (multilabel)."""
        if self.multilabel:
            return own >= 0.5
        return (own >= p.max(axis=1)) & (own >= other)

    def _subsample(self, labels: np.ndarray) -> np.ndarray:
        """Row indices: at most ``max_per_tag`` images per tag (a seeded draw) and the rejected ones."""
        rng = np.random.default_rng(self.seed)
        keep = np.ones(len(labels), bool)
        for t in range(labels.shape[1]):
            rows = np.flatnonzero(labels[:, t] & keep)
            if len(rows) > self.max_per_tag:
                keep[rng.choice(rows, len(rows) - self.max_per_tag, replace=False)] = False
        return np.flatnonzero(keep)


@dataclass
class Centroid:
    """Cosine to the centroid of a tag's images: "more like these" for projects with one class of images.

    ``seeds``: tag name -> flip-mean embeddings (k, d) of its images. Judges no tag.
    """

    seeds: dict[str, np.ndarray]

    def scores(self, tag: str) -> bool:
        return False

    def judges(self, tag: str) -> bool:
        return False

    def rank(
        self, tag: str, plain: np.ndarray, flipped: np.ndarray, neighbours: np.ndarray | None = None
    ) -> np.ndarray:
        scores = self._scores(tag, plain, flipped)
        if scores is None:
            return np.zeros(0, np.int64)
        order = np.argsort(-scores, kind="stable")
        return order[np.isfinite(scores[order])]

    def verdicts(
        self, tag: str, plain: np.ndarray, flipped: np.ndarray, neighbours: np.ndarray | None = None
    ) -> list[Verdict]:
        return [Verdict(None, False) for _ in range(len(plain))]

    def _scores(self, tag: str, plain: np.ndarray, flipped: np.ndarray) -> np.ndarray | None:
        seeds = self.seeds.get(tag)
        if seeds is None or not len(seeds) or not len(plain):
            return None
        centroid = vectors(seeds).mean(axis=0)
        centroid /= max(float(np.linalg.norm(centroid)), 1e-12)
        return vectors((np.asarray(plain) + np.asarray(flipped)) / 2) @ centroid


def fit(examples: Examples, multilabel: bool = False) -> Look:
    """The look of a project: its classifier where two classes can be told apart, else centroids."""
    if LookClassifier.can_fit(examples, multilabel):
        return LookClassifier(multilabel=multilabel).fit(examples)
    seeds = {
        tag: ((examples.plain + examples.flipped) / 2)[examples.labels[:, i]]
        for i, tag in enumerate(examples.tags)
        if examples.labels[:, i].any()
    }
    return Centroid(seeds)


def _named(likelier: str) -> str:
    return likelier if likelier == OTHER else repr(likelier)

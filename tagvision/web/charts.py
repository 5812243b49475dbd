"""Geometry of the SVG charts: precision-recall curves, the confusion matrix, probability bars.

Only numbers for the templates to place; the templates draw the SVG (so it is escaped and
styled like the rest of the page). Coordinates are in the SVG's own viewBox units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tagvision import metrics

# Okabe-Ito colours that keep at least 3:1 against white, then a few more.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#8F6400", "#3A6E8F", "#000000", "#882255", "#44546A", "#6F4E37")


def colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


@dataclass(frozen=True)
class Plot:
    """A square-ish plotting area inside a viewBox."""

    width: float = 360
    height: float = 300
    left: float = 48
    top: float = 12
    right: float = 12
    bottom: float = 44

    @property
    def inner_width(self) -> float:
        return self.width - self.left - self.right

    @property
    def inner_height(self) -> float:
        return self.height - self.top - self.bottom

    def x(self, recall: float) -> float:
        return round(self.left + recall * self.inner_width, 2)

    def y(self, precision: float) -> float:
        return round(self.top + (1.0 - precision) * self.inner_height, 2)

    def ticks(self) -> list[tuple[float, float, float, str]]:
        """(value, x, y, label) for 0, 0.25 ... 1 on both axes."""
        return [(v, self.x(v), self.y(v), f"{v:.2g}") for v in (0.0, 0.25, 0.5, 0.75, 1.0)]


@dataclass(frozen=True)
class Curve:
    tag_id: str
    name: str
    colour: str
    points: str  # "x,y x,y ..." for a <polyline>
    marker: tuple[float, float]  # where the tag is at the current threshold


PR_PLOT = Plot()


def pr_curves(
    probabilities: np.ndarray,
    labels: np.ndarray,
    tags: list[tuple[str, str]],
    at_threshold: dict[str, tuple[float, float]],
) -> list[Curve]:
    """One curve per tag that has images; ``at_threshold``: tag id -> (precision, recall) now."""
    curves = []
    for j, (tag_id, name) in enumerate(tags):
        if not labels[:, j].any():
            continue
        precision, recall, _ = metrics.precision_recall_curve(probabilities, labels, j)
        points = " ".join(f"{PR_PLOT.x(r)},{PR_PLOT.y(p)}" for p, r in zip(precision, recall, strict=True))
        p_now, r_now = at_threshold.get(tag_id, (0.0, 0.0))
        curves.append(Curve(tag_id, name, colour(j), points, (PR_PLOT.x(r_now), PR_PLOT.y(p_now))))
    return curves


@dataclass(frozen=True)
class Cell:
    x: float
    y: float
    count: int
    share: float  # of the true tag's row
    fill: str
    text: str  # "light" or "dark": the text colour (a CSS class) with enough contrast on ``fill``
    label: str  # for the tooltip: "dress taken for hat: 2"


@dataclass(frozen=True)
class Matrix:
    size: float  # one cell's side
    left: float
    top: float
    width: float
    height: float
    names: list[str]
    cells: list[Cell]


def confusion(probabilities: np.ndarray, labels: np.ndarray, tags: list[tuple[str, str]]) -> Matrix:
    """True tags (rows) against the most probable tag (columns), shaded by share of the row."""
    counts = metrics.confusion_matrix(probabilities, labels)
    names = [name for _, name in tags]
    size, left, top = 44.0, 110.0, 84.0
    cells = []
    for t, row in enumerate(counts):
        total = int(row.sum())
        for p, count in enumerate(row):
            share = count / total if total else 0.0
            rgb = tuple(round(255 + (c - 255) * share) for c in DARK)  # white .. dark blue
            fill = "#{:02x}{:02x}{:02x}".format(*rgb)
            cells.append(
                Cell(
                    left + p * size,
                    top + t * size,
                    int(count),
                    share,
                    fill,
                    _text_on(rgb),
                    f"{names[t]} predicted as {names[p]}: {int(count)}",
                )
            )
    n = len(names)
    return Matrix(size, left, top, left + n * size + 8, top + n * size + 8, names, cells)


DARK = (11, 61, 145)
TEXT = (27, 27, 27)


def _luminance(rgb: tuple[int, ...]) -> float:
    def channel(c: int) -> float:
        c /= 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def _text_on(rgb: tuple[int, ...]) -> str:
    """ "light" (white) or "dark" (near-black) text, whichever contrasts more with ``rgb`` (at least 4.5:1)."""
    background = _luminance(rgb)
    on_white = 1.05 / (background + 0.05)
    on_dark = (background + 0.05) / (_luminance(TEXT) + 0.05)
    return "light" if on_white > on_dark else "dark"


@dataclass(frozen=True)
class Bar:
    name: str
    probability: float
    colour: str


def bars(predictions: list, tag_order: list[str]) -> list[Bar]:
    """Probability bars, highest first; colours follow the tag's place in the project."""
    index = {tag_id: j for j, tag_id in enumerate(tag_order)}
    return [Bar(p.tag_name, p.probability, colour(index.get(p.tag_id, 0))) for p in predictions]

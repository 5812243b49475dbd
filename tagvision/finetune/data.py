"""The training images, decoded once: copies for random crops and the centre crops the server sees.

Each image is decoded once per backbone involved, as the server decodes it (JPEG draft mode
depends on the size wanted), so the centre crops are exactly the server's input. The copy kept for
augmentation is just large enough for random crops of the largest backbone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from tagvision import backbone, images
from tagvision.errors import ImageError, TrainingError
from tagvision.finetune.recipe import Recipe

_GREY = np.array([0.299, 0.587, 0.114], np.float32)


class Decoded:
    """``copies[i]``: image ``i`` for random crops; ``centres[domain]``: (n, 3, S, S) uint8 centre crops."""

    def __init__(
        self,
        sources: Sequence[Callable[[], bytes]],
        specs: Sequence[backbone.BackboneSpec],
        threads: int,
        progress: Callable[[int, int], None],
    ) -> None:
        n, self.specs = len(sources), list(specs)
        self.largest = max(s.resize for s in self.specs)
        self.copies: list[Image.Image] = []
        self.centres = {s.domain: np.zeros((n, 3, s.image_size, s.image_size), np.uint8) for s in self.specs}
        progress(0, n)
        with ThreadPoolExecutor(max(1, threads)) as pool:
            for i, (img, crops) in enumerate(pool.map(self._one, enumerate(sources))):
                self.copies.append(img)
                for s, crop in zip(self.specs, crops, strict=True):
                    self.centres[s.domain][i] = crop
                if (i + 1) % 64 == 0:
                    progress(i + 1, n)
        progress(n, n)

    def _one(self, item: tuple[int, Callable[[], bytes]]) -> tuple[Image.Image, list[np.ndarray]]:
        i, read = item
        try:
            data = read()
            opened = {s.resize: images.open_rgb(data, min_side=s.resize) for s in self.specs}
        except (ImageError, OSError) as exc:
            message = exc.message if isinstance(exc, ImageError) else str(exc)
            raise TrainingError(f"Training image {i} can no longer be decoded: {message}") from exc
        crops = [backbone.centre_crop(opened[s.resize], s).transpose(2, 0, 1) for s in self.specs]
        img = opened[self.largest]
        scale = self.largest / min(img.size)
        if scale < 1:  # keep a copy just large enough for random crops
            size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
            img = img.resize(size, Image.Resampling.BICUBIC)
        return img, crops

    def views(
        self, rows: np.ndarray, spec: backbone.BackboneSpec, rng: np.random.Generator, recipe: Recipe
    ) -> np.ndarray:
        """Augmented crops of images ``rows``: (len(rows), 3, S, S) float32."""
        return np.stack([random_view(self.copies[i], spec, rng, recipe) for i in rows])


def random_view(img: Image.Image, spec: backbone.BackboneSpec, rng: np.random.Generator, recipe: Recipe) -> np.ndarray:
    """A random resized crop of ``img`` (scale of the area, aspect ratio), maybe mirrored, colour-jittered,
    preprocessed like :func:`backbone.preprocess`: (3, S, S) float32."""
    w, h = img.size
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(*recipe.crop_scale)
        ratio = math.exp(rng.uniform(math.log(recipe.crop_ratio[0]), math.log(recipe.crop_ratio[1])))
        cw, ch = math.sqrt(target * ratio), math.sqrt(target / ratio)
        if cw <= w and ch <= h:
            break
    else:
        cw = ch = min(w, h)
    left, top = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
    size = spec.image_size
    crop = img.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + cw, top + ch))
    arr = np.asarray(crop, dtype=np.float32)
    if rng.random() < 0.5:
        arr = arr[:, ::-1]
    if recipe.jitter:
        arr = _jitter(arr, rng, recipe.jitter)
    return backbone.normalise(arr).transpose(2, 0, 1)


def _jitter(arr: np.ndarray, rng: np.random.Generator, j: float) -> np.ndarray:
    """Brightness, contrast and saturation, each by a factor in 1 +- ``j``."""
    arr = arr * rng.uniform(1 - j, 1 + j)
    mean = arr.mean()
    arr = (arr - mean) * rng.uniform(1 - j, 1 + j) + mean
    grey = (arr @ _GREY)[..., None]
    arr = (arr - grey) * rng.uniform(1 - j, 1 + j) + grey
    return np.clip(arr, 0, 255)

"""The hyper-parameters of advanced training, in one frozen object.

Chosen on car-damage and clothing-small with ``bench/advanced.py``; its notes give the figures.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Recipe:
    frozen_blocks: int = 3  # the stem and this many MBConv blocks keep their pretrained weights (Lite has 16)
    crop_scale: tuple[float, float] = (0.25, 1.0)  # random resized crop: share of the image's area
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    jitter: float = 0.2  # brightness, contrast, saturation: factors in 1 +- jitter
    batch_size: int = 32
    lr: float = 1e-3  # AdamW, backbone and head alike, at the top of the schedule
    weight_decay: float = 0.02
    label_smoothing: float = 0.1
    dropout: float = 0.2
    drop_connect: float = 0.1
    warmup_fraction: float = 0.05
    max_epochs: float = 10.0  # a schedule ends after this many epochs even with time left
    min_epochs: float = 1.0  # fine-tuning is skipped when fewer fit in the budget
    refit_min_epochs: float = 5.0  # train again on every image when two schedules of this many epochs fit
    larger_epochs: float = 10.0  # a larger backbone is fine-tuned only when two schedules of this many fit
    bf16: str = "auto"  # bfloat16 autocast while training: "on", "off", or "auto" (when it measures faster)
    scores_from: float = 0.5  # the validation split is scored from this share of the schedule on ...
    evaluations: int = 4  # ... this many times (the last at the end), fewer when scoring is slow
    validation_fraction: float = 0.2  # held out (stratified) for early stopping and the choice against quick
    force_fine_tuned: bool = False  # choose the fine-tuned network even when the quick head scores better

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

"""Advanced training: fine-tune the backbone within a time budget, on CPU, and keep it only if it beats
the quick head on held-out images.

Modules: :mod:`~tagvision.finetune.planner` (pure: measured costs in, decisions out),
:mod:`~tagvision.finetune.loop` (one training schedule behind an injected clock),
:mod:`~tagvision.finetune.network` (the torch network), :mod:`~tagvision.finetune.data` (decoding and
augmentation), :mod:`~tagvision.finetune.choice` (quick against fine-tuned),
:mod:`~tagvision.finetune.job` (the stages, in order) and :mod:`~tagvision.finetune.report` (what comes out).
Torch is imported only when a network is built.
"""

from tagvision.finetune.job import fine_tune
from tagvision.finetune.network import torch_embed
from tagvision.finetune.recipe import Recipe
from tagvision.finetune.report import Evaluated, FineTuneResult, Report, Tuning

__all__ = ["Evaluated", "FineTuneResult", "Recipe", "Report", "Tuning", "fine_tune", "torch_embed"]

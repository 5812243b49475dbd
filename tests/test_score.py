"""Scoring a catalogue: `tagvision score` over folders, list files (paths and URLs) and S3, resumable results.

The model is a real iteration (quick training on clothing-small photos), published; the rows are checked
against the exported classifier run directly on the same preprocessed photos.
"""

from __future__ import annotations

import csv
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tagvision import backbone
from tagvision.config import Settings
from tagvision.scoring import engine, results
from tagvision.scoring.sources import SourceSpec, open_source
from tagvision.service import NewImage, Service
from tagvision.store.models import Iteration
from tests.conftest import CLOTHING, MODELS, REPO, photos

pytestmark = pytest.mark.slow
TAGS = ("dress", "hat", "shoes", "pants")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A data dir whose project "shop" has a published quick iteration trained on 6 photos per tag."""
    data_dir = tmp_path_factory.mktemp("score") / "data"
    os.environ["TAGVISION_MODELS_DIR"] = str(MODELS)
    svc = Service.open(Settings.load(data_dir))
    try:
        svc.projects.create("shop", domain="general-compact")
        svc.projects.create_tags("shop", list(TAGS))
        items = [NewImage(p.name, p.read_bytes, (t,)) for t in TAGS for p in photos(CLOTHING, "train", t, 6)]
        assert svc.images.add("shop", items).is_batch_successful
        iteration = svc.training.train("shop")
        svc.training.publish("shop", iteration.id, "shop-v1")
    finally:
        svc.close()
    return data_dir


@pytest.fixture(scope="module")
def model(project: Path) -> engine.ScoringModel:
    svc = Service.open(Settings.load(project))
    try:
        return engine.ScoringModel(svc.scorings.model("shop").onnx)
    finally:
        svc.close()


def catalogue(root: Path, per_tag: int, skip: int = 10) -> list[Path]:
    """Unseen photos copied into ``root/<tag>/``."""
    copied = []
    for tag in TAGS:
        (root / tag).mkdir(parents=True, exist_ok=True)
        for path in photos(CLOTHING, "test", tag, per_tag, skip=skip):
            copied.append(Path(shutil.copy(path, root / tag / path.name)))
    return sorted(copied)


def direct(model: engine.ScoringModel, paths: list[Path]) -> dict[str, np.ndarray]:
    """The exported classifier on each photo alone: what every row must say."""
    return {str(p): model.probabilities(backbone.preprocess_bytes(p.read_bytes(), model.spec)[None])[0] for p in paths}


def check_row(row: results.Row, want: np.ndarray, labels: list[str], top: int) -> None:
    assert row.error_code is None, row
    order = np.argsort(-want, kind="stable")[:top]
    assert [p.tag_name for p in row.predictions] == [labels[j] for j in order]
    assert np.allclose([p.probability for p in row.predictions], want[order], atol=1e-5)


def cli(*args: str, data_dir: Path, **options) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tagvision.cli", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env={**os.environ, "TAGVISION_MODELS_DIR": str(MODELS), **options.pop("env", {})},
        **options,
    )


def read_jsonl(path: Path) -> list[results.Row]:
    return [results.Row.from_json(json.loads(line)) for line in path.read_text().splitlines()]


def test_a_folder_with_broken_files_reports_each_with_its_code(tmp_path: Path, model: engine.ScoringModel) -> None:
    good = catalogue(tmp_path / "shop", 3)
    broken = tmp_path / "shop" / "broken"
    broken.mkdir()
    (broken / "truncated.jpg").write_bytes(good[0].read_bytes()[:2000])
    (broken / "text.jpg").write_bytes(b"this is not an image at all\n" * 10)
    (broken / "empty.png").write_bytes(b"")
    Image.new("RGB", (600, 20)).save(broken / "sliver.png")  # 30 to 1: past Custom Vision's aspect limit
    (broken / "notes.txt").write_text("not an image suffix: never listed")
    (tmp_path / "shop" / ".hidden").mkdir()
    shutil.copy(good[0], tmp_path / "shop" / ".hidden" / "skipped.jpg")

    out = tmp_path / "results.jsonl"
    spec = SourceSpec.parse(str(tmp_path / "shop"))
    summary = engine.score_to_file(spec, out, engine.local_runner(model, top=3, batch_size=4), top=3)
    rows = {r.image: r for r in read_jsonl(out)}
    codes = {Path(k).name: r.error_code for k, r in rows.items() if r.error_code}
    assert codes == {
        "truncated.jpg": "ErrorImageFormat",
        "text.jpg": "ErrorImageFormat",
        "empty.png": "ErrorImageSize",
        "sliver.png": "ErrorImageDimensions",
    }
    assert all(rows[k].error for k in rows if rows[k].error_code)
    assert sorted(k for k, r in rows.items() if not r.error_code) == [str(p) for p in good]
    for key, want in direct(model, good).items():
        check_row(rows[key], want, model.labels, 3)
    assert (summary.scored, summary.errors, summary.skipped) == (len(good), Counter(codes.values()), 0)

    # Run again: everything is already there.
    again = engine.score_to_file(spec, out, engine.local_runner(model, top=3), top=3)
    assert (again.scored, again.skipped, len(read_jsonl(out))) == (0, len(rows), len(rows))


def test_resume_after_kill_9_loses_nothing_and_repeats_nothing(tmp_path: Path, project: Path) -> None:
    paths = catalogue(tmp_path / "catalogue", 12)
    out = tmp_path / "results.csv"
    args = ("score", "shop", str(tmp_path / "catalogue"), "--out", str(out), "--batch-size", "4", "--top", "2")
    process = subprocess.Popen(
        [sys.executable, "-m", "tagvision.cli", *args, "--data-dir", str(project)],
        cwd=REPO,
        env={**os.environ, "TAGVISION_MODELS_DIR": str(MODELS)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
        if out.exists() and len(out.read_text().splitlines()) >= 1 + 8:  # the header and two batches
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    lines = out.read_text().splitlines()
    assert 1 + 8 <= len(lines) < 1 + len(paths), "the run was killed before it finished"
    with out.open("ab") as fh:
        fh.write(b"/a/torn/row.jpg,,,dre")  # as if the kill had come in the middle of a write

    resumed = cli(*args, data_dir=project)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(lines) - 1} already in" in resumed.stdout
    with out.open(newline="") as fh:
        table = list(csv.DictReader(fh))
    keys = [row["image"] for row in table]
    assert sorted(keys) == [str(p) for p in paths] and len(set(keys)) == len(keys)
    # The rows written before the kill and after it are the same as one uninterrupted run's.
    fresh = tmp_path / "fresh.csv"
    assert cli(*args[:3], "--out", str(fresh), "--top", "2", data_dir=project).returncode == 0
    with fresh.open(newline="") as fh:
        assert sorted(map(tuple, (r.values() for r in csv.DictReader(fh)))) == sorted(tuple(r.values()) for r in table)


class _Photos(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_a_url_list_through_a_loopback_server(tmp_path: Path, model: engine.ScoringModel) -> None:
    paths = catalogue(tmp_path / "www", 2)
    (tmp_path / "www" / "page.jpg").write_text("<html>not a photo</html>")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Photos, directory=str(tmp_path / "www")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        urls = [f"{base}/{p.relative_to(tmp_path / 'www')}" for p in paths]
        listing = tmp_path / "catalogue.csv"
        with listing.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["sku", "url"])
            for i, url in enumerate([*urls, f"{base}/missing.jpg", f"{base}/page.jpg", urls[0]]):
                writer.writerow([f"sku-{i}", url])
        out = tmp_path / "scored.jsonl"
        refused = engine.score_to_file(
            SourceSpec.parse(str(listing)), out, engine.local_runner(model, top=2), top=2
        )  # private addresses are refused unless the operator allows them
        assert refused.errors == Counter({"BadRequestImageUrl": len(urls) + 2})
        out.unlink()
        spec = SourceSpec.parse(str(listing), allow_private=True)
        assert [item.key for item in open_source(spec)] == [*urls, f"{base}/missing.jpg", f"{base}/page.jpg"]
        engine.score_to_file(spec, out, engine.local_runner(model, top=2), top=2)
    finally:
        server.shutdown()
    rows = {r.image: r for r in read_jsonl(out)}
    assert rows[f"{base}/missing.jpg"].error_code == "BadRequestImageUrl"
    assert "404" in rows[f"{base}/missing.jpg"].error
    assert rows[f"{base}/page.jpg"].error_code == "ErrorImageFormat"
    want = direct(model, paths)
    for url, path in zip(urls, paths, strict=True):
        check_row(rows[url], want[str(path)], model.labels, 2)


def test_a_list_file_of_paths_and_the_csv_and_parquet_outputs(tmp_path: Path, model: engine.ScoringModel) -> None:
    paths = catalogue(tmp_path / "photos", 2)
    listing = tmp_path / "list.txt"
    relative = [str(p.relative_to(tmp_path)) for p in paths]
    listing.write_text("# product photos\n\n" + "\n".join([*relative, "photos/gone.jpg"]) + "\n")
    spec = SourceSpec.parse(str(listing))
    want = direct(model, paths)
    for suffix in (".csv", ".parquet", ".jsonl"):
        if suffix == ".parquet":
            pytest.importorskip("pyarrow", reason="Parquet output needs pyarrow (tagvision[parquet])")
        out = tmp_path / f"out{suffix}"
        first = engine.score_to_file(spec, out, engine.local_runner(model, top=3, batch_size=3), top=3)
        assert (first.scored, first.errors) == (len(paths), Counter({"ErrorSource": 1}))
        table = _table(out)
        assert [row["image"] for row in table] == [*map(str, paths), str(tmp_path / "photos" / "gone.jpg")]
        for row in table[:-1]:
            scores = want[row["image"]]
            order = np.argsort(-scores, kind="stable")[:3]
            assert [row[f"tag_{i + 1}"] for i in range(3)] == [model.labels[j] for j in order]
            assert np.allclose([float(row[f"probability_{i + 1}"]) for i in range(3)], scores[order], atol=1e-5)
        assert table[-1]["error_code"] == "ErrorSource" and not table[-1]["tag_1"]
        again = engine.score_to_file(spec, out, engine.local_runner(model, top=3), top=3)
        assert again.skipped == len(table) and _table(out) == table
    assert not (tmp_path / "out.parquet.parts").exists()


def _table(path: Path) -> list[dict[str, str]]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return [{k: "" if v is None else str(v) for k, v in row.items()} for row in pq.read_table(path).to_pylist()]
    if path.suffix == ".jsonl":
        flat = [r.flat(3, False) for r in read_jsonl(path)]
        names = results.columns(3, False)
        return [{k: "" if v is None else str(v) for k, v in zip(names, row, strict=True)} for row in flat]
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_a_torn_last_line_is_cut_and_a_foreign_file_refused(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    writer = results.open_results(out, 1)
    writer.write([results.Row("a.jpg", (results.Prediction("hat", 0.9),)), results.Row("b.jpg", error_code="X")])
    writer.close()
    with out.open("ab") as fh:
        fh.write(b'{"image": "c.jp')
    assert results.open_results(out, 1).done == {"a.jpg", "b.jpg"}
    assert out.read_text().count("\n") == 2 and out.read_text().endswith("\n")
    other = tmp_path / "other.csv"
    other.write_text("sku,price\n1,2\n")
    with pytest.raises(Exception, match="other columns"):
        results.open_results(other, 3)
    with pytest.raises(Exception, match=".jsonl, .csv or .parquet"):
        results.open_results(tmp_path / "r.xlsx", 3)


def test_the_cli_scores_with_the_published_model_and_int8_on_request(tmp_path: Path, project: Path) -> None:
    paths = catalogue(tmp_path / "photos", 2)
    fp32, int8 = tmp_path / "fp32.jsonl", tmp_path / "int8.jsonl"
    ran = cli("score", "shop", str(tmp_path / "photos"), "--out", str(fp32), data_dir=project)
    assert ran.returncode == 0, ran.stderr
    assert "Iteration 1 (Float32)" in ran.stderr and f"Scored {len(paths)} images, 0 refused" in ran.stdout
    ran = cli("score", "shop", str(tmp_path / "photos"), "--out", str(int8), "--precision", "int8", data_dir=project)
    assert ran.returncode == 0, ran.stderr
    assert "(Int8)" in ran.stderr
    top1 = [(r.image, r.predictions[0].tag_name) for r in read_jsonl(fp32)]
    assert [(r.image, r.predictions[0].tag_name) for r in read_jsonl(int8)] == top1
    bad = cli("score", "shop", str(tmp_path / "nowhere"), "--out", str(fp32), data_dir=project)
    assert bad.returncode == 1 and "BadRequestPathNotFound" in bad.stderr
    bad = cli("score", "shop", str(tmp_path / "photos"), "--out", str(tmp_path / "x.xlsx"), data_dir=project)
    assert bad.returncode == 1 and "BadRequestInvalid" in bad.stderr


def test_an_unpublished_project_names_what_to_do(tmp_path: Path, project: Path) -> None:
    svc = Service.open(Settings.load(project))
    try:
        with svc.ctx.db.session() as session:
            iteration = session.query(Iteration).one()
            name = iteration.name
        svc.training.unpublish("shop", name)
        with pytest.raises(Exception, match="no published iteration") as caught:
            svc.scorings.model("shop")
        assert caught.value.code == "NotFoundIteration"
        assert svc.scorings.model("shop", name).iteration_name == name
    finally:
        svc.training.publish("shop", name, "shop-v1")
        svc.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_s3_prefix_through_a_moto_server(tmp_path: Path, model: engine.ScoringModel, monkeypatch) -> None:
    boto3 = pytest.importorskip("boto3", reason="s3:// needs boto3 (tagvision[s3])")
    moto_server = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    if moto_server is None:
        pytest.skip("moto[server] is not installed: no S3 stand-in to test against")
    port = _free_port()
    process = subprocess.Popen(
        [moto_server, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        for name, value in {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            monkeypatch.setenv(name, value)
        client = boto3.client("s3")
        deadline = time.monotonic() + 600
        while True:
            try:
                client.create_bucket(Bucket="catalogue")
                break
            except Exception:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.2)
        paths = catalogue(tmp_path / "photos", 1)
        for path in paths:
            client.put_object(Bucket="catalogue", Key=f"spring/{path.parent.name}/{path.name}", Body=path.read_bytes())
        client.put_object(Bucket="catalogue", Key="spring/broken.jpg", Body=b"nope")
        client.put_object(Bucket="catalogue", Key="autumn/other.jpg", Body=paths[0].read_bytes())
        out = tmp_path / "s3.jsonl"
        engine.score_to_file(SourceSpec.parse("s3://catalogue/spring/"), out, engine.local_runner(model, top=1), top=1)
    finally:
        process.terminate()
        process.wait(60)
    rows = {r.image: r for r in read_jsonl(out)}
    assert rows.pop("s3://catalogue/spring/broken.jpg").error_code == "ErrorImageFormat"
    want = direct(model, paths)
    assert sorted(rows) == sorted(f"s3://catalogue/spring/{p.parent.name}/{p.name}" for p in paths)
    for path in paths:
        check_row(rows[f"s3://catalogue/spring/{path.parent.name}/{path.name}"], want[str(path)], model.labels, 1)


def test_rows_carry_tag_information_when_the_tags_have_some(tmp_path: Path, project: Path) -> None:
    """The extension point for tag information (issue 16): the scorer writes what the model's tags carry."""
    svc = Service.open(Settings.load(project))
    try:
        onnx_model = svc.scorings.model("shop").onnx
    finally:
        svc.close()
    information = {"hat": {"brand": "Acme", "sizes": ["S", "M"]}}
    model = engine.ScoringModel(onnx_model, information=information)
    paths = catalogue(tmp_path / "photos", 1)
    spec = SourceSpec.parse(str(tmp_path / "photos"))
    for suffix in (".jsonl", ".csv"):
        out = tmp_path / f"info{suffix}"
        engine.score_to_file(spec, out, engine.local_runner(model, top=4), top=4, with_information=True)
        if suffix == ".jsonl":
            for row in read_jsonl(out):
                got = {p.tag_name: p.information for p in row.predictions}
                assert got == {"hat": information["hat"], "dress": None, "shoes": None, "pants": None}
        else:
            with out.open(newline="") as fh:
                table = list(csv.DictReader(fh))
            assert len(table) == len(paths)
            for row in table:
                cells = {row[f"tag_{i}"]: row[f"information_{i}"] for i in range(1, 5)}
                assert json.loads(cells["hat"]) == information["hat"] and cells["dress"] == ""


def test_a_gpu_actor_without_cuda_scores_on_the_cpu(model: engine.ScoringModel, project: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: the fallback is for nodes without it")
    assert engine.providers_for("gpu") == engine.providers_for("auto") == ["CPUExecutionProvider"]
    svc = Service.open(Settings.load(project))
    try:
        on_gpu = engine.ScoringModel(svc.scorings.model("shop").onnx, device="gpu")
    finally:
        svc.close()
    assert on_gpu.providers == ["CPUExecutionProvider"] and on_gpu.labels == model.labels
    with pytest.raises(ValueError):
        engine.providers_for("tpu")

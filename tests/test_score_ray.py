"""`tagvision score --ray`: the same job on a real local Ray cluster of two nodes equals the local run.

The cluster is started with ``ray start --head`` and a second ``ray start --address`` (one CPU and a temp
dir each) and ended afterwards; the test checks that none of its processes is left.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CLOTHING, MODELS, REPO, photos
from tests.ray_cluster import RAY_BIN, LocalRayCluster
from tests.test_score import TAGS, project  # noqa: F401 (the module's trained, published project)

pytestmark = pytest.mark.slow


def test_ray_results_equal_the_local_run_image_by_image(tmp_path: Path, project: Path) -> None:  # noqa: F811
    pytest.importorskip("ray.data", reason="Ray is not installed (pip install 'tagvision[ray]')")
    if not RAY_BIN.exists():
        pytest.skip(f"no ray command beside {sys.executable}")
    folder = tmp_path / "catalogue"
    for tag in TAGS:
        (folder / tag).mkdir(parents=True)
        for path in photos(CLOTHING, "validation", tag, 6):
            shutil.copy(path, folder / tag / path.name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    env = {**os.environ, "TAGVISION_MODELS_DIR": str(MODELS), "PYTHONPATH": str(REPO)}

    def score(out: Path, *extra: str) -> str:
        args = ["score", "shop", str(folder), "--out", str(out), "--batch-size", "4", *extra]
        ran = subprocess.run(
            [sys.executable, "-m", "tagvision.cli", *args, "--data-dir", str(project)],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=REPO,
            env=env,
        )
        assert ran.returncode == 0, ran.stderr[-3000:]
        return ran.stdout

    score(tmp_path / "local.jsonl")
    cluster = LocalRayCluster(nodes=2, cpus=1, env={"PYTHONPATH": str(REPO)})
    with cluster:
        assert cluster.pids()
        said = score(tmp_path / "ray.jsonl", "--ray", cluster.address)
        import ray

        assert not ray.is_initialized()  # the driver was the CLI process, not this one
        status = subprocess.run(
            [str(RAY_BIN), "status", "--address", cluster.address], capture_output=True, text=True, timeout=600
        )
        assert status.stdout.count("node_") >= 2, status.stdout  # two nodes took part
    assert not cluster.pids(), "the cluster's processes are gone"
    assert "Scored 24 images, 1 refused (ErrorImageFormat 1)" in said
    local = (tmp_path / "local.jsonl").read_text().splitlines()
    assert (tmp_path / "ray.jsonl").read_text().splitlines() == local and len(local) == 25

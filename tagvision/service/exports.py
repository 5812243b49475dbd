"""Use cases for exporting iterations as model files that run without tagvision (ONNX)."""

from __future__ import annotations

import builtins
import io
import threading
import zipfile
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select

from tagvision import backbone, export
from tagvision.errors import InvalidInput, NotFound, TrainingError
from tagvision.learn import LinearHead
from tagvision.service.context import Context, get_iteration, get_project
from tagvision.service.details import IterationDetails
from tagvision.service.views import ExportView
from tagvision.store.models import Export, Image, Iteration, utcnow

PLATFORMS = ("ONNX",)
INT8 = "Int8"  # tagvision's flavor: the int8-quantised model
ONNX_FLAVORS = (None, "ONNX10", "ONNX12", INT8)
CALIBRATION_IMAGES = 64


@dataclass(frozen=True)
class ExportedModel:
    onnx: bytes
    labels: list[str]
    name: str  # project-iteration, for file names


class Exports:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._int8_lock = threading.Lock()

    def start(self, ref: str, iteration_ref: str, platform: str, flavor: str | None = None) -> ExportView:
        """Queue an export of a completed iteration (status Exporting); an existing one is returned as is."""
        if platform not in PLATFORMS:
            raise InvalidInput(
                f"tagvision exports to {', '.join(PLATFORMS)}; {platform!r} is not available.",
                code="BadRequestProjectUnsupportedExportPlatform",
            )
        if flavor not in ONNX_FLAVORS:
            raise InvalidInput(
                f"Unknown ONNX flavor {flavor!r}; leave it out or use ONNX10, ONNX12 or {INT8}.",
                code="BadRequestExportValidationFailed",
            )
        with self.ctx.db.session() as session:
            iteration = get_iteration(session, get_project(session, ref), iteration_ref)
            if iteration.status != "Completed":
                raise TrainingError(
                    f"{iteration.name} is {iteration.status}; only a completed iteration exports.",
                    code="BadRequestIterationIsNotTrained",
                )
            for row in session.scalars(
                select(Export).where(Export.iteration_id == iteration.id, Export.platform == platform)
            ):
                if row.flavor == flavor and row.status in ("Exporting", "Done"):
                    return _view(row)
                if row.flavor == flavor:  # Failed: try again
                    session.delete(row)
            row = Export(iteration_id=iteration.id, platform=platform, flavor=flavor)
            session.add(row)
            session.flush()
            return _view(row)

    def model(self, ref: str, iteration_ref: str | None = None, *, int8: bool = False) -> ExportedModel:
        """A completed iteration as one ONNX classifier (int8-quantised on request, calibrated on its images)."""
        with self.ctx.db.session() as session:
            project = get_project(session, ref)
            iteration = get_iteration(session, project, iteration_ref)
            if iteration.status != "Completed" or iteration.head_blob is None:
                raise TrainingError(
                    f"{iteration.name} is {iteration.status}; only a completed iteration exports.",
                    code="BadRequestIterationIsNotTrained",
                )
            head_key, domain, iteration_id = iteration.head_blob, iteration.domain, iteration.id
            backbone_key = iteration.backbone_blob
            details = IterationDetails.from_json(iteration.details)
            labels = [name for _, name in details.tags]
            name = f"{project.name}-{iteration.name}".replace(" ", "-")
            # Spread over the whole list (ordered by tag), so every tag's images calibrate the ranges.
            step = max(1, len(details.image_ids) // CALIBRATION_IMAGES)
            calibration_ids = details.image_ids[::step][:CALIBRATION_IMAGES]
            hashes = list(session.scalars(select(Image.sha256).where(Image.id.in_(calibration_ids))))
        spec = self.ctx.spec(domain, backbone_key)
        head = LinearHead.from_bytes(self.ctx.blobs.get(head_key))
        model = export.build_classifier_onnx(
            spec,
            self.ctx.settings.models_dir,
            head,
            labels,
            iteration_id=iteration_id,
            project_name=name,
            backbone_path=self.ctx.blobs.local_path(backbone_key) if backbone_key else None,
        )
        if int8:
            if not hashes:
                raise TrainingError(
                    "The iteration's training images are gone; int8 calibration needs some.",
                    code="BadRequestExportValidationFailed",
                )
            model = export.quantize_int8(
                model, np.stack([backbone.preprocess_bytes(self.ctx.blobs.get(h), spec) for h in hashes])
            )
        return ExportedModel(model, labels, name)

    def int8_model(self, ref: str, iteration_ref: str) -> bytes:
        """The iteration's int8 classifier: its finished Int8 export's model, or quantised now (minutes on a small
        machine) and kept as that export, so serving, scoring and downloads quantise an iteration once."""
        with self._int8_lock:
            view = self.start(ref, iteration_ref, "ONNX", INT8)
            if view.status != "Done":
                view = self.run(view.id)
            if view.status != "Done":
                raise TrainingError(f"The int8 model could not be made: {view.error}", code="ErrorExport")
            with self.ctx.db.session() as session:
                row = session.get(Export, view.id)
                if row is None or row.blob is None:  # deleted since it was made
                    raise NotFound("This export does not exist or is not finished.", code="NotFound")
                key = row.blob
            with zipfile.ZipFile(io.BytesIO(self.ctx.blobs.get(key))) as bundle:
                return bundle.read("model.onnx")

    def run(self, export_id: str) -> ExportView:
        """Build the file of a queued export: Done with its blob, or Failed with the reason."""
        try:
            with self.ctx.db.session() as session:
                row = session.get(Export, export_id)
                if row is None:
                    raise NotFound(f"No export {export_id!r}.", code="NotFound")
                iteration = session.get(Iteration, row.iteration_id)
                assert iteration is not None
                project_id, iteration_id, int8 = iteration.project_id, iteration.id, row.flavor == INT8
            model = self.model(project_id, iteration_id, int8=int8)
            bundle = io.BytesIO()
            export.write_bundle(model.onnx, model.labels, bundle)
            key = self.ctx.blobs.put(bundle.getvalue())
            status, error = "Done", None
        except Exception as exc:  # recorded on the export; the job runner logs it
            key, status, error = None, "Failed", f"{type(exc).__name__}: {exc}"
        with self.ctx.db.session() as session:
            row = session.get(Export, export_id)
            if row is None:
                raise NotFound(f"No export {export_id!r}.", code="NotFound")
            row.blob, row.status, row.error, row.last_modified = key, status, error, utcnow()
            return _view(row)

    def list(self, ref: str, iteration_ref: str) -> list[ExportView]:
        with self.ctx.db.session() as session:
            iteration = get_iteration(session, get_project(session, ref), iteration_ref)
            return [
                _view(r)
                for r in session.scalars(
                    select(Export).where(Export.iteration_id == iteration.id).order_by(Export.created)
                )
            ]

    def file(self, export_id: str) -> tuple[str, bytes]:
        """(file name, bytes) of a finished export."""
        with self.ctx.db.session() as session:
            row = session.get(Export, export_id)
            if row is None or row.blob is None:
                raise NotFound("This export does not exist or is not finished.", code="NotFound")
            iteration = session.get(Iteration, row.iteration_id)
            assert iteration is not None
            name = f"{iteration.project.name}-{iteration.name}-{row.platform}.zip".replace(" ", "-")
            key = row.blob
        return name, self.ctx.blobs.get(key)

    def interrupted(self) -> builtins.list[str]:
        """Exports left ``Exporting`` by a stopped process."""
        with self.ctx.db.session() as session:
            return list(session.scalars(select(Export.id).where(Export.status == "Exporting")))


def _view(row: Export) -> ExportView:
    return ExportView(row.id, row.iteration_id, row.platform, row.flavor, row.status, row.error)

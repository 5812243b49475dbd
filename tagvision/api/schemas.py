"""Wire models of the Custom Vision REST API (camelCase, as the v3.4-preview spec names them).

Request bodies are validated with these; responses are declared with them so the OpenAPI
page documents every route. Response models allow extra fields: tagvision adds a few
(``contentType``, ``source``, ``trainingTimeInSeconds``...) that Custom Vision clients ignore.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Wire(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


# --------------------------------------------------------------------------- errors and keys


class CustomVisionError(BaseModel):
    code: str = Field(description="A stable, machine-readable code (Custom Vision's CustomVisionErrorCodes).")
    message: str = Field(description="What went wrong, for people.")


class KeysInfo(BaseModel):
    endpoint: str
    trainingKey: str
    predictionKey: str


# --------------------------------------------------------------------------- responses


class ModelInformation(Wire):
    description: str
    estimatedModelSizeInMegabytes: int | None = None


class Domain(Wire):
    id: str
    name: str
    type: str
    exportable: bool
    enabled: bool
    exportablePlatforms: list[str] = []
    modelInformation: ModelInformation | None = None


class ProjectSettings(Wire):
    domainId: str | None = None
    classificationType: str | None = None
    targetExportPlatforms: list[str] | None = None
    useNegativeSet: bool | None = None
    detectionParameters: str | None = None
    imageProcessingSettings: dict[str, Any] | None = None
    exportModelContainerUri: str | None = None
    notificationQueueUri: str | None = None


class Project(Wire):
    id: str
    name: str
    description: str
    settings: ProjectSettings
    created: str
    lastModified: str
    thumbnailUri: str | None = None
    drModeEnabled: bool = False
    status: str = "Succeeded"


class ProjectExport(Wire):
    iterationCount: int
    imageCount: int
    tagCount: int
    regionCount: int
    estimatedImportTimeInMS: int
    token: str


class Tag(Wire):
    id: str
    name: str
    description: str
    type: str
    imageCount: int
    information: dict[str, Any] = Field(
        default_factory=dict,
        description="tagvision: what the tag knows, a JSON object (Custom Vision clients ignore it).",
    )


class ImageTag(Wire):
    tagId: str
    tagName: str
    created: str | None = None


class Image(Wire):
    id: str
    created: str
    width: int
    height: int
    resizedImageUri: str | None = None
    thumbnailUri: str | None = None
    originalImageUri: str | None = None
    tags: list[ImageTag] | None = None
    regions: list[dict[str, Any]] | None = None
    metadata: dict[str, str] | None = None


class ImageCreateResult(Wire):
    sourceUrl: str | None = None
    status: str
    image: Image | None = None


class ImageCreateSummary(Wire):
    isBatchSuccessful: bool
    images: list[ImageCreateResult]


class ImageTagCreateEntry(BaseModel):
    imageId: str
    tagId: str


class ImageTagCreateSummary(Wire):
    created: list[ImageTagCreateEntry] | None = None
    duplicated: list[ImageTagCreateEntry] | None = None
    exceeded: list[ImageTagCreateEntry] | None = None


class ImageMetadataUpdateEntry(Wire):
    imageId: str
    status: str
    metadata: dict[str, str] | None = None


class ImageMetadataUpdateSummary(Wire):
    isBatchSuccessful: bool
    images: list[ImageMetadataUpdateEntry]


class Iteration(Wire):
    id: str
    name: str
    status: str
    created: str
    lastModified: str
    trainedAt: str | None = None
    projectId: str
    exportable: bool
    exportableTo: list[str]
    domainId: str
    classificationType: str
    trainingType: str
    reservedBudgetInHours: int
    trainingTimeInMinutes: int
    publishName: str
    originalPublishResourceId: str
    customBaseModelInfo: dict[str, Any] | None = None
    trainingErrorDetails: str | None = None


class TagPerformance(Wire):
    id: str
    name: str
    precision: float
    precisionStdDeviation: float
    recall: float
    recallStdDeviation: float
    averagePrecision: float | None = None


class IterationPerformance(Wire):
    perTagPerformance: list[TagPerformance]
    precision: float
    precisionStdDeviation: float
    recall: float
    recallStdDeviation: float
    averagePrecision: float | None = None


class Prediction(Wire):
    probability: float
    tagId: str
    tagName: str
    boundingBox: dict[str, float] | None = None
    tagType: str = "Regular"
    # tagvision adds "information" (the tag's information, when returned) as an extra field: left undeclared so
    # a response without it is byte for byte what Custom Vision sends.


class ImagePerformance(Wire):
    id: str
    created: str
    width: int
    height: int
    imageUri: str | None = None
    thumbnailUri: str | None = None
    tags: list[ImageTag]
    regions: list[dict[str, Any]] = []
    predictions: list[Prediction]


class ImagePrediction(Wire):
    id: str
    project: str
    iteration: str | None
    created: str
    predictions: list[Prediction]
    # tagvision adds, when there are any, "decision" (the project's decision rules evaluated on it, with their
    # inputs) and "metadata" (the caller's, kept with it) as extra fields.


class StoredImagePrediction(ImagePrediction):
    resizedImageUri: str | None = None
    thumbnailUri: str | None = None
    originalImageUri: str | None = None
    domain: str | None = None


class StoredSuggestedTagAndRegion(StoredImagePrediction):
    width: int
    height: int
    predictionUncertainty: float


class Export(Wire):
    platform: str
    status: str
    downloadUri: str | None = None
    flavor: str | None = None
    newerVersionAvailable: bool = False


# --------------------------------------------------------------------------- request bodies (and echoed tokens)


class Region(Body):
    tagId: str
    left: float
    top: float
    width: float
    height: float


class ImageFileCreateEntry(Body):
    name: str | None = None
    contents: str = Field(description="The image, base64-encoded.")
    tagIds: list[str] | None = None
    regions: list[Region] | None = None


class ImageFileCreateBatch(Body):
    images: list[ImageFileCreateEntry] = []
    tagIds: list[str] | None = None
    metadata: dict[str, str] | None = None


class ImageUrlCreateEntry(Body):
    url: str
    tagIds: list[str] | None = None
    regions: list[Region] | None = None


class ImageUrlCreateBatch(Body):
    images: list[ImageUrlCreateEntry] = []
    tagIds: list[str] | None = None
    metadata: dict[str, str] | None = None


class ImageIdCreateEntry(Body):
    id: str = Field(description="A stored prediction's id.")
    tagIds: list[str] | None = None
    regions: list[Region] | None = None


class ImageIdCreateBatch(Body):
    images: list[ImageIdCreateEntry] = []
    tagIds: list[str] | None = None
    metadata: dict[str, str] | None = None


class ImageTagCreateBatch(Body):
    tags: list[ImageTagCreateEntry] = []


class ImageUrl(Body):
    url: str


class ProjectUpdate(Body):
    name: str | None = None
    description: str | None = None
    settings: ProjectSettings | None = None


class TagUpdate(Body):
    name: str | None = None
    description: str | None = None
    type: str | None = None
    information: dict[str, Any] | None = Field(
        None, description="tagvision: replaces the tag's information (a JSON object); left out, it is kept."
    )


class IterationUpdate(Body):
    name: str | None = None
    precision: str | None = None  # tagvision: Float32 or Int8, how predictions and scorings run the iteration


class TrainingParameters(Body):
    selectedTags: list[str] | None = None
    customBaseModelInfo: dict[str, Any] | None = None


class PredictionQueryTag(Wire):
    id: str
    minThreshold: float = 0.0
    maxThreshold: float = 1.0


class PredictionQueryToken(Wire):
    session: str | None = None
    continuation: str | None = None
    maxCount: int | None = None
    orderBy: str | None = None
    tags: list[PredictionQueryTag] | None = None
    iterationId: str | None = None
    startTime: datetime | None = None
    endTime: datetime | None = None
    application: str | None = None
    metadata: dict[str, str] | None = Field(
        None, description="tagvision: only predictions stored with all these metadata key/values."
    )


class PredictionQueryResult(Wire):
    token: PredictionQueryToken
    results: list[StoredImagePrediction]


class TagFilter(Body):
    tagIds: list[str] | None = None
    threshold: float | None = None


class SuggestedTagAndRegionQueryToken(Wire):
    tagIds: list[str] | None = None
    threshold: float | None = None
    session: str | None = None
    continuation: str | None = None
    maxCount: int | None = None
    sortBy: str | None = None


class SuggestedTagAndRegionQuery(Wire):
    token: SuggestedTagAndRegionQueryToken
    results: list[StoredSuggestedTagAndRegion]


# --------------------------------------------------------------------------- tagvision extensions


class AcquisitionRequest(Body):
    tags: list[str] = Field(description="Tag names; tags that do not exist yet are created.")
    perTag: int = Field(50, description="Images wanted per tag (1 to 1000).")
    providers: list[str] = Field(
        ["openverse"],
        description="openverse, wikimedia, pexels, unsplash, pixabay, bing, library (tried in this order per tag).",
    )
    library: str | None = Field(
        None, description="For the library provider: a folder under one of the operator's TAGVISION_LIBRARY_ROOTS."
    )
    review: bool = Field(False, description="Keep candidates pending until committed (to deselect bad ones).")
    minSide: int | None = Field(
        None,
        description="Refuse images whose shorter side is under this many pixels (default: none, as uploads; "
        "smaller than the model's input only gets a warning). Changing it looks at earlier size refusals again.",
    )
    pageSize: int | None = Field(
        None, description="Review mode: candidates per tag on one page (default 20); POST .../more for the next."
    )
    retryRefused: bool = Field(False, description="Look again at the candidates earlier acquisitions refused.")


class AcquisitionCommit(Body):
    itemIds: list[str]


class AcquisitionTag(Wire):
    tagId: str
    tag: str
    wanted: int
    found: int
    downloaded: int
    added: int
    duplicates: int
    refused: int
    done: bool
    doubtful: int = Field(0, description="Set aside for review: they did not look like the tag.")
    small: int = Field(0, description="Kept, though smaller than the model's input (scaled up).")
    reasons: dict[str, int] = Field({}, description="Refused candidates by reason code (TooSmall, NotAnImage, ...).")
    goal: int | None = Field(None, description="What this run (in review mode: this page) fills the tag up to.")


class Acquisition(Wire):
    id: str
    projectId: str
    status: str = Field(description="Running, Completed, Cancelled or Failed")
    review: bool
    providers: list[str]
    perTag: int | None
    tags: list[AcquisitionTag]
    error: str | None = None
    created: str
    lastModified: str
    items: list[dict[str, Any]] = []


class Rules(Body):
    rules: list[Any] = Field(
        description='Decision rules, e.g. {"rule": "most-probable-above", "threshold": 0.5, "attribute": '
        '"premiumFactor"}; kinds: most-probable-above, probability-weighted, max-above.'
    )


class RulesView(Wire):
    rules: list[dict[str, Any]]


class Retention(Body):
    retention: str | int = Field(
        description="Days to keep stored predictions, 'never' (not stored), 'forever', or 'default' (the server's)."
    )


class RetentionView(Wire):
    project: str | int
    server: str | int
    effective: str | int
    purged: int | None = None


class CatalogueRowError(Wire):
    line: int
    tag: str | None = None
    field: str | None = None
    code: str
    message: str


class CatalogueReport(Wire):
    dryRun: bool
    created: int
    updated: int
    unchanged: int
    failed: int
    imagesAdded: int
    rows: list[dict[str, Any]]
    errors: list[CatalogueRowError]

"""Custom Vision's domains and the backbone that serves each.

Projects name their domain by Custom Vision's GUID, so clients that pass a ``domainId``
get it back unchanged. Every classification domain maps onto one of our two backbones:
the "(compact)" domains onto EfficientNet-Lite0 (``general-compact``), the others onto
Lite2 (``general``). Both export to ONNX, so every classification domain is exportable
(Custom Vision exported only the compact ones). Object-detection domains are listed, as
Custom Vision lists them, but projects cannot use them.

GUIDs and names: Microsoft's "select a domain" page and the REST spec examples
(``docs/custom-vision-api.md`` section 4).
"""

from __future__ import annotations

from dataclasses import dataclass

from tagvision.errors import InvalidInput, NotFound

CLASSIFICATION = "Classification"
OBJECT_DETECTION = "ObjectDetection"
EXPORT_PLATFORMS = ("ONNX",)


@dataclass(frozen=True)
class Domain:
    id: str
    name: str
    type: str
    backbone: str | None  # a key of backbone.BACKBONES; None: not supported here

    @property
    def exportable(self) -> bool:
        return self.backbone is not None

    def to_json(self) -> dict:
        info = {
            "description": f"{self.name}: EfficientNet-Lite{'0' if self.backbone == 'general-compact' else '2'}"
            " features with a linear head"
            if self.backbone
            else f"{self.name}: not supported",
            "estimatedModelSizeInMegabytes": 14 if self.backbone == "general-compact" else 25,
        }
        return {
            "id": self.id,
            "name": self.name,
            "type": self.type,
            "exportable": self.exportable,
            "enabled": self.backbone is not None,
            "exportablePlatforms": list(EXPORT_PLATFORMS) if self.exportable else [],
            "modelInformation": info if self.backbone else None,
        }


DOMAINS: tuple[Domain, ...] = (
    Domain("2e37d7fb-3a54-486a-b4d6-cfc369af0018", "General [A2]", CLASSIFICATION, "general"),
    Domain("a8e3c40f-fb4a-466f-832a-5e457ae4a344", "General [A1]", CLASSIFICATION, "general"),
    Domain("ee85a74c-405e-4adc-bb47-ffa8ca0c9f31", "General", CLASSIFICATION, "general"),
    Domain("c151d5b5-dd07-472a-acc8-15d29dea8518", "Food", CLASSIFICATION, "general"),
    Domain("ca455789-012d-4b50-9fec-5bb63841c793", "Landmarks", CLASSIFICATION, "general"),
    Domain("b30a91ae-e3c1-4f73-a81e-c270bff27c39", "Retail", CLASSIFICATION, "general"),
    Domain("45badf75-3591-4f26-a705-45678d3e9f5f", "Adult", CLASSIFICATION, "general"),
    Domain("a1db07ca-a19a-4830-bae8-e004a42dc863", "General (compact) [S1]", CLASSIFICATION, "general-compact"),
    Domain("0732100f-1a38-4e49-a514-c9b44c697ab5", "General (compact)", CLASSIFICATION, "general-compact"),
    Domain("8882951b-82cd-4c32-970b-d5f8cb8bf6d7", "Food (compact)", CLASSIFICATION, "general-compact"),
    Domain("b5cfd229-2ac7-4b2b-8d0a-2b0661344894", "Landmarks (compact)", CLASSIFICATION, "general-compact"),
    Domain("6b4faeda-8396-481b-9f8b-177b9fa3097f", "Retail (compact)", CLASSIFICATION, "general-compact"),
    Domain("9c616dff-2e7d-ea11-af59-1866da359ce6", "General [A1]", OBJECT_DETECTION, None),
    Domain("da2e3a8a-40a5-4171-82f4-58522f70fbc1", "General", OBJECT_DETECTION, None),
    Domain("1d8ffafe-ec40-4fb2-8f90-72b3b6cecea4", "Logo", OBJECT_DETECTION, None),
    Domain("3780a898-81c3-4516-81ae-3a139614e1f3", "Products on Shelves", OBJECT_DETECTION, None),
    Domain("7ec2ac80-887b-48a6-8df9-8b1357765430", "General (compact) [S1]", OBJECT_DETECTION, None),
    Domain("a27d5ca5-bb19-49d8-a70a-fec086c47f5b", "General (compact)", OBJECT_DETECTION, None),
)
GENERAL = "ee85a74c-405e-4adc-bb47-ffa8ca0c9f31"
GENERAL_COMPACT = "0732100f-1a38-4e49-a514-c9b44c697ab5"
# The CLI's short names (and what older stores recorded) for the two backbones.
ALIASES = {"general": GENERAL, "general-compact": GENERAL_COMPACT}


def get(domain_id: str) -> Domain:
    """A domain by its GUID (for ``GET /domains/{id}``)."""
    for domain in DOMAINS:
        if domain.id == domain_id.lower():
            return domain
    raise NotFound(f"No domain with id {domain_id!r}.", code="NotFoundDomain")


def resolve(value: str) -> Domain:
    """A classification domain usable by a project, from a GUID, a short name or a domain name."""
    key = value.strip().lower()
    key = ALIASES.get(key, key)
    matches = [d for d in DOMAINS if d.id == key or d.name.lower() == key]
    usable = [d for d in matches if d.backbone is not None]
    if usable:
        return usable[0]
    if matches:
        raise InvalidInput(
            f"{matches[0].name} is an object-detection domain; tagvision trains classifiers only.",
            code="BadRequestNotSupported",
        )
    names = ", ".join(sorted(ALIASES))
    raise InvalidInput(
        f"Unknown domain {value!r}; use a classification domain id from GET /domains or one of: {names}.",
        code="BadRequestProjectUnknownDomain",
    )


def backbone_for(value: str) -> str:
    """The backbone key (``general`` or ``general-compact``) serving a project's domain."""
    backbone = resolve(value).backbone
    assert backbone is not None
    return backbone

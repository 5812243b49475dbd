"""Why a candidate was not added: stable codes, each with a short phrase for counts.

Every candidate an acquisition refuses, sets aside or the user rejects keeps one of these codes
with a sentence naming its facts ("120x90 is smaller than 224 px on a side", "the same picture
as image 3f2c..."). Interfaces count them by code and show the sentence; nothing parses the
sentence. :data:`SETTING_CAUSED` names the refusals a setting caused: a later acquisition with
another setting looks at them again by itself (``--retry-refused`` looks at the others again).
"""

from __future__ import annotations

TOO_SMALL = "TooSmall"  # the shorter side is under the acquisition's minSide (a setting)
TOO_LARGE = "TooLarge"  # over the byte, side or pixel limits uploads have
UNDECODABLE = "Undecodable"  # says it is an image but cannot be decoded (truncated, corrupt)
NOT_AN_IMAGE = "NotAnImage"  # not a JPEG, PNG, BMP, GIF or WebP file (an HTML page, an SVG drawing, empty)
DUPLICATE = "Duplicate"  # the same picture (or nearly) as an image of the project or an earlier candidate
PROVIDER_ERROR = "ProviderError"  # the download failed: a broken link, a server error, a time-out, an unreadable file
REJECTED = "Rejected"  # the user did not keep it when reviewing
DOUBTFUL = "Doubtful"  # set aside for review: it does not look like its tag

PHRASES = {
    TOO_SMALL: "too small",
    TOO_LARGE: "too large",
    UNDECODABLE: "undecodable",
    NOT_AN_IMAGE: "not an image",
    DUPLICATE: "duplicate",
    PROVIDER_ERROR: "download failed",
    REJECTED: "rejected by you",
    DOUBTFUL: "doubtful look",
}
SETTING_CAUSED = frozenset({TOO_SMALL})

# A warning, not a refusal: the image is kept, and the backbone scales it up to its input size.
SMALLER_THAN_MODEL = "SmallerThanModelInput"


def phrase(code: str | None) -> str:
    """The short phrase for a reason code ("too small"), or the code itself when unknown."""
    return PHRASES.get(code or "", code or "")


def counted(counts: dict[str, int]) -> str:
    """ "2 too small, 1 not an image": counts by reason, largest first."""
    return ", ".join(f"{n} {phrase(code)}" for code, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n)

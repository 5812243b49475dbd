"""Image sources: search providers and the local library behind one interface (see ``base``).

``make(name, settings)`` builds a provider from its keys and endpoints (``ProviderSettings``,
read from ``TAGVISION_*`` by ``tagvision.config``); ``NAMES`` lists them.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from tagvision.backbone import Embedder
from tagvision.errors import InvalidInput
from tagvision.sources.base import Candidate, Provider, ProviderError, ProviderUnavailable
from tagvision.sources.look import Look

if TYPE_CHECKING:
    from tagvision.config import ProviderSettings

# name -> (module, class); imported when used, so one provider's dependencies never burden another.
_CLASSES = {
    "openverse": ("tagvision.sources.openverse", "OpenverseProvider"),
    "wikimedia": ("tagvision.sources.wikimedia", "WikimediaProvider"),
    "pexels": ("tagvision.sources.pexels", "PexelsProvider"),
    "unsplash": ("tagvision.sources.unsplash", "UnsplashProvider"),
    "pixabay": ("tagvision.sources.pixabay", "PixabayProvider"),
    "bing": ("tagvision.sources.bing", "BingProvider"),
    "library": ("tagvision.sources.library", "LibraryProvider"),
}
NAMES = tuple(_CLASSES)


def make(
    name: str,
    settings: ProviderSettings,
    *,
    library: Path | None = None,
    look: Look | None = None,
    embedder: Embedder | None = None,
    cache_dir: Path | None = None,
) -> Provider:
    """The provider called ``name``, configured from ``settings`` (the library from its arguments)."""
    if name not in _CLASSES:
        raise InvalidInput(f"Unknown provider {name!r}; choose from {', '.join(NAMES)}.", code="BadRequestInvalid")
    module, cls = _CLASSES[name]
    provider_class = getattr(importlib.import_module(module), cls)
    if name == "library":
        if library is None:
            raise InvalidInput("The library provider needs a folder (--library DIR).", code="BadRequestInvalid")
        return provider_class(library, look=look, embedder=embedder, cache_dir=cache_dir)
    return provider_class.from_settings(settings)


__all__ = ["NAMES", "Candidate", "Provider", "ProviderError", "ProviderUnavailable", "make"]

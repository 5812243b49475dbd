"""The local library provider on real clothing photos: names, embedded keywords, ranking, more like these."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import struct
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tagvision import backbone
from tagvision.sources.base import ProviderError
from tagvision.sources.library import LibraryProvider
from tagvision.sources.look import Centroid
from tests.conftest import CLOTHING, MODELS, photos

XMP = (
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    '<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:subject><rdf:Bag>{}</rdf:Bag>'
    "</dc:subject></rdf:Description></rdf:RDF></x:xmpmeta>"
)
ANON = {"hat": 8, "dress": 8, "shoes": 8, "pants": 8}  # per class, photos 12.. of train, named by hash


def with_iptc(jpeg: bytes, keywords: list[str]) -> bytes:
    """``jpeg`` with an APP13 Photoshop segment holding IPTC 2:25 keywords, right after SOI."""
    data = b"".join(b"\x1c\x02\x19" + struct.pack(">H", len(k.encode())) + k.encode() for k in keywords)
    irb = b"8BIM\x04\x04\0\0" + struct.pack(">I", len(data)) + data + b"\0" * (len(data) % 2)
    body = b"Photoshop 3.0\0" + irb
    return jpeg[:2] + b"\xff\xed" + struct.pack(">H", len(body) + 2) + body + jpeg[2:]


def save_with(
    source: Path,
    target: Path,
    *,
    xp: str | None = None,
    description: str | None = None,
    xmp: list[str] | None = None,
    iptc: list[str] | None = None,
) -> None:
    exif = Image.Exif()
    if xp is not None:
        exif[0x9C9E] = xp.encode("utf-16-le") + b"\0\0"
    if description is not None:
        exif[0x010E] = description
    out = io.BytesIO()
    extra = {"xmp": XMP.format("".join(f"<rdf:li>{k}</rdf:li>" for k in xmp)).encode()} if xmp else {}
    with Image.open(source) as im:
        im.save(out, "JPEG", exif=exif, **extra)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(with_iptc(out.getvalue(), iptc) if iptc else out.getvalue())


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A library under nested folders, keyword files, anonymised files and traps; (root, hashed name -> class)."""
    base = tmp_path_factory.mktemp("library")
    root = base / "photos"
    for folder, tag in (
        ("catalog/2024/Hats", "hat"),
        ("catalog/2024/Dresses", "dress"),
        ("catalog/T-Shirts", "t-shirt"),
        ("catalog/Shirt", "shirt"),
        ("Long Sleeve", "longsleeve"),
    ):
        (root / folder).mkdir(parents=True)
        for path in photos(CLOTHING, "train", tag, 3):
            shutil.copy(path, root / folder / path.name)
    with Image.open(photos(CLOTHING, "train", "longsleeve", 1, skip=3)[0]) as im:
        im.save(root / "Long Sleeve/Scan.PNG")  # suffixes in any case, not only JPEG
    shoe, dress, hat, pants = (photos(CLOTHING, "train", t, 1, skip=11)[0] for t in ("shoes", "dress", "hat", "pants"))
    save_with(shoe, root / "_inbox/a1.jpg", xp="Summer;Shoes")
    save_with(dress, root / "_inbox/a2.jpg", description="A red dress on a hanger")
    save_with(hat, root / "_inbox/a3.jpg", xmp=["Hats", "wool"])
    save_with(pants, root / "_inbox/a4.jpg", iptc=["jeans", "long sleeves"])
    shutil.copy(hat, root / "_inbox/0-hat-photo.jpg")
    anon = {}
    (root / "anon").mkdir()
    for tag, count in ANON.items():
        for path in photos(CLOTHING, "train", tag, count, skip=12):
            name = hashlib.sha256(path.read_bytes()).hexdigest()[:16] + ".jpg"
            shutil.copy(path, root / "anon" / name)
            anon[f"anon/{name}"] = tag
    (root / ".hidden").mkdir()
    shutil.copy(hat, root / ".hidden/hat.jpg")
    shutil.copy(hat, root / "_inbox/.hat.jpg")
    (root / "_inbox/hat-notes.txt").write_text("not an image")
    outside = base / "outside"
    (outside / "hats").mkdir(parents=True)
    shutil.copy(hat, outside / "hats/outside-hat.jpg")
    os.symlink(outside / "hats/outside-hat.jpg", root / "_inbox/linked-hat.jpg")
    os.symlink(outside / "hats", root / "catalog/linked-hats")
    os.symlink(root / "_inbox/0-hat-photo.jpg", root / "_inbox/same-hat.jpg")  # inside: same file, once
    return root, anon


def ids(provider: LibraryProvider, query: str, limit: int = 1000) -> list[str]:
    return [c.provider_id for c in provider.search(query, limit)]


def test_name_matching_plural_case_and_ranking(library: tuple[Path, dict[str, str]]) -> None:
    root, _ = library
    provider = LibraryProvider(root)
    hats = sorted(p.name for p in (root / "catalog/2024/Hats").iterdir())
    # exact folder (Hats) > keyword (XMP "Hats") > file name, whatever the path order; the symlinked twin once.
    keyword_then_name = ["_inbox/a3.jpg", "_inbox/0-hat-photo.jpg"]
    assert ids(provider, "hat") == [f"catalog/2024/Hats/{n}" for n in hats] + keyword_then_name
    assert ids(provider, "HATS") == ids(provider, "hat")
    assert ids(provider, "dresses")[:3] == [
        f"catalog/2024/Dresses/{p.name}" for p in sorted((root / "catalog/2024/Dresses").iterdir())
    ]
    assert ids(provider, "dresses")[3:] == ["_inbox/a2.jpg"]  # EXIF ImageDescription
    assert ids(provider, "2024 Dresses") == ids(provider, "dresses")[:3]  # words spread over the folders
    assert ids(provider, "shoe") == ["_inbox/a1.jpg"]  # EXIF XPKeywords "Shoes"
    assert ids(provider, "jeans") == ["_inbox/a4.jpg"]  # IPTC 2:25


def test_multi_word_and_joined_forms(library: tuple[Path, dict[str, str]]) -> None:
    root, _ = library
    provider = LibraryProvider(root)
    tshirts = [f"catalog/T-Shirts/{p.name}" for p in sorted((root / "catalog/T-Shirts").iterdir())]
    shirts = [f"catalog/Shirt/{p.name}" for p in sorted((root / "catalog/Shirt").iterdir())]
    assert ids(provider, "t-shirt") == ids(provider, "tshirts") == tshirts
    assert ids(provider, "shirt") == shirts  # an exact folder exists: "T-Shirts" only holds the word
    long_sleeve = [f"Long Sleeve/{p.name}" for p in sorted((root / "Long Sleeve").iterdir())]
    assert ids(provider, "longsleeve") == ids(provider, "long sleeves") == long_sleeve + ["_inbox/a4.jpg"]


def test_candidates_limit_and_no_files_outside(library: tuple[Path, dict[str, str]]) -> None:
    root, _ = library
    provider = LibraryProvider(root)
    found = list(provider.search("hat", 2))
    assert len(found) == 2
    first = found[0]
    assert first.provider == "library" and first.key == f"library:{first.provider_id}"
    assert first.path == root.resolve() / first.provider_id and first.url == first.path.as_uri()
    assert first.title == first.path.name and first.licence is None and first.attribution is None
    with Image.open(first.path) as im:
        assert (first.width, first.height) == im.size
    assert list(provider.search("hat", 0)) == []
    assert ids(provider, "hat", 5) == ids(provider, "hat")[:5]
    assert ids(provider, "handbag") == ids(provider, "-") == []


def test_missing_root_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ProviderError) as caught:
        LibraryProvider(tmp_path / "nope")
    assert caught.value.code == "BadRequestLibraryNotFound"
    (tmp_path / "gone").mkdir()
    provider = LibraryProvider(tmp_path / "gone")
    (tmp_path / "gone").rmdir()
    with pytest.raises(ProviderError, match="not a readable folder"):
        list(provider.search("hat", 5))


class Counting:
    """An Embedder that counts the images it is asked to embed."""

    def __init__(self, embedder: backbone.Embedder) -> None:
        self.embedder, self.spec, self.calls = embedder, embedder.spec, 0

    def embed(self, sources: Iterable[Callable[[], bytes]]) -> Iterator[backbone.EmbedResult]:
        sources = list(sources)
        self.calls += len(sources)
        yield from self.embedder.embed(sources)


@pytest.mark.slow
def test_more_like_these_ranks_by_look_and_caches(library: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    root, anon = library
    embedder = Counting(backbone.Embedder(backbone.spec_for("general-compact"), MODELS, threads=2, batch_size=8))
    seeds = np.stack(
        [
            (r.plain + r.flipped) / 2
            for r in embedder.embedder.embed([p.read_bytes for p in photos(CLOTHING, "train", "shoes", 3)])
        ]
    )
    provider = LibraryProvider(root, look=Centroid({"shoes": seeds}), embedder=embedder, cache_dir=tmp_path)
    found = ids(provider, "shoes")
    assert found[0] == "_inbox/a1.jpg"  # the keyword match first, then every other file by look
    files = 5 * 3 + 1 + 5 + len(anon)  # class folders, _inbox/, anon/: no hidden, outside or twin files
    assert len(found) == len(set(found)) == files
    assert not any("linked" in i or "/." in i or i.startswith(".") or "same-hat" in i for i in found)
    assert embedder.calls == files - 1  # all but the keyword match
    looked = [anon[i] for i in found if i in anon][:5]
    assert sum(t == "shoes" for t in looked) >= 3, looked

    assert ids(provider, "shoes") == found and embedder.calls == files - 1  # cached in memory
    again = LibraryProvider(root, look=Centroid({"shoes": seeds}), embedder=embedder, cache_dir=tmp_path)
    assert ids(again, "shoes") == found and embedder.calls == files - 1  # cached on disk
    changed = root / next(iter(anon))
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    assert ids(again, "shoes", 7) == found[:7] and embedder.calls == files  # only the changed file

    again.cache_file.write_bytes(b"damaged")  # type: ignore[union-attr]
    fresh = LibraryProvider(root, look=Centroid({"shoes": seeds}), embedder=embedder, cache_dir=tmp_path)
    assert ids(fresh, "shoes") == found and embedder.calls == 2 * files - 1  # a damaged cache is rebuilt

"""The local image library: a folder tree searched by name, keywords and look, fully offline.

**By name and keywords.** Words are case-folded, split on anything not a letter or digit and
folded to a simple singular (hats -> hat, dresses -> dress, shoes -> shoe). A text matches a
query when it holds all the query's words, or the query's words joined ("long sleeve" ->
"longsleeve"; texts also offer their adjacent words joined, so "longsleeve" finds "Long
Sleeves"). A file's rank is the first that applies, ties in path order:

0. a folder on its path (relative to the root) *is* the query: "Hats/" for "hat";
1. the folder names together hold the query: "t-shirt/" for "shirt", "long/sleeve/" (left out
   when some folder *is* the query: next to "shirt/", "t-shirt/" is another thing);
2. one of its embedded keywords holds it: IPTC 2:25, XMP ``dc:subject``, EXIF ``XPKeywords``
   and ``ImageDescription``;
3. its file name (with its folders) holds it.

**By look.** Given a ``look`` (:mod:`tagvision.sources.look`: a classifier fitted on the
project's tagged images, or centroids where it has images of one tag only) and an ``embedder``,
the files not matched by name follow, in the order the look ranks them for the query (a tag
name): first those that look like it more than like any other tag, most likely first (the
acquisition sets the others aside as doubtful). Each candidate found by look carries its
embeddings, so the acquisition does not embed it again. Precision of what it gathers in
``bench/library.py``. Embeddings (plain and mirrored) are cached in ``cache_dir`` by relative
path, size, mtime and backbone: only new or changed files are embedded.

Hidden files and folders are skipped, symlinked folders are not followed and symlinked files
count only when they stay inside the root; a file reached by several paths is listed once (by
its own path over a link's).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
from PIL import Image, IptcImagePlugin

from tagvision import backbone
from tagvision.sources import look
from tagvision.sources.base import Candidate, ProviderError
from tagvision.sources.look import Look, Verdict

SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"})
_DC_SUBJECT = "{http://purl.org/dc/elements/1.1/}subject"
_RDF_LI = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}li"


class LibraryNotFound(ProviderError):
    code = "BadRequestLibraryNotFound"
    http_status = 400


def _fold(word: str) -> str:
    if len(word) > 3 and word.endswith(("sses", "shes", "ches", "xes", "zes")):
        return word[:-2]
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def _tokens(text: str) -> list[str]:
    return re.findall(r"[^\W_]+", text.casefold())


def _terms(text: str) -> frozenset[str]:
    """The folded words of ``text``, with adjacent pairs and the whole text joined."""
    raw = _tokens(text)
    joined = ["".join(raw[i : i + 2]) for i in range(len(raw) - 1)] + ["".join(raw)]
    return frozenset(_fold(w) for w in raw + joined if w)


def _holds(terms: frozenset[str], words: list[str]) -> bool:
    return all(w in terms for w in words) or _fold("".join(words)) in terms


@dataclass(frozen=True)
class _Entry:
    path: Path
    rel: str
    key: str  # relative path, size and mtime: what the caches are keyed by
    folder_keys: frozenset[str]  # each folder's words joined: "Long Sleeves/" -> "longsleeve"
    folder_terms: frozenset[str]
    name_terms: frozenset[str]  # the file name's and the folders'
    keywords: tuple[frozenset[str], ...]
    width: int | None
    height: int | None

    def rank(self, words: list[str]) -> int | None:
        if _fold("".join(words)) in self.folder_keys:
            return 0
        if _holds(self.folder_terms, words):
            return 1
        if any(_holds(k, words) for k in self.keywords):
            return 2
        return 3 if _holds(self.name_terms, words) else None


def _keywords(im: Image.Image) -> list[str]:
    """IPTC 2:25, XMP dc:subject, EXIF XPKeywords and ImageDescription, as phrases."""
    iptc = (IptcImagePlugin.getiptcinfo(im) or {}).get((2, 25), [])
    texts = [v.decode("utf-8", "replace") for v in ([iptc] if isinstance(iptc, bytes) else iptc)]
    exif = im.getexif()
    if isinstance(xp := exif.get(0x9C9E), bytes):
        texts.append(xp.decode("utf-16-le", "replace").replace("\x00", ""))
    if isinstance(exif.get(0x010E), str):
        texts.append(exif[0x010E])
    if xmp := im.info.get("xmp") or im.info.get("XML:com.adobe.xmp"):
        try:
            tree = ElementTree.fromstring(xmp.rstrip(b"\x00") if isinstance(xmp, bytes) else xmp)
            texts += [li.text or "" for s in tree.iter(_DC_SUBJECT) for li in s.iter(_RDF_LI)]
        except ElementTree.ParseError:
            pass
    return [p for t in texts for p in re.split(r"[;,\n]", t) if p.strip()]


class LibraryProvider:
    """Images from a local folder tree (see the module docstring for matching and ranking)."""

    name = "library"

    def __init__(
        self,
        root: Path,
        *,
        look: Look | None = None,
        embedder: backbone.Embedder | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self.root = Path(root).expanduser().resolve()
        self.look = look
        self.embedder = embedder
        self.cache_file: Path | None = None
        if cache_dir is not None and embedder is not None:
            model = backbone.onnx_path(embedder.spec, Path(cache_dir)).stem
            digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:12]
            self.cache_file = Path(cache_dir) / f"library-{digest}-{model}-pairs.npz"  # plain and mirrored
        self._entries: dict[str, _Entry] = {}
        self._vectors: dict[str, np.ndarray] | None = None  # key -> (2, d): plain, mirrored
        self._pool: tuple[tuple[str, ...], np.ndarray | None] | None = None  # the files looked among, their graph
        self._scan()

    def search(self, query: str, limit: int) -> Iterator[Candidate]:
        entries = self._scan()
        words = [_fold(w) for w in _tokens(query)]
        ranks = {e.rel: r for e in entries if words and (r := e.rank(words)) is not None}
        if 0 in ranks.values():  # a folder named exactly so: folders that merely contain the words
            ranks = {rel: r for rel, r in ranks.items() if r != 1}  # ("t-shirt" for "shirt") are another thing
        order = sorted((e for e in entries if e.rel in ranks), key=lambda e: ranks[e.rel])  # stable: path order
        pairs: dict[str, tuple[np.ndarray, Verdict]] = {}
        if len(order) < limit and self.look is not None and self.embedder is not None:
            looked, pairs = self._by_look([e for e in entries if e.rel not in ranks], query)
            order += looked
        for entry in order[: max(limit, 0)]:
            pair, verdict = pairs.get(entry.rel, (None, None))
            yield Candidate(
                provider=self.name,
                provider_id=entry.rel,
                url=entry.path.as_uri(),
                title=entry.path.name,
                width=entry.width,
                height=entry.height,
                path=entry.path,
                embedding=(pair[0], pair[1]) if pair is not None else None,
                verdict=verdict,
            )

    def close(self) -> None:
        self._entries, self._vectors, self._pool = {}, None, None

    def _scan(self) -> list[_Entry]:
        """The image files under the root, one path per file, sorted; metadata read only for changed files."""
        if not self.root.is_dir() or not os.access(self.root, os.R_OK | os.X_OK):
            raise LibraryNotFound(f"The image library {self.root} is not a readable folder.")
        found: dict[str, _Entry] = {}
        real: dict[str, tuple[bool, str]] = {}  # relative path -> (is a link, the file it is)
        for folder, dirs, files in os.walk(self.root):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in files:
                path = Path(folder, name)
                if name.startswith(".") or path.suffix.lower() not in SUFFIXES:
                    continue
                link = path.is_symlink()  # folders are not followed: only the file itself can be a link
                target = os.path.realpath(path) if link else str(path)
                if not Path(target).is_relative_to(self.root):
                    continue
                try:
                    stat = path.stat()
                except OSError:
                    continue
                rel = path.relative_to(self.root).as_posix()
                key = f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}"
                old = self._entries.get(rel)
                found[rel] = old if old is not None and old.key == key else self._read(path, rel, key)
                real[rel] = link, target
        kept: dict[str, str] = {}
        for rel in sorted(found, key=lambda r: (real[r], r)):  # a file before the links to it
            kept.setdefault(real[rel][1], rel)
        self._entries = {rel: found[rel] for rel in sorted(kept.values())}
        return list(self._entries.values())

    @staticmethod
    def _read(path: Path, rel: str, key: str) -> _Entry:
        keywords: list[str] = []
        size: tuple[int | None, int | None] = (None, None)
        with contextlib.suppress(Exception), Image.open(path) as im:  # a damaged header costs its keywords only
            size = im.size
            keywords = _keywords(im)
        *folders, name = rel.split("/")
        folder_terms = frozenset().union(*map(_terms, folders))
        return _Entry(
            path,
            rel,
            key,
            frozenset(_fold("".join(_tokens(f))) for f in folders),
            folder_terms,
            folder_terms | _terms(Path(name).stem),
            tuple(map(_terms, keywords)),
            *size,
        )

    def _by_look(self, entries: list[_Entry], query: str) -> tuple[list[_Entry], dict[str, tuple[np.ndarray, Verdict]]]:
        """``entries`` in the order the look offers them for ``query``, with their (2, d) embeddings and verdicts
        (judged among all of them: see :func:`tagvision.sources.look.neighbours`); unreadable ones dropped."""
        assert self.look is not None
        pairs = self._embeddings(entries)
        readable = np.flatnonzero(np.isfinite(pairs).all(axis=(1, 2)))
        if not len(readable):
            return [], {}
        plain, flipped = pairs[readable, 0], pairs[readable, 1]
        pool = tuple(entries[i].key for i in readable)
        if self._pool is None or self._pool[0] != pool:
            self._pool = (pool, look.neighbours(plain, flipped))
        graph = self._pool[1]
        order = self.look.rank(query, plain, flipped, graph)
        verdicts = self.look.verdicts(query, plain, flipped, graph)
        chosen = [entries[readable[i]] for i in order]
        found = {e.rel: (pairs[readable[i]], verdicts[i]) for e, i in zip(chosen, order, strict=True)}
        return chosen, found

    def _embeddings(self, entries: list[_Entry]) -> np.ndarray:
        """Embeddings (n, 2, d) of ``entries``, plain and mirrored; NaN for files that are not images."""
        assert self.embedder is not None
        if self._vectors is None:
            self._vectors = {}
            if self.cache_file is not None and self.cache_file.exists():
                damaged = (OSError, ValueError, KeyError, zipfile.BadZipFile)  # embed again
                with contextlib.suppress(*damaged), np.load(self.cache_file) as saved:
                    if saved["vectors"].shape[1:] == (2, self.embedder.spec.dim):
                        self._vectors = dict(zip(saved["keys"].tolist(), saved["vectors"], strict=True))
        missing = [e for e in entries if e.key not in self._vectors]
        dim = self.embedder.spec.dim
        for r in self.embedder.embed([e.path.read_bytes for e in missing]):
            pair = np.full((2, dim), np.nan, np.float32) if r.error else np.stack([r.plain, r.flipped])
            self._vectors[missing[r.index].key] = pair
        if missing and self.cache_file is not None:
            keys = [e.key for e in self._entries.values() if e.key in self._vectors]
            tmp = self.cache_file.with_suffix(f".{os.getpid()}-{threading.get_ident()}.tmp")
            with contextlib.suppress(OSError):  # a cache that cannot be written only costs time
                self.cache_file.parent.mkdir(parents=True, exist_ok=True)
                with open(tmp, "wb") as fh:
                    np.savez(fh, keys=np.array(keys), vectors=np.stack([self._vectors[k] for k in keys]))
                os.replace(tmp, self.cache_file)
        return np.stack([self._vectors[e.key] for e in entries]) if entries else np.zeros((0, 2, dim), np.float32)

"""Find inputs on disk: .evtx, JSON lines, and .zip/.tar.gz archives of them, folders recursively.

Archives stream member by member without extraction to disk (EVTX members are read into memory,
since the parser needs to seek); `__MACOSX/` and `._*` members are skipped. Each file and each
archive member is one Input: the unit the `imports` table records (sha256, counts, status).
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterator

import structlog

from plugin.sources.base import Item, SourceError
from plugin.sources.evtx import EVTX_MAGIC, read_evtx
from plugin.sources.jsonl import HashingReader, read_json

log = structlog.get_logger(__name__)

JSON_SUFFIXES = (".json", ".jsonl", ".ndjson")
ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")
MAX_EVTX_MEMBER = 2 * 1024 * 1024 * 1024


def kind_of(name: str, head: bytes = b"") -> str | None:
    """'evtx', 'json', 'zip', 'tar' or None, by suffix first, then by content."""
    low = name.lower()
    if low.endswith(".evtx"):
        return "evtx"
    if low.endswith(JSON_SUFFIXES):
        return "json"
    if low.endswith(".zip"):
        return "zip"
    if low.endswith((".tar.gz", ".tgz", ".tar")):
        return "tar"
    if head.startswith(EVTX_MAGIC):
        return "evtx"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        return "tar"
    if head.lstrip()[:1] in (b"{", b"["):
        return "json"
    return None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class FileInput:
    """A plain .evtx or JSON file."""

    name: str
    path: Path
    kind: str
    evtx_threads: int = 0

    @property
    def size(self) -> int:
        return self.path.stat().st_size

    def sha256(self) -> str:
        return sha256_file(self.path)

    def records(self) -> Iterator[Item]:
        if self.kind == "evtx":
            yield from read_evtx(self.name, str(self.path), self.evtx_threads)
        else:
            with self.path.open("rb") as f:
                yield from read_json(self.name, f)


@dataclass
class MemberInput:
    """One member of an archive, hashed as it streams."""

    name: str
    kind: str
    stream: BinaryIO
    evtx_threads: int = 0
    reader: HashingReader = field(init=False)

    def __post_init__(self) -> None:
        self.reader = HashingReader(self.stream)

    @property
    def size(self) -> int:
        return self.reader.bytes

    def sha256(self) -> str:
        return self.reader.hexdigest()

    def records(self) -> Iterator[Item]:
        try:
            if self.kind == "evtx":
                data = self.reader.read(MAX_EVTX_MEMBER)
                yield from read_evtx(self.name, io.BytesIO(data), self.evtx_threads)
            else:
                yield from read_json(self.name, self.reader)  # type: ignore[arg-type]
        except (OSError, EOFError, zipfile.BadZipFile, tarfile.TarError) as exc:
            yield SourceError(self.name, None, f"archive member truncated or unreadable: {exc}")


def _skip_member(name: str) -> bool:
    p = PurePosixPath(name)
    return "__MACOSX" in p.parts or p.name.startswith("._") or p.name.startswith(".")


@dataclass
class ArchiveInput:
    """A .zip or .tar(.gz) whose members are Inputs of their own."""

    name: str
    path: Path
    kind: str  # zip or tar
    evtx_threads: int = 0

    @property
    def size(self) -> int:
        return self.path.stat().st_size

    def sha256(self) -> str:
        return sha256_file(self.path)

    def members(self) -> Iterator[MemberInput | SourceError]:
        if self.kind == "zip":
            yield from self._zip_members()
        else:
            yield from self._tar_members()

    def _member(self, mname: str, opener) -> MemberInput | SourceError | None:
        if _skip_member(mname):
            return None
        kind = kind_of(mname)
        if kind in ("zip", "tar"):
            log.warning("nested_archive_skipped", archive=self.name, member=mname)
            return SourceError(f"{self.name}!{mname}", None, "nested archive not supported; "
                               "extract it and import the inner archive")
        if kind is None:
            log.info("member_skipped_unknown_type", archive=self.name, member=mname)
            return None
        return MemberInput(f"{self.name}!{mname}", kind, opener(), self.evtx_threads)

    def _zip_members(self) -> Iterator[MemberInput | SourceError]:
        try:
            zf = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            yield SourceError(self.name, None, f"unreadable or truncated zip archive: {exc}")
            return
        with zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                try:
                    item = self._member(info.filename, lambda i=info: zf.open(i))
                except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as exc:
                    item = SourceError(f"{self.name}!{info.filename}", None,
                                       f"unreadable zip member: {exc}")
                if item is not None:
                    yield item

    def _tar_members(self) -> Iterator[MemberInput | SourceError]:
        try:
            tf = tarfile.open(self.path, mode="r|*")
        except (tarfile.TarError, OSError, EOFError) as exc:
            yield SourceError(self.name, None, f"unreadable tar archive: {exc}")
            return
        with tf:
            try:
                for info in tf:
                    if not info.isfile():
                        continue
                    item = self._member(info.name, lambda i=info: tf.extractfile(i))
                    if item is not None:
                        yield item
            except (tarfile.TarError, OSError, EOFError, zipfile.BadZipFile) as exc:
                yield SourceError(self.name, None, f"truncated or damaged tar archive: {exc}")


def discover(paths: list[str], evtx_threads: int = 0) -> Iterator[FileInput | ArchiveInput | SourceError]:
    """Expand the paths given (files, folders) into inputs, folders recursively in sorted order.

    Paths are checked up front by the CLI; a file here that cannot be typed becomes a SourceError.
    """
    for given in paths:
        p = Path(given)
        if p.is_dir():
            for f in sorted(x for x in p.rglob("*") if x.is_file()):
                if _skip_member(str(f.relative_to(p))):
                    continue
                kind = kind_of(f.name)
                if kind is None:
                    log.debug("file_skipped_unknown_type", path=str(f))
                    continue
                yield _make(str(f), f, kind, evtx_threads)
        else:
            try:
                with p.open("rb") as fh:
                    head = fh.read(16)
            except OSError as exc:
                yield SourceError(given, None, f"cannot read: {exc}")
                continue
            kind = kind_of(p.name, head)
            if kind is None:
                yield SourceError(given, None, "unknown file type (expected .evtx, .json, "
                                  ".jsonl, .ndjson, .zip, .tar.gz)", head)
                continue
            yield _make(given, p, kind, evtx_threads)


def _make(name: str, path: Path, kind: str, threads: int) -> FileInput | ArchiveInput:
    if kind in ("zip", "tar"):
        return ArchiveInput(name, path, kind, threads)
    return FileInput(name, path, kind, threads)

"""torch's zip checkpoint layout (``torch.save`` since 1.6, and ``torch.jit.save`` archives).

Records live under one top-level folder whose name is arbitrary (torch uses the file stem or
``archive``): ``data.pkl`` (the pickle), ``data/<key>`` (one per storage), ``version`` or
``.data/version``, optionally ``byteorder`` (``little``/``big``), ``.format_version``,
``.storage_alignment`` and ``.data/serialization_id``.  A ``constants.pkl`` record marks a
TorchScript archive.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import repeat
from typing import Any, Final

import numpy as np

from ..errors import CorruptError, FormatError
from ..model.storage import Reader, StorageTable, StoredReader, chunked_reader
from ..model.tensor import StorageInfo
from ..pickle.machine import Unpickler
from ..source import Source
from ..text import NAME_LIMIT, escape, quoted, short_repr
from ..torch.handlers import ScriptClasses, TorchHandlers
from .contract import Options, Parsed, copy_budget
from .torchscript import read_sources, script_classes
from .zip.reader import STORED, ZipArchive, ZipEntry

__all__ = ["read_zip", "TorchZip", "MAX_VERSION", "fold_case", "not_checkpoint"]

MAX_VERSION = 10  # caffe2::serialize::kMaxSupportedFileFormatVersion
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def fold_case(name: str) -> str:
    """``name`` as torch compares record names: miniz's lookup ignores the case of ASCII
    letters only (``MZ_TOLOWER``), so ``É`` and ``é`` stay different names."""
    return name.translate(_ASCII_LOWER)


#: Record names (relative to the archive folder, or whole) that say what a zip archive that is
#: not a checkpoint is: (test, description).
_OTHER_ZIPS: Final[tuple[tuple[Callable[[str], bool], str], ...]] = (
    (
        lambda n: n.endswith(".data/extern_modules"),
        "a torch.package archive (.data/extern_modules): only torch.package.PackageImporter "
        "reads it, by importing and running the Python modules it packages",
    ),
    (lambda n: n == "[Content_Types].xml", "an Office Open XML document"),
    (lambda n: n == "META-INF/MANIFEST.MF", "a Java archive (jar)"),
    (lambda n: n == "mimetype", "an OpenDocument or EPUB file"),
    (lambda n: n.endswith("model.weights.h5"), "a Keras .keras archive"),
)


def not_checkpoint(names: list[str]) -> str:
    """What a zip archive with these record names is, when it is not a torch checkpoint."""
    for test, what in _OTHER_ZIPS:
        if any(test(name) for name in names):
            return what
    if names and all(name.endswith(".npy") for name in names):
        return "a numpy .npz archive (numpy.load reads it)"
    return f"a zip archive of {len(names)} records with no data.pkl, not a torch checkpoint"


def _other_zip(names: list[str], why: str) -> FormatError:
    return FormatError(f"{escape(not_checkpoint(names), 300)} ({why})")


class TorchZip:
    """A zip archive viewed as torch's record store: one folder, records looked up by name."""

    def __init__(self, src: Source) -> None:
        self.zip = ZipArchive(src)
        names = self.zip.names
        if not names:
            raise FormatError("zip archive has no records")
        first = names[0]
        if "/" not in first:
            raise _other_zip(
                names, f"zip record {escape(first, 100)!r} is not inside an archive folder"
            )
        self.prefix = first.split("/", 1)[0]
        head = self.prefix + "/"
        cut = len(head)
        if not all(map(str.startswith, names, repeat(head))):
            name = next(name for name in names if not name.startswith(head))
            raise FormatError(
                f"zip record {quoted(name)} is outside the archive folder {quoted(head)}"
            )
        self.head = head
        self._relative: list[str] | None = None
        #: whole name -> entry index, and folded relative name -> entry index for the names
        #: folding changes (only those can be found under another case than their own, or
        #: clash with another name)
        self.exact: dict[str, int] = dict(zip(names, range(len(names))))
        self._folded: dict[str, list[ZipEntry]] | None = None
        # (capitals: one pass at memory speed, bytes.lower() changes ASCII capitals only; the
        # folder's own name is left out unless it has none)
        within = names if fold_case(head) == head else self.relative
        joined = "/".join(within).encode("utf-8", "surrogatepass")
        capitals = joined.lower() != joined
        changed = [i for i, n in enumerate(within) if fold_case(n) != n] if capitals else []
        self.lower = {fold_case(names[i][cut:]): i for i in changed}
        #: names equal but for case (ambiguous: torch's lookup is case-insensitive and which
        #: copy it reads varies)
        self.clashes = (
            len(self.exact) != len(names)
            or len(self.lower) != len(changed)
            or any(head + low in self.exact for low in self.lower)
        )

    @property
    def relative(self) -> list[str]:
        """Every entry's name relative to the folder, in directory order (made on first
        use)."""
        if self._relative is None:
            cut = len(self.head)
            self._relative = [name[cut:] for name in self.zip.names]
        return self._relative

    @property
    def folded(self) -> dict[str, list[ZipEntry]]:
        """Folded relative name -> every entry under it (built on first need)."""
        if self._folded is None:
            self._folded = {}
            for i, rel in enumerate(self.relative):
                self._folded.setdefault(fold_case(rel), []).append(self.zip.entries[i])
        return self._folded

    @property
    def records(self) -> dict[str, list[ZipEntry]]:
        """Relative name -> every entry under exactly that name."""
        out: dict[str, list[ZipEntry]] = {}
        for i, rel in enumerate(self.relative):
            out.setdefault(rel, []).append(self.zip.entries[i])
        return out

    def find(self, rel: str) -> ZipEntry | None:
        """The record ``rel`` (torch looks names up case-insensitively); ambiguity refused."""
        if not self.clashes:
            i = self.exact.get(self.head + rel)
            if i is None:
                low = fold_case(rel)
                i = self.exact.get(self.head + low)
                if i is None:
                    i = self.lower.get(low)
            return None if i is None else self.zip.entries[i]
        hits = self.folded.get(fold_case(rel))
        if not hits:
            return None
        if len(hits) > 1:
            names = sorted({e.name for e in hits})
            raise FormatError(
                f"record {rel!r} is ambiguous: the archive holds "
                f"{len(hits)} records named {' / '.join(names)}"
            )
        return hits[0]

    def need(self, rel: str) -> ZipEntry:
        entry = self.find(rel)
        if entry is None:
            raise FormatError(f"record {self.prefix}/{rel} is missing")
        return entry

    def read(self, rel: str) -> bytes:
        return self.zip.read(self.need(rel))


def _version(archive: TorchZip) -> str:
    entry = archive.find(".data/version") or archive.need("version")
    raw = archive.zip.read(entry)
    text = raw.decode("ascii", "replace")
    digits = text.lstrip(" \t\n\r\f\v")
    digits = digits[: len(digits) - len(digits.lstrip("0123456789"))]
    if not digits:
        raise FormatError(f"version record {raw[:20]!r} is not a number", record=entry.name)
    if not 1 <= int(digits) <= MAX_VERSION:
        raise FormatError(
            f"version {digits} is outside the supported 1..{MAX_VERSION}", record=entry.name
        )
    return digits


def _byteorder(archive: TorchZip) -> str:
    entry = archive.find("byteorder")
    if entry is None:
        return "little"
    raw = archive.zip.read(entry)
    if raw not in (b"little", b"big"):
        raise FormatError(
            f"byteorder record is {raw[:20]!r}, not b'little' or b'big'", record=entry.name
        )
    return raw.decode()


def _check_checkpoint(archive: TorchZip) -> None:
    """A precise FormatError for zip archives that are not checkpoints (torch.package
    archives, .npz files, documents): they have no ``data.pkl``."""
    package = any(map(str.endswith, archive.zip.names, repeat(".data/extern_modules")))
    if package or archive.find("data.pkl") is None:
        raise _other_zip(
            archive.relative, f"record {escape(archive.prefix, NAME_LIMIT)}/data.pkl is missing"
        )


def read_zip(src: Source, opts: Options) -> Parsed:
    archive = TorchZip(src)
    _check_checkpoint(archive)
    archive.zip.check_disjoint()
    version = _version(archive)
    byteorder = _byteorder(archive)
    torchscript = archive.find("constants.pkl") is not None
    classes = script_classes(read_sources(archive)) if torchscript else None
    obj = _unpickle(archive, src, opts, "data.pkl", byteorder, classes)
    constants = None
    if torchscript:
        constants = _unpickle(archive, src, opts, "constants.pkl", byteorder, classes)[0]
    return Parsed(
        format="torchscript" if torchscript else "zip",
        obj=obj[0],
        storages=obj[1],
        records=list(archive.zip.names),
        byteorder=byteorder,
        version=version,
        archive_name=archive.prefix,
        constants=constants,
    )


def located_on_read(zip: ZipArchive, entry: ZipEntry, stored: Reader) -> Reader:
    """A stored record's reader that reads its local header on first use (``info.offset``
    stays ``None`` until then): a remote file's open then fetches no storage's header."""

    def read(info: StorageInfo, mmap: bool) -> np.ndarray:
        if info.offset is None:
            info.offset = zip.local_data_offset(entry)
        return stored(info, mmap)

    return read


def _unpickle(
    archive: TorchZip,
    src: Source,
    opts: Options,
    pickle_name: str,
    byteorder: str,
    classes: ScriptClasses | None,
) -> tuple[Any, dict[str, Any]]:
    """Run ``pickle_name``; its tensors live in the records of the folder named after it."""
    big = byteorder == "big"
    folder = pickle_name[: -len(".pkl")] + "/"
    stored = StoredReader(src, big)
    lazy = bool(getattr(src, "lazy", False))  # (a remote file: headers fetched on first read)

    # torch writes the storage records in the order the pickle declares them: each lookup
    # tries the record after the last one found before the name table (whose lookups miss
    # the CPU's caches at a million records); names that fold are left to find().  A record
    # whose bytes lie in the file as they are (``plain``) is located from the columns alone.
    directory, inside = archive.zip, archive.head + folder
    names, sizes, count = directory.names, directory.sizes, len(directory.names)
    plain = None if archive.clashes or lazy else directory.plain_offsets()
    after = 0

    def locate(info: StorageInfo) -> None:
        nonlocal after
        whole = inside + info.key
        i = after
        if plain is not None and i < count and names[i] == whole:
            start = plain[i]
            if start >= 0 and sizes[i] == info.nbytes:
                info.record = names[i]
                info.offset = start
                info._reader = stored  # (info.attach(stored), written out: once per storage)
                after = i + 1
                return
        entry = None
        if not archive.clashes:
            i = after if i < count and names[i] == whole else archive.exact.get(whole, -1)
            if i >= 0:
                entry = directory.entries[i]
                after = i + 1
        if entry is None:
            entry = archive.find(folder + info.key)
        if entry is None:
            raise FormatError(
                f"storage {short_repr(info.key)} has no record "
                f"{escape(archive.prefix, NAME_LIMIT)}/{folder}{escape(info.key)}"
            )
        info.record = entry.name
        if entry.usize != info.nbytes:
            raise CorruptError(
                f"record holds {entry.usize} bytes but storage {short_repr(info.key)} needs "
                f"{info.nbytes}",
                record=entry.name,
            )
        method = entry.method
        if method != STORED or entry.flags & 1 or entry.csize != entry.usize:
            directory.check_readable(entry)
        start = directory.known_offset(entry)
        if method == STORED and lazy and start < 0:
            info.attach(located_on_read(directory, entry, stored))
            return
        if start < 0:
            start = directory.data_offset(entry)
        if method == STORED:
            info.offset = start
            info._reader = stored
        else:
            info.compressed = True
            info.attach(chunked_reader(lambda: directory.inflate(entry), big))

    table = StorageTable(opts.mapper, locate)
    table.stored = stored
    handlers = TorchHandlers(
        table,
        eager=opts.eager,
        mmap=opts.mmap,
        unknown=opts.unknown,
        script_classes=classes,
        copy_budget=copy_budget(src.size),
    )
    pkl = archive.need(pickle_name)
    obj = Unpickler(archive.zip.read(pkl), handlers, record=pkl.name).load()
    return obj, table.infos

"""Validation: every problem of a checkpoint file, located, without running anything from it.

:func:`validate` never raises on bad content (only on I/O errors such as a missing file): it
returns a :class:`Report` whose :class:`Problem` s carry a stable code from :data:`CHECKS`, a
severity, a message and a location (record name, byte offset, key path).

It combines two views of the file:

- **the parsed records** of the format readers, compared past the first error: the zip
  structure (every local header against the central directory and the data descriptor,
  CRC-32 of every record computed in chunks, overlaps, gaps, names; :mod:`.zip`), torch's
  record layout (:mod:`.layout`), the legacy and tar sections (:mod:`.legacy`), a static scan
  of every pickle (:mod:`pthfmt.pickle.scan`) that lists each global outside the allowlist
  with its offset, and a *lenient* run of pthfmt's pickle VM (:mod:`.audit`) with the
  reader's handlers and resource limits, which notes every storage declaration and tensor
  view instead of stopping at the first bad one;
- **the real reader** (:func:`pthfmt.open`): its first error becomes a ``load.*`` problem
  unless a static check already explains it.

Offsets: for a problem found in a zip member's pickle (``pickle.*``, ``storage.*``,
``tensor.*``, ``dtype.*``, ``device.*``) ``offset`` is the opcode's position inside that
pickle record; everywhere else (the zip structure, legacy and tar files, whose pickles are
sections of the file) it is a byte offset in the file.

Memory stays bounded: record data is read through the memory map in 1 MiB chunks and deflated
records are inflated chunk by chunk, never past their declared size.
"""

from __future__ import annotations

import gc
import os
import re

from .. import reader
from ..errors import FormatError, PthError, RemoteError, UnsafePickleError, UnsupportedError
from ..formats.contract import Options
from ..formats.sharding import index_document, missing_shard
from ..model.device import location_mapper
from ..model.tensor import TensorRef
from ..model.tree import walk
from ..pickle.scan import PickleScan, scan_pickle
from ..reader import Checkpoint, detect_format
from ..remote import is_url
from ..sharded import ShardedCheckpoint, find_index, is_index
from ..source import PathOrFile, Source, is_remote
from ..text import escape
from .codes import CHECKS, CODES, MAX_PER_CODE, SEVERITIES, Check, Problem, Report, codes_markdown
from .kinds import check_tree
from .legacy import LegacyChecks
from .safetensors import check_safetensors

__all__ = [
    "CHECKS",
    "CODES",
    "MAX_PER_CODE",
    "SEVERITIES",
    "Check",
    "Problem",
    "Report",
    "PickleScan",
    "scan_pickle",
    "validate",
    "codes_markdown",
]


#: The reader's parse of an opened source (reader.py is asked to export it as ``parse``).
_parse = getattr(reader, "parse", None) or reader._parse


class _Validator(LegacyChecks):
    """One validation: the checks of every format, then the reader's verdict."""

    def name_tensors(self) -> None:
        """Give problems about a storage's data record the key path of a tensor using it."""
        for audit, root in self.audited:
            records = {
                d.info.record: d.info.key for d in audit.decl.values() if d.info.record is not None
            }
            todo = [p for p in self.problems if p.key_path is None and p.record in records]
            if not todo:
                continue
            users: dict[str, str] = {}
            for path, ref in walk(
                root, leaves=(TensorRef,), want=lambda v: isinstance(v, TensorRef)
            ):
                users.setdefault(ref.storage_key, path)
            for p in todo:
                if p.record is not None:
                    p.key_path = users.get(records[p.record]) or None

    def finish(self) -> Report:
        try:
            self.name_tensors()
        except Exception:  # pragma: no cover - key paths are a courtesy
            pass
        for code, n in self.counts.items():
            if n > MAX_PER_CODE:
                check = CODES[code]
                self.problems.append(
                    Problem(
                        code, check.severity, f"... and {n - MAX_PER_CODE} more {code} problems"
                    )
                )
        ok = not any(p.severity in ("error", "warning") for p in self.problems)
        return Report(self.src.path, self.format, ok, self.problems, self.strict, self.load_error)

    def run(self) -> None:
        kind = detect_format(bytes(self.buf[:512]), self.src.size)
        if kind == "zip":
            self.format = "zip"
            self.check_zip()
            if self.buf[257:262] == b"ustar":
                self.add(
                    "format.polyglot",
                    "the zip's first bytes are also a tar header: tar tools read another archive",
                    offset=257,
                )
        elif kind == "legacy":
            self.format = "legacy"
            self.check_legacy()
        elif kind == "tar":
            self.format = "tar"
            self.check_tar()
        elif kind == "safetensors":
            self.format = "safetensors"
            for p in check_safetensors(self.src):
                self.add(p.code, p.message, offset=p.offset, key_path=p.key_path)
        else:
            self.check_unknown()
        if kind != "zip":
            self.check_hidden_zip(kind)
        self.run_reader()

    def run_reader(self) -> None:
        try:
            opts = Options(location_mapper(None), eager=False, mmap=self.src.mapped)
            ckpt = Checkpoint(self.src, _parse(self.src, opts))
            for p in check_tree(ckpt.obj):  # what torch does not check of these tensors
                self.add(p.code, p.message, key_path=p.key_path)
            return
        except PthError as exc:
            self.load_error = str(exc)
            if self.explained(exc):
                return
            code = "load.unsupported" if isinstance(exc, UnsupportedError) else "load.failed"
            self.add(code, exc.message, record=exc.record, offset=exc.offset, key_path=exc.key_path)
        except (RecursionError, MemoryError) as exc:
            self.load_error = f"{type(exc).__name__}"
            self.add("load.failed", f"the reader ran out of resources ({type(exc).__name__})")
        except Exception as exc:  # a reader bug: report it, keep what was found
            self.load_error = f"{type(exc).__name__}: {exc}"
            self.add("internal.error", f"pthfmt's reader failed: {type(exc).__name__}: {exc}")

    def explained(self, exc: PthError) -> bool:
        """Does a problem already reported stand for the reader's error?"""
        serious = [p for p in self.problems if p.severity in ("error", "warning")]
        if isinstance(exc, UnsafePickleError) and self.static_global_seen:
            return True
        if exc.code is not None and any(
            p.code == exc.code and p.offset == exc.offset for p in self.problems
        ):
            return True
        for p in serious:
            if p.record is not None and re.search(
                rf"(?<![\w/.]){re.escape(p.record)}(?![\w/.])", exc.message
            ):
                return True
            if (
                exc.record is not None
                and p.record == exc.record
                and (exc.offset is None or p.offset is None or p.offset == exc.offset)
            ):
                return True
            if exc.key_path is not None and p.key_path == exc.key_path:
                return True
        if exc.record is None and exc.offset is None:
            return any(
                p.code.split(".")[0] in ("zip", "record", "format", "file", "legacy")
                for p in serious
            )
        return False


def validate(f: PathOrFile, *, strict: bool = False, data: bool = True) -> Report:
    """Check a checkpoint file and return a :class:`Report` of every problem found.

    Never raises on bad content; only I/O errors (a missing or unreadable file) propagate as
    ``OSError``.  ``strict`` adds what torch accepts but a careful publisher would not ship
    (compressed or unaligned data, extra records, unreferenced storages, odd names).

    ``data=False`` skips what reads tensor data (the CRC-32 of stored storage records) and
    says so in a ``data.skipped`` note; every other check runs.  A remote file (a URL, see
    :func:`pthfmt.open`) is then fetched but for its tensor data; with ``data=True`` it is
    fetched whole, in one request.
    """
    if isinstance(f, (str, os.PathLike)) and is_index(f):
        return _validate_index(os.fspath(f), strict, data)
    try:
        src = _source(f, data)
    except PthError as exc:
        path = f if isinstance(f, str) else getattr(f, "name", None)
        # (a URL that cannot be fetched, or not without a missing package, is a file that
        # cannot be read here, as a local file that cannot be opened: nothing was checked)
        code = (
            exc.code
            if exc.code == "file.not_regular"
            else "file.empty"
            if isinstance(exc, FormatError)
            else "file.unreadable"
            if isinstance(exc, RemoteError)
            else "load.failed"
        )
        problem = Problem(code, "error", exc.message)
        return Report(
            str(path) if path is not None else None, None, False, [problem], strict, exc.message
        )
    v = _Validator(src, strict, data)
    enabled = gc.isenabled()
    gc.disable()  # as in the reader: many small objects, no cycles to collect
    try:
        v.run()
    except OSError:
        raise
    except MemoryError:
        v.add("load.failed", f"out of memory validating the {src.size}-byte file")
    except Exception as exc:  # never raise on content: report our own failure
        v.add("internal.error", f"validation stopped: {type(exc).__name__}: {exc}")
    finally:
        if enabled:
            gc.enable()
    return v.finish()


def _listed_shards(index: str) -> list[str]:
    """The file names an index lists as shards, in first-use order (indexes among them too:
    the caller names those); none when the index is not strict JSON within bounds
    (:func:`pthfmt.formats.sharding.index_document`), which ``index.inconsistent`` reports."""
    try:
        doc = index_document(index)
    except (PthError, OSError):
        return []
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict):
        return []
    names = dict.fromkeys(v for v in weight_map.values() if isinstance(v, str))
    return [n for n in names if n and os.path.basename(n) == n]


def _source(f: PathOrFile, data: bool) -> Source:
    """The file to validate: read whole, or (``data=False``, a remote file) all but its
    tensor data."""
    if data or not is_remote(f):
        return Source(f)
    from ..remote import RemoteSource, all_but_data

    src = RemoteSource(f, lazy=True)
    if getattr(src.fetcher, "streaming", False):  # a server without Range: whole, once
        return Source(f)
    all_but_data(src)
    return src


def _validate_index(path: str, strict: bool, data: bool) -> Report:
    """A sharded checkpoint: the index against the shards, then every shard, in one report
    (a shard's problems carry ``<shard>/`` before their record)."""
    if is_url(path):
        return _validate_remote_index(path, strict, data)
    try:
        index = find_index(path)
    except PthError as exc:  # a folder of several indexes: which one is meant is unknown
        problem = Problem("index.inconsistent", "error", exc.message)
        return Report(path, "sharded", False, [problem], strict, exc.message)
    folder, name = os.path.dirname(index), os.path.basename(index)
    listed = _listed_shards(index)
    # every missing shard, each a problem (opening the shards stops at the first)
    missing = [
        missing_shard(shard) for shard in listed if not os.path.isfile(os.path.join(folder, shard))
    ]
    problems = [Problem("index.inconsistent", "error", message, name) for message in missing]
    try:
        ShardedCheckpoint(index)
    except PthError as exc:
        if exc.message not in missing:
            problems.append(Problem("index.inconsistent", "error", exc.message, name))
    reports: list[tuple[str, Report]] = []
    for shard in listed:
        shard_path = os.path.join(folder, shard)
        if not os.path.isfile(shard_path):
            continue  # reported above
        if is_index(shard_path) or os.path.samefile(shard_path, index):
            # an index listing an index (or itself) as a shard: never followed
            problems.append(
                Problem(
                    "index.inconsistent",
                    "error",
                    f"shard '{escape(shard)}' is a shard index, not a checkpoint",
                    name,
                )
            )
            continue
        reports.append((shard, validate(shard_path, strict=strict, data=data)))
    return _index_report(index, problems, reports, strict)


def _validate_remote_index(url: str, strict: bool, data: bool) -> Report:
    """A shard index by URL: the index against every shard's keys, then every shard."""
    name = _base_name(url)
    try:
        sharded = ShardedCheckpoint(url)  # the index, read and checked as a local one
    except PthError as exc:
        return _index_report(
            url, [Problem("index.inconsistent", "error", exc.message, name)], [], strict
        )
    failed: dict[str, PthError] = {}
    with sharded:
        sharded.open_all(failed)  # every shard's keys against the index
    problems = [
        Problem("index.inconsistent", "error", exc.message, name) for exc in failed.values()
    ]
    reports: list[tuple[str, Report]] = []
    for shard_url in sharded.shard_paths():
        shard = _base_name(shard_url)
        if isinstance(failed.get(shard), RemoteError):
            continue  # (a shard that cannot be fetched: reported above)
        try:
            reports.append((shard, validate(shard_url, strict=strict, data=data)))
        except FileNotFoundError:  # (gone since it was opened)
            message = f"shard '{escape(shard)}' named by the index cannot be fetched"
            problems.append(Problem("index.inconsistent", "error", message, name))
    return _index_report(url, problems, reports, strict)


def _base_name(url: str) -> str:
    return url.rsplit("/", 1)[-1]


def _index_report(
    index: str, problems: list[Problem], reports: list[tuple[str, Report]], strict: bool
) -> Report:
    """The index's problems, then each shard's (its record prefixed by ``<shard>/``)."""
    ok = not problems
    for shard, report in reports:
        ok = ok and report.ok
        for p in report.problems:
            problems.append(
                Problem(
                    p.code,
                    p.severity,
                    p.message,
                    f"{shard}/{p.record}" if p.record else shard,
                    p.offset,
                    p.key_path,
                )
            )
    serious = any(p.severity in ("error", "warning") for p in problems)
    return Report(index, "sharded", ok and not serious, problems, strict)

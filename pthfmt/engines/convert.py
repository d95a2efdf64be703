"""Converting between torch checkpoints, safetensors and ``.npz``: :func:`convert`.

``convert(src, dst)`` reads ``src`` and writes ``dst`` in the format its extension names:

- ``.pth``, ``.pt``, ``.bin``, ``.ckpt``: a torch checkpoint (zip format, as ``torch.save``
  writes it; :func:`pthfmt.save` does the writing).  Input may also be a sharded checkpoint:
  its ``*.bin.index.json`` (or ``*.safetensors.index.json``) or the folder holding it.
- ``.safetensors`` (:mod:`pthfmt.formats.safetensors`): the header is bounds-checked, nothing
  is unpickled, tensors are zero-copy views of the mapped file.
- ``.npz`` (:mod:`pthfmt.formats.npz`): numpy's zip of ``.npy`` arrays (read without pickle;
  stored members are mapped, compressed ones are read one array at a time).

**Keys.**  Nested containers flatten to dotted key paths, as ``state_dict()`` keys are
(``model_state_dict.fc1.weight``, ``optimizer_state_dict.state.0.exp_avg``); a pickled
``nn.Module`` stands for its ``state_dict()``.  A torch output is that flat dict.

**Non-tensor values** (epoch, loss, optimizer hyper-parameters) that are ``None``, bools,
numbers, strings or lists of them travel as JSON: in safetensors as ``__metadata__`` entries
``"pthfmt:<key path>": "<JSON>"`` (beside ``"format": "pt"``, which Hugging Face loaders
expect); in ``.npz`` in the sidecar member ``__pthfmt__`` (a 0-d string array holding a JSON
object).  A torch output gets them back as entries of its dict.  What a format cannot hold
(a tensor dtype it lacks, a value that is not JSON, an object of an unknown class) is left
out and named in a warning: :func:`convert` returns the warnings, and never drops anything
without one.

**Dtypes.**  safetensors has no complex128, complex32, quantized or ``bits`` types; those
tensors are left out (warned).  ``float4_e2m1fn_x2`` is safetensors' ``F4`` with the last
dimension counted in 4-bit elements (twice torch's).  ``.npy`` cannot describe bfloat16,
float8, complex32, float4 or ``bits`` types: their raw bits are stored as unsigned integers
of the same width and the sidecar names the dtype, so that ``.npz`` to torch restores it.

**Aliasing.**  safetensors and ``.npz`` have no shared storages: tensors that share one
(tied weights, views) are written as separate copies (warned).  Every tensor is written
contiguous, in C order.

**Memory and atomicity.**  Tensors stream one by one from the mapped input into the output
in pieces of :data:`pthfmt.writer.CHUNK` bytes; the output is written to a temporary file
beside it and renamed into place only when complete (:func:`pthfmt.atomic.write_atomically`,
as :func:`pthfmt.save`), so a failed conversion leaves no partial file and an existing output
untouched.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import IO, Any, Final, Literal, cast

import numpy as np

from ..atomic import Sink, Write, write_atomically
from ..closing import Closing
from ..errors import FormatError, LimitError, UnsafePickleError
from ..formats.detect import FORMATS, Format, UnknownFormatError, input_format, output_format
from ..formats.npz import NPZ_RAW_DTYPES, SIDECAR, read_npz, write_npz
from ..formats.safetensors import (
    SAFETENSORS_DTYPES,
    read_safetensors,
    read_sharded_safetensors,
    write_safetensors,
)
from ..formats.sharding import parse_size, resolve_folder
from ..formats.tensordata import Content, TensorItem, Value, count, index_metadata, listing
from ..model.device import Device
from ..model.dtypes import DType
from ..model.kinds import QuantizedRef
from ..model.stub import Stub
from ..model.tensor import ReadBudget, StorageInfo, TensorRef
from ..model.tree import MAX_PART_CHARS, MAX_PATH_PARTS
from ..remote import is_url
from ..text import escape, is_unicode
from .kinds import kind_name
from .tree import Gadget, Survey, leaves

__all__ = [
    "convert",
    "Conversion",
    "FORMATS",
    "UnknownFormatError",
    "output_format",
    "flatten",
    "MAX_DEPTH",
    "GadgetError",
]

#: Kept for old imports: nesting is no longer limited (the walker is linear in any depth).
MAX_DEPTH: Final = 1000
_LIST: Final = 8  # names listed per note (what is left out is listed in full)
_SCALARS = (bool, int, float, complex, str, bytes, type(None), np.generic)


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    format: Format | None = None,
    key: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    salvage: bool = False,
    max_shard_size: int | str | None = None,
) -> list[str]:
    """Convert ``src`` to ``dst``; returns the warnings (what was left out, and why).

    ``format`` (``"pth"``, ``"safetensors"``, ``"npz"``) overrides ``dst``'s extension.
    ``max_shard_size`` (``"2GB"``, ``"500MiB"`` or bytes) writes a sharded checkpoint into the
    folder ``dst`` as ``save_pretrained`` does (see :func:`pthfmt.save_sharded`): its tensors
    only, ``format`` ``"pth"`` or ``"safetensors"`` (the default, as ``save_pretrained``).
    ``key`` converts only the entries under that dotted key path, without the prefix
    (``key="model_state_dict"``).  ``progress(done, total)`` is called as bytes are written.

    A torch input that calls a known code-execution gadget (``os.system``, ``eval``...) is
    refused with :class:`GadgetError` naming each call; ``salvage=True`` converts its tensors
    anyway and drops every stub (each named in a warning).  ``dst`` naming ``src`` (or a
    link to it) raises ``shutil.SameFileError``.  Raises :class:`UnknownFormatError` when a
    format cannot be told, a :class:`~pthfmt.PthError` for a bad input, ``OSError`` for
    files that cannot be read or written; ``dst`` is then unchanged.  The warnings are
    escaped (no control character from the file).
    """
    with Conversion(
        src, dst, format=format, key=key, salvage=salvage, max_shard_size=max_shard_size
    ) as job:
        job.write(progress)
        return list(job.warnings)


class GadgetError(UnsafePickleError):
    """The input calls known code-execution gadgets: converting it would hand on a file that
    is only safe because pthfmt never runs it.  ``gadgets`` lists them."""

    def __init__(self, gadgets: list[Gadget], more: int = 0) -> None:
        self.gadgets = gadgets
        n = len(gadgets) + more
        calls = "; ".join(f"{g.call()} at {escape(g.key or '<root>', 200)}" for g in gadgets[:8])
        rest = f"; and {n - min(len(gadgets), 8)} more" if n > min(len(gadgets), 8) else ""
        super().__init__(
            f"the file calls {n} known code-execution gadget{'s' if n != 1 else ''}: "
            f"{calls}{rest}; refusing to convert it (salvage=True extracts the tensors only)"
        )


def _kind(value: Any) -> str:
    named = kind_name(value)
    if named is not None:
        return named
    if isinstance(value, Stub):
        return value.qualname
    kind = type(value)
    if kind.__module__ == "builtins":
        return kind.__name__
    return f"{kind.__module__}.{kind.__qualname__}"


class _Plan:
    """What a conversion writes, and what it leaves out (each kind named in one warning)."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self.entries: list[TensorItem | Value] = []
        self.duplicate: list[str] = []
        self.no_dtype: list[str] = []
        self.reserved: list[str] = []
        self.bad_name: list[str] = []
        self.shortened: list[str] = []
        self.lost: list[str] = []

    def take(self, content: Content) -> None:
        carry = _pth_value if self.fmt == "pth" else _json_value
        names: set[str] = set()
        for entry in content.entries:
            if entry.name == "" and isinstance(entry, TensorItem):
                entry.name = "tensor"
                content.warnings.append(
                    "the input is a single tensor: written under the key 'tensor'"
                )
            if _SHORTENED.search(entry.name):  # not the file's key: never written under it
                self.shortened.append(entry.name)
                continue
            if entry.name in names:
                self.duplicate.append(entry.name)
                continue
            names.add(entry.name)
            if isinstance(entry, Value):
                ok, plain = carry(entry.value)
                if not ok:
                    self.lost.append(f"{entry.name or '<root>'} ({_kind(entry.value)})")
                elif not name_fits(entry.name, self.fmt):
                    self.bad_name.append(entry.name)
                else:
                    self.entries.append(Value(entry.name, plain))
                continue
            why = _unwritable(entry, self.fmt)
            if why is None and not name_fits(entry.name, self.fmt):
                self.bad_name.append(entry.name)
            elif why is None:
                self.entries.append(entry)
            elif why == "reserved":
                self.reserved.append(entry.name)
            else:
                self.no_dtype.append(f"{entry.name} ({why})")

    def warn_left_out(self, warn: Callable[[str], None]) -> None:
        fmt = self.fmt
        if self.duplicate:
            warn(
                f"left out {count(self.duplicate, 'entry', 'entries')} whose flattened key an "
                f"earlier entry already has: {listing(self.duplicate)}"
            )
        if self.shortened:
            warn(
                f"left out {count(self.shortened, 'entry', 'entries')} whose key path is too "
                f"long or deep to keep whole (a key over {MAX_PART_CHARS:,} characters, or more "
                f"than {MAX_PATH_PARTS} levels, is shortened): {listing(self.shortened)}"
            )
        if self.bad_name:
            why = "not valid Unicode" + (
                f", or longer than {NPZ_NAME_MAX:,} bytes" if fmt == "npz" else ""
            )
            warn(
                f"left out {count(self.bad_name, 'entry', 'entries')} whose name {fmt} cannot "
                f"hold ({why}): {listing(self.bad_name)}"
            )
        if self.reserved:
            warn(
                f"left out {count(self.reserved, 'tensor')} with a name {fmt} reserves: "
                f"{listing(self.reserved)}"
            )
        if self.no_dtype:
            what = (
                "(quantized, without their quantization parameters)"
                if fmt == "pth"
                else f"with a dtype {fmt} cannot hold"
            )
            warn(f"left out {count(self.no_dtype, 'tensor')} {what}: {listing(self.no_dtype)}")
        if self.lost:
            where = {
                "pth": "a torch checkpoint",
                "safetensors": "safetensors metadata",
                "npz": "the npz sidecar",
            }[fmt]
            warn(f"left out {count(self.lost, 'value')} that {where} cannot carry: "
                 f"{listing(self.lost)}")  # fmt: skip


def _warn_lossy(fmt: str, items: list[TensorItem], warn: Callable[[str], None]) -> None:
    """Warnings for what the output holds differently: raw-bit npz dtypes, no sharing."""
    if fmt == "npz":
        raw = sorted({i.dtype.name for i in items if i.dtype.name in NPZ_RAW_DTYPES})
        if raw:
            warn(
                f"npz cannot describe {', '.join(raw)}: those tensors are stored as "
                f"their raw bits (unsigned integers) and the {SIDECAR!r} member records "
                "their dtype (pthfmt restores it; numpy alone sees integers)"
            )
    if fmt != "pth":
        users: dict[int, list[str]] = {}
        for item in items:
            if item.storage is not None:
                users.setdefault(id(item.storage), []).append(item.name)
        shared = [" = ".join(g) for g in users.values() if len(g) > 1]
        if shared:
            warn(
                f"{fmt} has no shared storage: wrote separate copies of "
                f"{count(shared, 'group')} of tensors sharing one: {listing(shared, _LIST)}"
            )


def _sharded_format(format: Format | None) -> Format:
    """A sharded output's format: ``pth`` or ``safetensors`` (``save_pretrained``'s default)."""
    if format is None:
        return "safetensors"
    if format not in ("pth", "safetensors"):
        raise UnknownFormatError(
            f"a sharded checkpoint is written as 'pth' or 'safetensors', not {format!r}"
        )
    return format


class Conversion(Closing):
    """A planned conversion: the input is read and checked on construction (nothing is
    written), :meth:`write` writes the output.  ``warnings`` lists what is left out."""

    def __init__(
        self,
        src: str | os.PathLike[str],
        dst: str | os.PathLike[str],
        *,
        format: Format | None = None,
        key: str | None = None,
        salvage: bool = False,
        max_shard_size: int | str | None = None,
    ) -> None:
        self.src = resolve_folder(os.fspath(src))
        self.dst = os.fspath(dst)
        self.max_shard_size = None if max_shard_size is None else parse_size(max_shard_size)
        self.written: list[str] = []  # a sharded output's file names, the index last
        if self.max_shard_size is None:
            self.format = output_format(self.dst, format)
        else:
            self.format = _sharded_format(format)
        if os.path.isdir(self.dst) and self.max_shard_size is None:
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), self.dst)
        _refuse_same_file(self.src, self.dst)
        self._content = Content()
        try:
            self.source_format = _source_format(self.src, self._content)
            if self.source_format == "download":
                self.src = _downloaded(self.src, self._content)
                self.source_format = input_format(self.src)
            if self.source_format in _PICKLED:
                _PICKLED[self.source_format](self.src, self._content, salvage)
            else:
                _READERS[self.source_format](self.src, self._content)
            if key:
                _select(self._content, key)
            self._plan()
        except BaseException:
            self.close()
            raise

    def _plan(self) -> None:
        """Decide what is written; name everything left out in a warning."""
        content, fmt = self._content, self.format
        plan = _Plan(fmt)
        plan.take(content)
        if self.max_shard_size is not None:
            values = [e.name for e in plan.entries if isinstance(e, Value)]
            if values:
                content.warnings.append(
                    f"left out {count(values, 'value')}: sharded checkpoints hold tensors "
                    f"only: {listing(values)}"
                )
            plan.entries = [e for e in plan.entries if isinstance(e, TensorItem)]
        self.entries: list[TensorItem | Value] = plan.entries
        self.items = [e for e in self.entries if isinstance(e, TensorItem)]
        self.values = [e for e in self.entries if isinstance(e, Value)]
        if fmt != "pth":  # (pth keeps views: a stride-0 one stays its storage)
            _check_expansions(self.items)
        warn = content.warnings.append
        plan.warn_left_out(warn)
        _warn_lossy(fmt, self.items, warn)
        self.metadata = dict(content.metadata)
        if fmt == "pth":
            extra = [k for k, v in self.metadata.items() if not (k == "format" and v == "pt")]
            if extra:
                warn(
                    f"left out file metadata a torch checkpoint has no place for: {listing(extra)}"
                )
            self.metadata = {}
        bad = [k for k, v in self.metadata.items() if not (is_unicode(k) and is_unicode(v))]
        if bad:
            warn(f"left out file metadata that is not valid Unicode: {listing(bad)}")
            for k in bad:
                del self.metadata[k]

    @property
    def warnings(self) -> list[str]:
        """What is left out, and why: one line each, escaped."""
        return [escape(w, None) for w in self._content.warnings]

    @property
    def nbytes(self) -> int:
        """Tensor bytes to write (the progress total)."""
        if self.format != "pth":
            return sum(i.nbytes for i in self.items)
        seen: dict[int, int] = {}
        for item in self.items:
            size = item.storage.nbytes if isinstance(item.storage, StorageInfo) else item.nbytes
            seen[id(item.storage) if item.storage is not None else id(item)] = size
        return sum(seen.values())

    def write(self, progress: Callable[[int, int], None] | None = None) -> None:
        """Write the output atomically (a temporary file renamed into place; a sharded
        output: each shard and the index so)."""
        total = self.nbytes
        if self.max_shard_size is not None:
            from ..formats.sharding import save_sharded

            state = {e.name: e.for_save() for e in self.items}
            fmt: Literal["pth", "safetensors"] = (
                "safetensors" if self.format == "safetensors" else "pth"  # (never npz here)
            )
            self.written = save_sharded(
                state, self.dst, max_shard_size=self.max_shard_size, format=fmt
            )
            if progress is not None:
                progress(total, total)
            return

        def run(write: Write) -> None:
            if progress is None:
                self._emit(write)
                return
            done = 0

            def counted(data: Any) -> None:
                nonlocal done
                write(data)
                done += memoryview(data).nbytes
                progress(done, total)

            self._emit(counted)

        write_atomically(self.dst, run)

    def _emit(self, write: Write) -> None:
        if self.format == "safetensors":
            write_safetensors(write, self.items, self.values, self.metadata)
        elif self.format == "npz":
            write_npz(write, self.items, self.values, self.metadata)
        else:
            self._emit_pth(write)

    def _emit_pth(self, write: Write) -> None:
        from ..formats.zip.writer import archive_name_for_path
        from ..writer import save

        obj = {
            e.name: (e.for_save() if isinstance(e, TensorItem) else e.value) for e in self.entries
        }
        save(obj, cast("IO[bytes]", Sink(write)), archive_name=archive_name_for_path(self.dst))

    def close(self) -> None:
        closers, self._content.closers = self._content.closers, []
        for close in reversed(closers):
            try:
                close()
            except (BufferError, OSError):  # an array still views a mapping: GC frees it
                pass


#: A key path :mod:`pthfmt.model.tree` shortened (``aaa...<+5000 chars>``, ``<70 levels>.a``).
_SHORTENED: Final = re.compile(r"\.\.\.<\+\d+ chars>(?:\.|$)|^<\d+ levels>(?:\.|$)")
#: Bytes of a member name a zip (so an npz) can hold, less the ``.npy`` suffix.
NPZ_NAME_MAX: Final = 0xFFFF - len(".npy")


def name_fits(name: str, fmt: str) -> bool:
    """Whether ``fmt`` can hold the key ``name``: safetensors (JSON in UTF-8) and npz (zip
    names in UTF-8, at most 65,535 bytes) need valid Unicode; a pickle holds any string."""
    if fmt == "pth":
        return True
    if not is_unicode(name):
        return False
    return fmt != "npz" or len(name) * 4 <= NPZ_NAME_MAX or len(name.encode()) <= NPZ_NAME_MAX


def _unwritable(item: TensorItem, fmt: str) -> str | None:
    """Why ``item`` cannot be written in ``fmt`` (``"reserved"`` for its name), else None."""
    if fmt == "pth":  # a quantized tensor read from a torch file carries its qparams
        quantized = item.dtype.kind == "quantized"
        return (
            item.dtype.name if quantized and not isinstance(item.for_save(), QuantizedRef) else None
        )
    if item.name == ("__metadata__" if fmt == "safetensors" else SIDECAR):
        return "reserved"
    if fmt == "safetensors":
        code = SAFETENSORS_DTYPES.get(item.dtype.name)
        if code is None:
            return item.dtype.name
        if code == "F4" and not item.shape:
            return "0-d float4_e2m1fn_x2: F4 needs a last dimension"
    elif item.dtype.kind == "quantized":
        return item.dtype.name
    return None


# -- values --------------------------------------------------------------------------------------


def _scalar(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


#: Python refuses to print an int of more than 4300 digits; 14,000 bits is ~4,200 digits.
_JSON_INT_BITS = 14_000


def _json_scalar(value: Any) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return value.bit_length() <= _JSON_INT_BITS
    if isinstance(value, str):
        return is_unicode(value)
    return value is None or isinstance(value, (bool, float))


def _json_value(value: Any) -> tuple[bool, Any]:
    """``(True, plain)`` for None, bools, numbers, strings, lists of them and ``{}``."""
    value = _scalar(value)
    if _json_scalar(value):
        return True, value
    if isinstance(value, (list, tuple)):
        items = [_scalar(v) for v in value]
        if all(_json_scalar(v) for v in items):
            return True, items
    if isinstance(value, dict) and not value:
        return True, {}
    return False, None


def _pth_value(value: Any) -> tuple[bool, Any]:
    """What :func:`pthfmt.save` writes for a leaf value: scalars, bytes, devices, dtypes,
    lists and tuples of them, empty containers.  Objects of unknown classes are not."""

    def plain(v: Any) -> bool:
        return isinstance(v, (*_SCALARS, Device, DType))

    if plain(value) or kind_name(value) is not None:  # kinds: pthfmt.save writes them
        return True, value
    if isinstance(value, (list, tuple)) and all(plain(v) for v in value):
        return True, value
    if isinstance(value, dict) and not value:
        return True, {}
    return False, None


# -- input formats -------------------------------------------------------------------------------


def _select(content: Content, key: str) -> None:
    """Keep the entries under ``key`` (dotted), without the prefix."""
    prefix = key.rstrip(".") + "."
    kept, outside = [], []
    for entry in content.entries:
        if entry.name.startswith(prefix):
            entry.name = entry.name[len(prefix) :]
            kept.append(entry)
        elif entry.name == key:
            kept.append(entry)
        else:
            outside.append(entry.name or "<root>")
    if not kept:
        raise FormatError(f"no entries under the key {key!r}")
    content.entries = kept
    if outside:
        groups: dict[str, int] = {}
        for name in outside:
            top = name.split(".", 1)[0]
            groups[top] = groups.get(top, 0) + 1
        shown = [f"{top} ({n} entries)" if n > 1 else top for top, n in groups.items()]
        content.warnings.append(
            f"converted only {key!r}: left out "
            f"{count(outside, 'other entry', 'other entries')}: "
            f"{listing(shown)}"
        )


def _read_torch(path: str, content: Content, salvage: bool = False) -> None:
    from ..reader import open as open_checkpoint

    ck = open_checkpoint(path, map_location="cpu", unknown="stub")
    content.closers.append(ck.close)
    for name, value in _checked(ck.obj, content, salvage):
        if isinstance(value, TensorRef):
            content.entries.append(_ref_item(name, value))
        else:
            content.entries.append(Value(name, value))


def _check_expansions(items: list[TensorItem]) -> None:
    """Refuse, before anything is written, a view that writing out whole would make far
    larger than its storage (a stride-0 view of a few bytes may declare terabytes), alone
    or all of them together."""
    budget = ReadBudget()
    for item in items:
        if isinstance(item.storage, StorageInfo):  # a torch file's view (for_save: the ref)
            ref = item.for_save()
            if isinstance(ref, TensorRef):
                try:
                    budget.charge(ref)
                except LimitError as exc:
                    raise exc.locate(key_path=escape(item.name)) from None


def _ref_item(name: str, ref: TensorRef) -> TensorItem:
    def release() -> None:
        # A compressed storage is inflated into memory once and cached: drop it when its
        # last tensor is written, so that memory stays bounded.  (Mapped ones cost nothing.)
        storage = ref.storage
        if storage.compressed:
            storage.release()

    return TensorItem(
        name,
        ref.dtype_info,
        ref.shape,
        lambda: ref.numpy(mmap=True),
        lambda: ref,
        storage=ref.storage,
        release=release,
    )


def flatten(
    root: Any, warnings: list[str], survey: Survey | None = None
) -> Iterator[tuple[str, Any]]:
    """``(dotted key path, leaf)`` in file order: tensors, and values (scalars, lists of
    scalars, empty containers, other objects), as :func:`pthfmt.engines.tree.leaves` walks
    them (a module stands for its tensors; each container once).  ``warnings`` is kept for
    old callers."""
    return leaves(root, survey)


def _stub_name(value: Any) -> str:
    kind = value.type if isinstance(value, Stub) else value
    return escape(getattr(kind, "qualname", type(value).__name__), 120)


def _checked(root: Any, content: Content, salvage: bool) -> Iterator[tuple[str, Any]]:
    """The leaves of a torch input, refused (:class:`GadgetError`) when it calls a gadget,
    unless ``salvage``: then only tensors and plain values, each stub dropped with a
    warning."""
    found = Survey()
    entries = list(flatten(root, content.warnings, found))
    if not found.gadgets:
        return iter(entries)
    if not salvage:
        raise GadgetError(found.gadgets, found.more)
    kept: list[tuple[str, Any]] = []
    gadgets = {g.key for g in found.gadgets}
    for name, value in entries:
        if isinstance(value, TensorRef) or not _has_stub(value):
            kept.append((name, value))
        elif name not in gadgets:
            content.warnings.append(
                f"salvage: dropped {name or '<root>'} (a stub of {_stub_name(value)})"
            )
    for g in found.gadgets:
        content.warnings.append(
            f"salvage: left out the code-execution gadget {g.call()} at {g.key or '<root>'}"
        )
    return iter(kept)


def _has_stub(value: Any) -> bool:
    from .tree import is_scalar

    if isinstance(value, (list, tuple)):
        return not all(is_scalar(v) for v in value)
    return not (is_scalar(value) or isinstance(value, dict))


def _refuse_same_file(src: str, dst: str) -> None:
    """``dst`` must not be ``src`` or a link to it (as ``cp`` refuses)."""
    try:
        same = os.path.exists(dst) and os.path.samefile(src, dst)
    except OSError:
        return
    if same:
        raise shutil.SameFileError(f"{src!r} and {dst!r} are the same file")


def _source_format(src: str, content: Content) -> str:
    """``input_format`` of a local path or an index URL (whose shards are opened by URL);
    ``"download"`` for any other URL, read from a local copy."""
    if not is_url(src):
        return input_format(src)
    return "sharded" if src.endswith(".index.json") else "download"


def _downloaded(url: str, content: Content) -> str:
    """A temporary local copy of ``url`` (removed when the conversion closes): every input
    format's reader then works on it, and its content tells the format."""
    from ..remote import download

    name = url.split("?", 1)[0].rsplit("/", 1)[-1]
    fd, path = tempfile.mkstemp(prefix="pthfmt-convert-", suffix=os.path.splitext(name)[1][:16])
    content.closers.append(lambda: os.unlink(path))
    try:
        download(url, fd)
    finally:
        os.close(fd)
    return path


def _read_sharded(path: str, content: Content, salvage: bool = False) -> None:
    from ..formats.detect import find_any_index
    from ..sharded import load_sharded

    sharded = load_sharded(path if is_url(path) else find_any_index(path), map_location="cpu")
    sharded.open_all()
    for ck in sharded.shards.values():
        content.closers.append(ck.close)
    for name, ref in sharded.refs.items():
        content.entries.append(_ref_item(name, ref))
    for ck in sharded.shards.values():  # anything besides tensors in a shard
        content.entries.extend(
            Value(name, value)
            for name, value in _checked(ck.obj, content, salvage)
            if not isinstance(value, TensorRef)
        )
    index_metadata(sharded.metadata, content)


def _read_safetensors(path: str, content: Content) -> None:
    read_safetensors(path, content)


def _read_sharded_safetensors(path: str, content: Content) -> None:
    index_metadata(read_sharded_safetensors(path, content), content)


#: The inputs that hold pickles (checked for code-execution gadgets).
_PICKLED: Final[dict[str, Callable[[str, Content, bool], None]]] = {
    "pth": _read_torch,
    "sharded": _read_sharded,
}
_READERS: Final[dict[str, Callable[[str, Content], None]]] = {
    "pth": _read_torch,
    "sharded": _read_sharded,
    "safetensors": _read_safetensors,
    "sharded-safetensors": _read_sharded_safetensors,
    "npz": read_npz,
}

"""Sharded checkpoints as Hugging Face lays them out: finding and reading the index, opening
the shards, and writing them (:func:`save_sharded`).

**Reading.**  :func:`shard_layout` resolves what a user names: a shard index
(``pytorch_model.bin.index.json``, ``model.safetensors.index.json``), a folder holding one
(both kinds: the safetensors one, as ``transformers`` prefers it), a folder holding a single
``model.safetensors`` or ``pytorch_model.bin``, or one checkpoint file.  :func:`read_index`
reads an index strictly (bounded size, no key given twice, no huge numbers, no deep nesting,
shard names that are plain file names beside it and not indexes).  :func:`open_shards` opens
every shard lazily and checks that each key lives in exactly the shard the index names.

**Writing.**  :func:`save_sharded` splits a state dict as ``huggingface_hub``'s
``split_torch_state_dict_into_shards`` (what ``transformers``' ``save_pretrained`` uses)
does: keys in order, a new shard when the next storage would tip the current one over
``max_shard_size`` (``"5GB"`` is 5 * 10**9 bytes), a storage larger than that alone in its
shard, tensors sharing a storage in the shard of the first of them, each storage counted
once at its full size.  Files are named as ``save_pretrained`` names them
(``pytorch_model-00001-of-00003.bin`` or ``model-00001-of-00003.safetensors``, and the index
``pytorch_model.bin.index.json`` / ``model.safetensors.index.json`` with
``metadata.total_size``, written as ``json.dumps(index, indent=2, sort_keys=True) + "\\n"``);
one shard is ``pytorch_model.bin`` / ``model.safetensors`` with no index.  safetensors has no
shared storages: overlapping tensors are reduced to one as ``huggingface_hub`` does (the
sorted-first name among those covering the whole storage is kept, each dropped name maps to
it in the metadata).  Every file is written atomically; files of an earlier save that the new
one does not use (other shard counts, a stale index) are removed after it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

from ..errors import FormatError, LimitError, PthError, RemoteError, UnserializableError
from ..source import open_regular
from ..text import escape, short_repr
from . import strictjson

if TYPE_CHECKING:
    from ..model.device import MapLocation
    from ..model.tensor import TensorRef
    from ..reader import Checkpoint
    from .contract import Unknown

__all__ = [
    "SAFETENSORS_INDEX_SUFFIX",
    "TORCH_INDEX_SUFFIXES",
    "SINGLE_FILES",
    "MAX_INDEX",
    "ShardLayout",
    "prefer_safetensors",
    "folder_target",
    "resolve_folder",
    "index_document",
    "shard_layout",
    "read_index",
    "open_shards",
    "open_shard",
    "parse_size",
    "split_shards",
    "save_sharded",
]

SAFETENSORS_INDEX_SUFFIX: Final = ".safetensors.index.json"
TORCH_INDEX_SUFFIXES: Final = (".bin.index.json", ".pt.index.json", ".pth.index.json")
#: What a folder without an index may hold instead, in order of preference.
SINGLE_FILES: Final = ("model.safetensors", "pytorch_model.bin")
#: Bytes an index may have (the largest real ones are a few MB).
MAX_INDEX: Final = 100_000_000
#: ``huggingface_hub``'s units (decimal, as in ``parse_size_to_int``).
SIZE_UNITS: Final = {"TB": 10**12, "GB": 10**9, "MB": 10**6, "KB": 10**3}
PATTERNS: Final = {"pth": "pytorch_model{suffix}.bin", "safetensors": "model{suffix}.safetensors"}


# -- reading -------------------------------------------------------------------------------------


@dataclass
class ShardLayout:
    """What a path names: ``index_path`` (the index, or the one checkpoint file), the folder
    of its shards, the ``weight_map`` (``None`` for one file: its own tensors) and the
    index's ``metadata``."""

    index_path: str
    folder: str
    weight_map: dict[str, str] | None
    metadata: dict[str, Any] = field(default_factory=dict)


def prefer_safetensors(names: list[str]) -> list[str]:
    """Of the index names found in a folder, the safetensors ones if any (``transformers``
    loads those when both kinds are present), else all."""
    st = [n for n in names if n.endswith(SAFETENSORS_INDEX_SUFFIX)]
    return st or names


def resolve_folder(path: str) -> str:
    """What a path names: for a folder, the shard index or the single checkpoint
    (``model.safetensors``, ``pytorch_model.bin``) it holds, as ``transformers`` picks them;
    any other path as it is."""
    return folder_target(path) if os.path.isdir(path) else path


def folder_target(folder: str) -> str:
    """The index, or the single checkpoint, that a folder holds."""
    names = os.listdir(folder)
    indexes = sorted(
        n for n in names if n.endswith((SAFETENSORS_INDEX_SUFFIX, *TORCH_INDEX_SUFFIXES))
    )
    indexes = prefer_safetensors(indexes)
    if len(indexes) > 1:
        raise FormatError(
            f"{escape(folder)}: expected one shard index, found "
            f"{', '.join(escape(n) for n in indexes)}"
        )
    if indexes:
        return os.path.join(folder, indexes[0])
    for name in SINGLE_FILES:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    raise FormatError(
        f"{escape(folder)}: no *.safetensors.index.json, *.bin.index.json, model.safetensors "
        "or pytorch_model.bin in the folder"
    )


def shard_layout(path: str | os.PathLike[str]) -> ShardLayout:
    """Resolve an index, a folder or a single checkpoint file (see the module docstring)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = folder_target(path)
    elif not os.path.exists(path):
        raise FileNotFoundError(2, "No such file or directory", path)
    folder = os.path.dirname(path)
    if not path.endswith(".index.json"):
        return ShardLayout(path, folder, None)
    weight_map, metadata = read_index(path)
    return ShardLayout(path, folder, weight_map, metadata)


def index_document(path: str) -> Any:
    """The index's JSON document, read within bounds."""
    with open_regular(path) as fh:
        return parse_index_document(fh.read(MAX_INDEX + 1), path)


def parse_index_document(data: bytes, path: str) -> Any:
    """An index's JSON document from its bytes (``path`` names it in errors)."""
    if len(data) > MAX_INDEX:
        raise LimitError(f"{escape(path)}: a shard index larger than {MAX_INDEX} bytes")
    try:
        return strictjson.loads(data.decode("utf-8"))
    except FormatError as exc:
        raise FormatError(f"{escape(path)}: not a JSON index ({exc.message})") from None
    except UnicodeDecodeError as exc:
        raise FormatError(
            f"{escape(path)}: not a JSON index (not UTF-8 at byte {exc.start})"
        ) from None


def _shard_name(index: str, shard: str) -> None:
    """Refuse shard names that are paths or indexes (an index is never followed)."""
    if os.path.basename(shard) != shard or shard in ("", ".", "..") or "\0" in shard:
        raise FormatError(f"{escape(index)}: shard name '{escape(shard)}' is a path")
    if shard.endswith(".index.json") or shard == os.path.basename(index):
        raise FormatError(f"shard '{escape(shard)}' is a shard index, not a checkpoint")


def read_index(path: str) -> tuple[dict[str, str], dict[str, Any]]:
    """An index's ``weight_map`` (key -> shard file name) and ``metadata``, checked."""
    return checked_index(index_document(path), path)


def checked_index(doc: Any, path: str) -> tuple[dict[str, str], dict[str, Any]]:
    """An index document's ``weight_map`` and ``metadata``, checked (``path`` names it)."""
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise FormatError(f"{escape(path)}: no 'weight_map' of key -> shard file")
    metadata = doc.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise FormatError(f"{escape(path)}: 'metadata' is {short_repr(metadata)}, not an object")
    for shard in dict.fromkeys(weight_map.values()):
        _shard_name(path, shard)
    return weight_map, metadata


def missing_shard(shard: str) -> str:
    """What a local index's missing shard is reported as."""
    return f"shard '{escape(shard)}' named by the index is missing"


def open_shard(
    path: str, shard: str, map_location: MapLocation = None, unknown: Unknown = "error"
) -> Checkpoint:
    """One shard, opened; its errors name it (``shard 'x.bin': ...``).  A shard of a remote
    index that cannot be fetched is a :class:`~pthfmt.errors.RemoteError` (as a local index's
    missing shard is a ``FormatError``: the index names a file that is not there)."""
    from .. import reader
    from ..remote import is_url

    try:
        return reader.open(path, map_location=map_location, unknown=unknown)
    except PthError as exc:
        exc.message = f"shard '{escape(shard)}': {exc.message}"
        raise exc.locate() from None
    except FileNotFoundError as exc:
        if not is_url(path):
            raise
        raise RemoteError(
            f"shard '{escape(shard)}' named by the index cannot be fetched "
            f"({escape(str(exc.strerror), 300)})"
        ) from None


def open_shards(
    layout: ShardLayout, map_location: MapLocation = None, unknown: Unknown = "error"
) -> tuple[dict[str, Checkpoint], dict[str, TensorRef], dict[str, str]]:
    """Open every shard (metadata only): ``(shards by file name, TensorRef by key, the
    weight map)``.  Each key must be in exactly the shard the index names."""
    from .. import reader

    if layout.weight_map is None:  # one checkpoint file: its tensors are the map
        name = os.path.basename(layout.index_path)
        ckpt = reader.open(layout.index_path, map_location=map_location, unknown=unknown)
        single = dict(ckpt.tensors())
        return {name: ckpt}, single, dict.fromkeys(single, name)
    weight_map = layout.weight_map
    shards: dict[str, Checkpoint] = {}
    refs: dict[str, TensorRef] = {}
    for shard in dict.fromkeys(weight_map.values()):
        path = os.path.join(layout.folder, shard)
        if not os.path.isfile(path):
            raise FormatError(missing_shard(shard))
        ckpt = shards[shard] = open_shard(path, shard, map_location, unknown)
        for key, ref in ckpt.tensors():
            owner = weight_map.get(key)
            if owner is None:
                raise FormatError(
                    f"shard '{escape(shard)}' holds '{escape(key)}', which the index does not list"
                )
            if owner != shard or key in refs:
                raise FormatError(
                    f"key '{escape(key)}' is in shard '{escape(shard)}' but the index puts "
                    f"it in '{escape(owner)}'"
                )
            refs[key] = ref
    missing = [k for k in weight_map if k not in refs]
    if missing:
        raise FormatError(
            f"key '{escape(missing[0])}' is not in its shard '{escape(weight_map[missing[0]])}'"
        )
    return shards, refs, weight_map


# -- splitting -----------------------------------------------------------------------------------


def parse_size(size: int | str) -> int:
    """Bytes of a size such as ``"5GB"`` (``huggingface_hub``'s ``parse_size_to_int``:
    decimal units TB, GB, MB, KB) or an int."""
    if isinstance(size, bool) or not isinstance(size, (int, str)):
        raise TypeError(f"max_shard_size must be an int or a string like '5GB', not {size!r}")
    if isinstance(size, int):
        if size <= 0:
            raise ValueError(f"max_shard_size must be positive, not {size}")
        return size
    text = size.strip()
    unit = text[-2:].upper()
    if unit not in SIZE_UNITS:
        raise ValueError(
            f"max_shard_size {size!r}: the unit must be TB, GB, MB or KB (decimal, as in "
            "transformers)"
        )
    try:
        value = float(text[:-2].strip())
    except ValueError:
        raise ValueError(f"max_shard_size {size!r}: no number before the unit") from None
    if not 0 < value < 1e15:
        raise ValueError(f"max_shard_size {size!r} must be positive")
    return int(value * SIZE_UNITS[unit])


@dataclass
class Split:
    """The shards: file name -> keys (in write order), key -> file name, and the bytes."""

    filename_to_tensors: dict[str, list[str]]
    tensor_to_filename: dict[str, str]
    total_size: int

    @property
    def is_sharded(self) -> bool:
        return len(self.filename_to_tensors) > 1


def split_shards(
    keys: list[str],
    storage_of: Callable[[str], tuple[Any, int]],
    max_size: int,
    pattern: str,
) -> Split:
    """``huggingface_hub``'s split: ``storage_of(key)`` is ``(storage identity, bytes)``."""
    tied: dict[Any, list[str]] = {}
    shards: list[list[str]] = []
    current: list[str] = []
    current_size = total = 0
    for key in keys:
        storage, size = storage_of(key)
        if storage in tied:
            tied[storage].append(key)
            continue
        tied[storage] = [key]
        if size > max_size:
            total += size
            shards.append([key])
            continue
        if current_size + size > max_size:
            shards.append(current)
            current, current_size = [], 0
        current.append(key)
        current_size += size
        total += size
    if current:
        shards.append(current)
    where = {key: i for i, shard in enumerate(shards) for key in shard}
    for group in tied.values():
        shards[where[group[0]]].extend(group[1:])
    if len(shards) == 1:
        name = pattern.format(suffix="")
        return Split({name: shards[0]}, dict.fromkeys(shards[0], name), total)
    by_file: dict[str, list[str]] = {}
    for i, shard in enumerate(shards):
        by_file[pattern.format(suffix=f"-{i + 1:05d}-of-{len(shards):05d}")] = shard
    to_file = {key: name for name, shard in by_file.items() for key in shard}
    return Split(by_file, to_file, total)


# -- writing -------------------------------------------------------------------------------------


def _views(state: Mapping[str, Any]) -> dict[str, Any]:
    """Each key's writer view, with the storage ``pthfmt.save`` would give it."""
    import numpy as np

    from ..model.tensor import Tensor, TensorRef
    from ..writer_storages import assign_storages, make_view

    views: dict[str, Any] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise UnserializableError(f"state dict key {short_repr(key)} is not a string")
        if not isinstance(value, (np.ndarray, TensorRef, Tensor)):
            raise UnserializableError(
                f"save_sharded takes tensors only: '{escape(key)}' is {short_repr(value)}",
                key_path=escape(key),
            )
        try:
            views[key] = make_view(value, False)
        except UnserializableError as exc:
            raise exc.locate(key_path=escape(key)) from None
    assign_storages(list(views.values()))
    return views


def _dedupe(state: dict[str, Any], views: dict[str, Any]) -> dict[str, str]:
    """Drop tensors that overlap another one as ``huggingface_hub`` does for safetensors:
    returns ``{dropped name: kept name}`` and removes the dropped ones from ``state``."""
    by_storage: dict[int, list[str]] = {}
    for key, view in views.items():
        if view.storage.nbytes:
            by_storage.setdefault(id(view.storage), []).append(key)
    dropped: dict[str, str] = {}
    for keys in by_storage.values():
        for group in _overlapping(keys, views):
            if len(group) < 2:
                continue
            storage = views[group[0]].storage
            complete = sorted(k for k in group if _covers(views[k], storage.nbytes))
            if not complete:
                raise UnserializableError(
                    f"tensors {', '.join(repr(escape(k)) for k in sorted(group))} share memory "
                    "but none covers all of it: safetensors cannot hold them (save copies)"
                )
            for key in sorted(group):
                if key != complete[0]:
                    dropped[key] = complete[0]
                    del state[key]
    return dropped


def _span(view: Any) -> tuple[int, int]:
    size = view.dtype.itemsize
    lo = view.offset * size
    if 0 in view.shape:
        return lo, lo
    return lo, lo + size + sum((n - 1) * s * size for n, s in zip(view.shape, view.stride))


def _covers(view: Any, nbytes: int) -> bool:
    import math

    return bool(view.offset == 0 and math.prod(view.shape) * view.dtype.itemsize == nbytes)


def _overlapping(keys: list[str], views: dict[str, Any]) -> list[list[str]]:
    """``huggingface_hub``'s ``_filter_shared_not_shared``: tensors of one storage grouped
    where their byte ranges overlap (each compared with the one before it)."""
    areas = sorted((*_span(views[k]), k) for k in keys)
    groups = [[areas[0][2]]]
    last_stop = areas[0][1]
    for start, stop, key in areas[1:]:
        if start >= last_stop:
            groups.append([key])
        else:
            groups[-1].append(key)
        last_stop = stop
    return groups


def _safetensors_items(state: Mapping[str, Any], views: dict[str, Any]) -> list[Any]:
    """The tensors as items for the safetensors writer; refuses dtypes it lacks."""
    from ..model.tensor import Tensor, TensorRef
    from .safetensors import SAFETENSORS_DTYPES
    from .tensordata import TensorItem

    items = []
    for key, value in state.items():
        view = views[key]
        if view.dtype.name not in SAFETENSORS_DTYPES:
            raise UnserializableError(
                f"safetensors has no {view.dtype.name} dtype ('{escape(key)}')",
                key_path=escape(key),
            )
        source = value.array if isinstance(value, Tensor) else value
        load = source.numpy if isinstance(source, TensorRef) else (lambda s=source: s)
        shape = tuple(int(n) for n in (source.shape))
        items.append(TensorItem(key, view.dtype, shape, load, load))
    return items


def _write_shard(
    path: str, shard: dict[str, Any], views: dict[str, Any], fmt: str, meta: dict[str, str]
) -> None:
    from ..atomic import write_atomically

    if fmt == "pth":
        from ..writer import save

        save(shard, path)
        return
    from .safetensors import write_safetensors

    items = _safetensors_items(shard, views)
    write_atomically(path, lambda write: write_safetensors(write, items, [], meta))


def _remove_stale(folder: str, pattern: str, written: set[str]) -> None:
    """Remove shards and an index of an earlier save that this one does not use (the
    files ``huggingface_hub`` removes before it writes)."""
    prefix, _, suffix = pattern.partition("{suffix}")
    stale = re.compile(
        re.escape(prefix) + r"(-\d{5}-of-\d{5})?" + re.escape(suffix) + r"(\.index\.json)?"
    )
    for name in os.listdir(folder):
        if stale.fullmatch(name) and name not in written:
            path = os.path.join(folder, name)
            if os.path.isfile(path) or os.path.islink(path):
                os.unlink(path)


def save_sharded(
    state_dict: Mapping[str, Any],
    folder: str | os.PathLike[str],
    *,
    max_shard_size: int | str = "5GB",
    format: Literal["pth", "safetensors"] = "pth",
) -> list[str]:
    """Write ``state_dict`` (keys -> numpy arrays, :class:`~pthfmt.TensorRef` or
    :class:`~pthfmt.Tensor`) into ``folder`` as ``save_pretrained`` shards it: see the
    module docstring.  ``format`` is ``"pth"`` (``torch.load`` reads every shard) or
    ``"safetensors"``.  Returns the names of the files written (the index last).
    Everything is checked before a byte is written; each file is written atomically."""
    if format not in PATTERNS:
        raise ValueError(f"format must be 'pth' or 'safetensors', not {format!r}")
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"expected a mapping of tensors, not {type(state_dict).__name__}")
    max_size = parse_size(max_shard_size)
    pattern = PATTERNS[format]
    state = dict(state_dict)
    if not state:  # (it would only remove an earlier save's files)
        raise ValueError("nothing to save: the state dict is empty")
    views = _views(state)
    dropped: dict[str, str] = {}
    if format == "safetensors":
        dropped = _dedupe(state, views)
        views = _views(state)
        _safetensors_items(state, views)  # refuse missing dtypes before writing
    split = split_shards(
        list(state), lambda k: (id(views[k].storage), views[k].storage.nbytes), max_size, pattern
    )
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    meta = {"format": "pt", **({} if split.is_sharded else dropped)}
    written = []
    for name, keys in split.filename_to_tensors.items():
        _write_shard(os.path.join(folder, name), {k: state[k] for k in keys}, views, format, meta)
        written.append(name)
    if split.is_sharded:
        index = {
            "metadata": {"total_size": split.total_size, **dropped},
            "weight_map": split.tensor_to_filename,
        }
        name = pattern.format(suffix="") + ".index.json"
        _write_index(os.path.join(folder, name), index)
        written.append(name)
    _remove_stale(folder, pattern, set(written))
    return written


def _write_index(path: str, index: dict[str, Any]) -> None:
    from ..atomic import write_atomically

    text = (json.dumps(index, indent=2, sort_keys=True) + "\n").encode("utf-8")
    write_atomically(path, lambda write: write(text))

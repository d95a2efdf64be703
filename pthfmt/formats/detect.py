"""Telling a file's kind: torch checkpoint, safetensors, npz or sharded (for convert).

:func:`input_format` looks at the content where it is telling and at the extension otherwise.
Torch containers are recognised by :func:`pthfmt.reader.detect_format` (the one sniffer of
zip, tar and legacy heads); this module adds only what the reader does not read: safetensors
heads, the member names that tell a torch zip from an ``.npz``, and shard indexes.
"""

from __future__ import annotations

import os
import zipfile
from typing import IO, Final, Literal, get_args

from ..errors import PthError
from ..reader import detect_format, is_safetensors_head
from ..sharded import find_index
from ..source import open_regular
from .sharding import resolve_folder

__all__ = [
    "EXTENSIONS",
    "UnknownFormatError",
    "input_format",
    "output_format",
    "find_any_index",
    "is_safetensors_head",
    "FORMATS",
    "Format",
    "InputFormat",
]

#: An output format's name (``format=`` of :func:`pthfmt.convert`).
Format = Literal["pth", "safetensors", "npz"]
#: What :func:`input_format` tells a file to be.
InputFormat = Literal["pth", "safetensors", "npz", "sharded", "sharded-safetensors"]

#: The output formats, and the extensions that name them.
FORMATS: Final[tuple[Format, ...]] = get_args(Format)
EXTENSIONS: Final[dict[str, Format]] = {
    ".pth": "pth",
    ".pt": "pth",
    ".bin": "pth",
    ".ckpt": "pth",
    ".safetensors": "safetensors",
    ".npz": "npz",
}


class UnknownFormatError(PthError):
    """The format of a file cannot be told (from its extension, or its content), or a
    ``format=`` argument names none of :data:`FORMATS`.  (A ``ValueError``, as every
    :class:`~pthfmt.PthError`.)"""


def find_any_index(path: str) -> str:
    """The index file itself, or the one ``*.index.json`` (torch or safetensors shards) in a
    folder."""
    return find_index(path, (".index.json",))


def output_format(path: str, format: Format | None = None) -> Format:
    """``"pth"``, ``"safetensors"`` or ``"npz"``: ``format`` if given, else by extension.
    Raises :class:`UnknownFormatError` when neither tells."""
    if format is not None:
        if format not in FORMATS:
            raise UnknownFormatError(
                f"unknown format {format!r}: format= must be one of {', '.join(FORMATS)}"
            )
        return format
    ext = os.path.splitext(path)[1]
    kind = EXTENSIONS.get(ext.lower())
    if kind is None:
        what = f"the extension {ext!r}" if ext else "a name without an extension"
        raise UnknownFormatError(
            f"cannot tell the output format from {what}: name the file .pth/.pt/.bin/"
            ".ckpt, .safetensors or .npz, or pass format="
        )
    return kind


def _zip_names(fh: IO[bytes]) -> list[str]:
    try:
        with zipfile.ZipFile(fh) as zf:
            return zf.namelist()
    except Exception:  # a sniff: unreadable means "not told by content"
        return []


def input_format(path: str) -> InputFormat:
    """``pth``, ``safetensors``, ``npz``, ``sharded`` or ``sharded-safetensors``: by content
    where it is telling, else by extension (a folder: of what it holds, see
    :func:`pthfmt.formats.sharding.resolve_folder`)."""
    path = resolve_folder(path)
    if path.endswith(".index.json"):
        return "sharded-safetensors" if path.endswith(".safetensors.index.json") else "sharded"
    with open_regular(path) as fh:
        head = fh.read(512)
        size = os.fstat(fh.fileno()).st_size
        kind = detect_format(head)
        names: list[str] = []
        if kind == "zip":
            fh.seek(0)
            names = _zip_names(fh)
    if is_safetensors_head(head, size):
        return "safetensors"
    if names:
        if any(
            n == "data.pkl" or n.endswith("/data.pkl") or n.endswith("/constants.pkl")
            for n in names
        ):
            return "pth"
        if all(n.endswith(".npy") for n in names):
            return "npz"
    ext = os.path.splitext(path)[1].lower()
    if ext in EXTENSIONS:
        return EXTENSIONS[ext]
    if kind in ("legacy", "tar"):
        return "pth"
    raise UnknownFormatError(
        f"cannot tell the format from the extension "
        f"{ext or '(none)'!r} or the content: expected a torch "
        "checkpoint, a .safetensors or an .npz file"
    )

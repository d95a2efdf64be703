"""Old import path of the converter: a re-export of :mod:`pthfmt.engines.convert` and the
format modules' public names (``from pthfmt.conversion import convert`` keeps working)."""

from __future__ import annotations

from .engines.convert import MAX_DEPTH, Conversion, convert
from .formats.detect import EXTENSIONS, FORMATS, UnknownFormatError, output_format
from .formats.npz import NPZ_RAW_DTYPES, SIDECAR
from .formats.safetensors import (
    MAX_HEADER,
    META_PREFIX,
    SAFETENSORS_DTYPES,
    read_safetensors_header,
)

__all__ = [
    "convert",
    "Conversion",
    "FORMATS",
    "SAFETENSORS_DTYPES",
    "NPZ_RAW_DTYPES",
    "META_PREFIX",
    "SIDECAR",
    "UnknownFormatError",
    "output_format",
    "read_safetensors_header",
    "EXTENSIONS",
    "MAX_HEADER",
    "MAX_DEPTH",
]

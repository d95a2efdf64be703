"""What a container reader needs to know about the load, and what it hands back."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Literal

from ..model.device import Device
from ..model.tensor import StorageInfo


def not_a_checkpoint(file_size: int) -> str:
    """What a file of no known format is called: nothing of a foreign file is quoted."""
    return (
        "not a torch checkpoint: no zip, legacy pickle, tar or safetensors signature at the "
        f"start of the {file_size}-byte file"
    )


def copy_budget(file_size: int) -> int:
    """Bytes that pickled values may copy (see ``TorchHandlers.charge``): a genuine
    checkpoint copies at most its own size; twice that plus slack is never reached."""
    return 2 * file_size + (64 << 20)


#: What to do with globals outside the allowlist: refuse them, read them all as inert stubs, or
#: stub just these qualified class names (``{"omegaconf.dictconfig.DictConfig"}``).
Unknown = Literal["error", "stub"] | Collection[str]


@dataclass(frozen=True)
class Options:
    mapper: Callable[[str], Device]
    eager: bool  # tensors become numpy arrays while unpickling
    mmap: bool  # arrays view the mapped file where the bytes allow it
    unknown: Unknown = "error"  # see Unknown


@dataclass
class Parsed:
    """A container's reading of a file."""

    format: str
    obj: Any
    storages: dict[str, StorageInfo]
    records: list[str]
    byteorder: str = "little"
    version: str | None = None
    archive_name: str | None = None
    #: a TorchScript archive's ``constants.pkl`` object
    constants: Any = None
    #: a safetensors header's ``__metadata__`` (strings to strings)
    metadata: dict[str, str] | None = None
    #: the ``sys_info`` dict of a legacy or tar file (type sizes, endianness)
    sys_info: Any = None


def is_tensor_record(name: str) -> bool:
    """Whether a torch zip record holds tensor data: ``<archive>/data/<key>`` (TorchScript's
    ``constants/`` too); what ``validate(data=False)`` and a remote ``open`` do not read."""
    return name.split("/", 1)[-1].startswith(("data/", "constants/"))

"""Regenerate the fuzzing seed corpus (small torch-written checkpoints); needs torch."""

from __future__ import annotations

import io
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch

OUT = Path(__file__).parent / "corpus"


def main() -> None:
    OUT.mkdir(exist_ok=True)
    torch.manual_seed(0)
    base = torch.arange(12, dtype=torch.float32)
    sd = OrderedDict(
        w=base.view(3, 4),
        t=base.view(3, 4).t(),
        b=torch.tensor([1, 2], dtype=torch.int16),
        h=torch.ones(2, dtype=torch.bfloat16),
        u=torch.tensor([3], dtype=torch.uint16),
        p=torch.nn.Parameter(torch.zeros(2)),
        e=torch.empty(0, 2),
        s=torch.tensor(2.5),
    )
    sd._metadata = OrderedDict({"": {"version": 1}})
    ckpt = {
        "epoch": 3,
        "model": sd,
        "opt": {
            "state": {0: {"step": torch.tensor(1.0)}},
            "param_groups": [{"lr": 0.1, "params": [0]}],
        },
        "loss": 0.25,
        "names": ["a", "b"],
        "flags": (True, None),
    }
    torch.save(sd, OUT / "state_dict.pt")
    torch.save(ckpt, OUT / "checkpoint.pt")
    torch.save(ckpt, OUT / "protocol4.pt", pickle_protocol=4)
    torch.save(sd, OUT / "legacy.pt", _use_new_zipfile_serialization=False)
    torch.save([base, base[2:5], torch.tensor([1 + 2j])], OUT / "views.pt")
    # a DEFLATE re-zip of the state dict
    src = zipfile.ZipFile(OUT / "state_dict.pt")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    (OUT / "deflated.pt").write_bytes(buf.getvalue())
    print(f"wrote {len(list(OUT.iterdir()))} seeds with torch {torch.__version__}", file=sys.stderr)


if __name__ == "__main__":
    main()

"""pthfmt's reader without torch: files that are not checkpoints at all.  (Every container
variant, dtype, view and value kind torch writes is read in ``tests/interop/test_reader_torch.py``;
the spec's vectors in ``test_spec_vectors.py``; malformed zip, tar and pickle streams in
``test_ziparchive.py``, ``test_tar.py`` and ``test_unpickler.py``.)"""

from __future__ import annotations

import io
import pickle
import zipfile

from pthfmt import FormatError
from tests.support.checks import both_raise


def test_error_not_a_checkpoint(tmp_path):
    cases = {
        "text.pt": (
            b"hello \x1b[31mworld\n",
            "not a torch checkpoint: no zip, legacy pickle, tar or safetensors signature at the "
            "start of the 17-byte file",  # nothing of a foreign file is quoted
        ),
        "empty.pt": (b"", "empty file"),
        "pickle.pt": (pickle.dumps({"a": 1}, 2), "magic number"),
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("foo.txt", b"x")
    cases["nofolder.zip"] = (buf.getvalue(), "foo.txt")
    header = b'{"t":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}'
    cases["model.safetensors.pt"] = (
        len(header).to_bytes(8, "little") + header + bytes(4),
        "safetensors",
    )
    for name, (data, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        err = both_raise(path, FormatError, match=message)
        assert isinstance(err, FormatError), name

"""New files get the mode any program's new file gets: 0o666 less the umask.

`tempfile.mkstemp` (behind every atomic write) and safetensors' `save_file` both create files
as 0600, so a video or a model folder written by them could not be shared or served from the
same machine without a chmod.
"""

from __future__ import annotations

import os
from pathlib import Path


def umask_mode() -> int:
    """Returns 0o666 less the process umask (reading the umask means setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def save_tensors(tensors: dict, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors' save_file, then the file's mode set as for any new file."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    os.chmod(path, umask_mode())

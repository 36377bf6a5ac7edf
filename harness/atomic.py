"""Writing a file so that readers only ever see the old or the complete new content.

Write to a temporary name private to this process, then `os.replace` it onto the target. The temporary name
holds the process id, so concurrent runs (two lanes of a sweep on one cache, a SLURM array on a shared
file system) never write into each other's partial files.
"""

import os
from pathlib import Path


def private_temporary(path):
    """`<dir>/.<name>.tmp<pid>`: a sibling of `path` that no other process uses."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def replace_from_temporary(write, path):
    """Call `write(temporary_path)`, then move the result onto `path` in one step; returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = private_temporary(path)
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path

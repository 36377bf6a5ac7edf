"""Finding dataset files: the read-only mirror first, then the cache root, then a checked download.

The mirror (env `REPRO_DATA_MIRROR` or `data.mirror`) is never written to. Files are verified against
their published checksums wherever they are found.
"""

import hashlib
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

from harness.atomic import replace_from_temporary
from harness.errors import DataNotFoundError


@dataclass(frozen=True)
class DataPaths:
    root: Path  # writable cache directory
    mirror: Path | None  # read-only offline mirror, or None
    download: bool  # whether a missing file may be downloaded

    @classmethod
    def from_config(cls, cfg):
        mirror = cfg.get("mirror")
        return cls(Path(cfg["root"]).expanduser(), Path(mirror).expanduser() if mirror else None, bool(cfg.get("download", True)))


@dataclass(frozen=True)
class RemoteFile:
    name: str  # canonical file name (the mirror uses the same names)
    md5: str
    url: str | None = None


def file_md5(path, chunk=1 << 20):
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fetch_files(dataset, paths, subdir, files, mirror_subdir=None, how_to=""):
    """Return a directory under `paths.root` holding every file of `files`, each with a matching md5.

    Looks in the mirror (`<mirror>/<mirror_subdir>/<name>`, copied into the root), then the root itself,
    then downloads when allowed. Raises DataNotFoundError naming every place it looked.
    """
    target = paths.root / subdir
    looked = []
    for remote in files:
        destination = target / remote.name
        candidates = []
        if paths.mirror is not None:
            candidates.append(paths.mirror / (mirror_subdir or subdir) / remote.name)
        candidates.append(destination)
        if _first_verified(candidates, remote, destination):
            continue
        looked.extend(str(c) for c in candidates)
        if paths.download and remote.url and _download(remote, destination):
            continue
        if not paths.download:
            why = " (downloads are off: data.download=false)"
        else:
            why = f" and could not download {remote.url} (no network?)" if remote.url else ""
        raise DataNotFoundError(
            f"{dataset}: {remote.name} (md5 {remote.md5}) was not found; looked at {', '.join(looked)}{why}"
            + f". {how_to or 'Put the file in one of those places'}, or point REPRO_DATA_MIRROR (or data.mirror) at a directory holding it."
        )
    return target


def _first_verified(candidates, remote, destination):
    for path in candidates:
        if path.is_file() and file_md5(path) == remote.md5:
            if path != destination:
                replace_from_temporary(lambda temporary, source=path: shutil.copyfile(source, temporary), destination)
            return True
    return False


def _download(remote, destination, timeout=30):
    """Download with a socket timeout (never hangs without network); False when it fails."""
    from torchvision.datasets.utils import download_url

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        download_url(remote.url, str(destination.parent), filename=remote.name, md5=remote.md5)
        return destination.is_file() and file_md5(destination) == remote.md5
    except Exception:  # any network failure means "not available here"; the caller reports where it looked
        return False
    finally:
        socket.setdefaulttimeout(previous)

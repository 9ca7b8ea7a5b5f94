"""MNIST-style IDX files, checked and extracted before torchvision reads them.

torchvision's ``MNIST`` reports a truncated archive as a failed download, refuses an intact
``.gz``-only folder unless it may download, and fails deep inside its parser on a truncated
extracted file, without naming it. :func:`prepare_raw` does these steps itself, with errors
that name the file and what was expected:

* an extracted file (``train-images-idx3-ubyte``) is accepted when its header is an IDX header
  (LeCun et al., "The MNIST database", file format section) and its size equals what the header
  announces;
* otherwise its archive (``.gz``) must have torchvision's published MD5; it is then extracted
  (atomically) next to itself -- which also rebuilds a damaged extracted file.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import shutil
import struct
from pathlib import Path

from ticketlab.errors import ConfigError

#: IDX element type codes and their sizes in bytes.
IDX_TYPES = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}


def idx_problem(path: Path) -> str | None:
    """``None`` when ``path`` is a complete IDX file, else what is wrong with it (one phrase)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in IDX_TYPES or not 1 <= head[3] <= 4:
                return f"its first bytes {head.hex() or '(none)'} are not an IDX header (00 00 <type> <ndim>)"
            ndim = head[3]
            raw = f.read(4 * ndim)
            if len(raw) < 4 * ndim:
                return f"it ends inside its header ({size} bytes)"
            dims = struct.unpack(f">{ndim}I", raw)
    except OSError as e:
        return f"it cannot be read ({e})"
    expected = 4 + 4 * ndim + math.prod(dims) * IDX_TYPES[head[2]]
    if size != expected:
        return f"it has {size} bytes, but its header ({' x '.join(map(str, dims))}) announces {expected}"
    return None


def md5(path: Path) -> str:
    """MD5 hex digest of a file."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def extract(gz: Path, dest: Path) -> None:
    """Decompress ``gz`` to ``dest`` atomically (temporary file, then rename)."""
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    try:
        with gzip.open(gz, "rb") as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


def prepare_raw(raw: Path, resources: list[tuple[str, str]], dataset: str) -> list[str]:
    """Check (and extract) the IDX files of ``raw``; return the names of those missing altogether.

    Args:
        raw: the ``<root>/<Dataset>/raw`` folder.
        resources: torchvision's ``(archive name, MD5)`` pairs for the dataset.
        dataset: config name, for messages.

    Returns:
        Names (without ``.gz``) of files with neither a usable extracted copy nor an archive.

    Raises:
        ConfigError: an archive with the wrong MD5, an archive that cannot be extracted (read-only
            folder, broken gzip), or a damaged extracted file with no archive to rebuild it from --
            each naming the file.
    """
    missing = []
    for archive, digest in resources:
        name = archive[:-3] if archive.endswith(".gz") else archive
        plain, gz = raw / name, raw / archive
        problem = idx_problem(plain) if plain.exists() else None
        if plain.exists() and problem is None:
            continue
        if not gz.exists():
            if plain.exists():
                raise ConfigError(f"dataset.name={dataset}: {plain} is damaged ({problem}) and there is no {archive} "
                                  "beside it to rebuild it from; copy the dataset files again.")
            missing.append(name)
            continue
        got = md5(gz)
        if got != digest:
            raise ConfigError(f"dataset.name={dataset}: {gz} is corrupt or truncated: MD5 {got} ({gz.stat().st_size} "
                              f"bytes), expected {digest} (torchvision's published archive); copy it again.")
        if not os.access(raw, os.W_OK):
            raise ConfigError(f"dataset.name={dataset}: {raw} is read-only, but {archive} must be extracted next to "
                              "itself; copy the folder to a writable place (e.g. `make data`) and point DATA_DIR or "
                              "dataset.root there.")
        try:
            extract(gz, plain)
        except (OSError, EOFError) as e:
            raise ConfigError(f"dataset.name={dataset}: {gz} cannot be extracted ({type(e).__name__}: {e}).") from e
        problem = idx_problem(plain)
        if problem is not None:
            raise ConfigError(f"dataset.name={dataset}: {plain}, extracted from {archive}, is not a valid IDX file "
                              f"({problem}).")
    return missing


__all__ = ["extract", "idx_problem", "md5", "prepare_raw"]

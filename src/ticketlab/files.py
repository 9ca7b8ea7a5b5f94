"""Atomic result files in the run folder: ``metrics.jsonl``, ``summary.json``, ``last.ckpt``, masks.

Every file is written to a temporary name in the same folder and renamed over the target
(``os.replace`` is atomic on POSIX), so an interrupted run never leaves a half-written file.
JSON files are strict JSON: non-finite numbers (a NaN loss, an infinite compression ratio) are
written as ``null`` (:func:`jsonable`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed over ``path`` (mode 0644).

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise _disk_full(path, 0) from e
        raise
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        if not _is_disk_full(e, path):
            raise
        written = os.path.getsize(tmp) if os.path.exists(tmp) else 0
        os.unlink(tmp)  # before measuring the free space: it is what the next attempt has
        raise _disk_full(path, written) from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class DiskFullError(OSError):
    """A result file could not be written because its file system is full (``errno.ENOSPC``); the file it
    would have replaced is untouched."""


def _is_disk_full(e: BaseException, path: Path) -> bool:
    """An ENOSPC, or torch's zip writer failing (``unexpected pos``, ``iostream error``) on a file system with
    (almost) no space left: torch reports a full disk that way."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(e, RuntimeError) and any(m in str(e) for m in ("unexpected pos", "iostream error",
                                                                  "file write failed")):
        try:
            return shutil.disk_usage(path.parent).free < 64 * 2 ** 20
        except OSError:
            return True
    return False


def _disk_full(path: Path, written: int) -> DiskFullError:
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = -1
    need = max(written, path.stat().st_size if path.exists() else 0)
    return DiskFullError(errno.ENOSPC, f"no space left on the device holding {path.parent}: {path.name} needs more "
                                       f"than {need / 2 ** 20:.1f} MiB and {free / 2 ** 20:.1f} MiB are free (the "
                                       f"previous {path.name}, if any, is kept). Free space or move "
                                       "paths.output_dir, then run the same command to continue")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file + fsync + rename)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def jsonable(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by ``None`` (recursively), tuples as lists.

    ``json.dumps`` would otherwise write bare ``NaN``/``Infinity``, which is not JSON (RFC 8259) and
    which strict readers (``jq``, JavaScript, pandas with ``engine="pyarrow"``) reject.
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    return obj


def dumps(obj: Any, indent: int | None = None) -> str:
    """Strict JSON text of ``obj`` (non-finite numbers become ``null``; other values via ``str``)."""
    return json.dumps(jsonable(obj), indent=indent, allow_nan=False, default=str)


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented strict JSON (see :func:`jsonable`), atomically."""
    atomic_write_bytes(path, (dumps(obj, indent=2) + "\n").encode())


def atomic_write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` as strict JSON lines (one object per line), atomically (the whole file each time)."""
    atomic_write_bytes(path, "".join(dumps(r) + "\n" for r in rows).encode())


def atomic_torch_save(path: Path, obj: Any) -> None:
    """``torch.save`` to ``path`` atomically.

    Raises:
        DiskFullError: the file system is full (the previous file at ``path`` is untouched)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # our handle: closed (space freed) on any error
        torch.save(obj, f)


def folder_problem(path: Path, key: str) -> str | None:
    """Why ``path`` cannot hold a run's (or a sweep's) files, or ``None`` when it can: creates the folder if
    missing and writes and removes a probe file in it, so a read-only file system, missing permissions and
    a file in the way are all found before anything else is written.

    Args:
        path: the folder.
        key: the config key it came from (``hydra.run.dir``), named in the message.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        return (f"{key}={path} is an existing file, not a folder; give a folder path (or leave {key} unset for "
                "its default under paths.output_dir).")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return (f"{key}={path} cannot be written ({e.strerror or e}); give a folder on a writable file system "
                "(or set paths.output_dir / $TICKETLAB_OUTPUTS to move every run).")
    return None


class UnsafeFileError(ValueError):
    """A torch file that holds more than tensors and plain values (:func:`load_tensors` refuses it)."""


def load_tensors(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU: tensors, plain containers and numbers only, so that a
    file from someone else (a colleague's run folder, a paper's mask file) cannot run code when it is read.

    Raises:
        UnsafeFileError: the file's pickle names anything else (the message names the file and the global).
        OSError, RuntimeError: unreadable or damaged file (as ``torch.load`` raises them).
    """
    import pickle

    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        what = str(e).split("WeightsUnpickler error:")[-1].strip().splitlines()[0][:200]
        raise UnsafeFileError(f"{path} holds more than tensors and plain values ({what}); TicketLab does not "
                              "unpickle it, since that could run code from the file (the files TicketLab "
                              "writes hold none)") from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSON-lines file."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_json(path: Path) -> Any | None:
    """The JSON content of ``path``, or ``None`` when it is missing or not valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None

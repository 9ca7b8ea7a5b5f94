"""Read an offline W&B run file (``run-<id>.wandb``) back, for tests.

wandb 0.31 writes no ``wandb-summary.json`` offline; the ``.wandb`` file is a LevelDB-style log
(7-byte file header, 32 KiB blocks, records with a 7-byte ``<IHB`` header: crc32, length, type
FULL=1/FIRST=2/MIDDLE=3/LAST=4) of ``wandb_internal_pb2.Record`` protobufs
(wandb's ``wandb/sdk/internal/datastore.py``).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32 * 1024


def records(path: Path):
    """Yield every ``Record`` of the file."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", "not a W&B run file"
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - (pos % BLOCK)
        if left < 7:  # block trailer padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        payload = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        if kind in (1, 2):
            buf = payload
        else:
            buf += payload
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            yield rec
            buf = b""


def wait_until_final(path: Path, timeout_s: float = 30.0) -> None:
    """Wait until the run file holds its ``exit`` record.

    wandb-core finalizes an offline run file asynchronously: on the first run of a process the file
    can still be empty when ``finish()`` returns (it is complete once the process exits, or a few
    seconds later). Raises ``TimeoutError`` after ``timeout_s``.
    """
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if any(r.WhichOneof("record_type") == "exit" for r in records(path)):
                return
        except Exception:  # a partially written record
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{path} has no exit record after {timeout_s} s")


def read_run(path: Path) -> dict:
    """``{"history": [ {key: value} per log call ], "summary": {...}, "config": {...}, "run": {run_id,
    display_name, run_group, job_type}}``."""
    out = {"history": [], "summary": {}, "config": {}, "run": {}}
    for rec in records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            row = {}
            for item in rec.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            out["history"].append(row)
        elif kind == "summary":
            for item in rec.summary.update:
                out["summary"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "run":
            out["run"] = {"run_id": rec.run.run_id, "display_name": rec.run.display_name,
                          "run_group": rec.run.run_group, "job_type": rec.run.job_type}
            for item in rec.run.config.update:
                out["config"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return out

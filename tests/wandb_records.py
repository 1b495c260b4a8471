"""Reading an offline W&B run file (``run-*.wandb``) in tests: the records wandb wrote.

The file is wandb's append-only log: a 7-byte header (``:W&B``, magic 0xBEE1, version 0), then
32 KiB blocks of records, each ``crc32 (4) | length (2) | type (1) | data``, a record split
across blocks as FIRST / MIDDLE / LAST pieces; the data are ``wandb_internal_pb2.Record``s.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
HEADER = 7  # per record piece
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str | Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B run file")
    pos, out, pending = 7, [], b""
    while pos + HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < HEADER:  # block trailer padding
            pos += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        piece = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:
            continue
        if kind == FULL:
            pending = piece
        elif kind == FIRST:
            pending = piece
            continue
        elif kind == MIDDLE:
            pending += piece
            continue
        elif kind == LAST:
            pending += piece
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending)
        out.append(record)
        pending = b""
    return out


def run_contents(path: str | Path) -> dict[str, Any]:
    """{"config": {key: value}, "summary": {key: value}, "history": [{key: value}, ...]}"""
    config: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "config":
            for item in record.config.update:
                config[item.key] = json.loads(item.value_json)
        elif kind == "summary":
            for item in record.summary.update:
                summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "history":
            history.append(
                {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.history.item
                }
            )
        elif kind == "run":
            for item in record.run.config.update:
                config[item.key] = json.loads(item.value_json)
    return {"config": config, "summary": summary, "history": history}

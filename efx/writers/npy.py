"""A folder of .npy shards: `embeddings-NNNNN.npy` + `paths-NNNNN.txt`, `manifest.json`,
`failures.jsonl`. Every file is loadable without efx (numpy, a text reader, a JSON reader).
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any

import numpy as np

from ..errors import EfxError

MANIFEST = "manifest.json"
FAILURES = "failures.jsonl"
_SHARD_PATTERNS = ("embeddings-*.npy", "paths-*.txt")


def check_target(output: str, overwrite: bool) -> None:
    if os.path.isfile(output):
        raise EfxError(
            f"OUTPUT {output} is a file; .npy shards go in a folder (end the path in .h5 for HDF5)"
        )
    if not os.path.isdir(output) or not os.listdir(output):
        return
    if not os.path.isfile(os.path.join(output, MANIFEST)):
        raise EfxError(
            f"OUTPUT folder {output} is not empty and is not an efx output; "
            "choose a new or empty folder"
        )
    if not overwrite:
        raise EfxError(f"OUTPUT {output} already exists; pass --overwrite to replace it")


def unstorable(path: str) -> str | None:
    """Why this format cannot store `path` (one path per line in paths-*.txt), or None."""
    if "\n" in path or "\r" in path:
        return "path contains a line break, which .npy shards' paths-*.txt cannot hold (use .h5)"
    return None


def _remove_previous(output: str) -> None:
    """Delete an earlier efx output's own files (and nothing else) from `output`."""
    names = [MANIFEST, FAILURES]
    for pattern in _SHARD_PATTERNS:
        names += [os.path.basename(p) for p in glob.glob(os.path.join(output, pattern))]
    for name in names:
        path = os.path.join(output, name)
        if os.path.exists(path):
            os.remove(path)


def _write_atomically(path: str, write: Any) -> None:
    scratch = path + ".partial"
    with open(scratch, "wb") as file:
        write(file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(scratch, path)


class NpyWriter:
    def __init__(self, output: str, attrs: dict[str, Any], shard_size: int = 10_000) -> None:
        if shard_size < 1:
            raise EfxError(f"--shard-size must be at least 1. Received: {shard_size}")
        os.makedirs(output, exist_ok=True)
        _remove_previous(output)
        self._output = output
        self._attrs = dict(attrs)
        self._shard_size = shard_size
        self._dim = int(attrs["feature_dim"])
        self._shards: list[dict[str, Any]] = []
        self._count = 0
        self._failed = 0
        self._pending_paths: list[str] = []
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0
        self._failures = open(os.path.join(output, FAILURES), "w", encoding="utf-8")  # noqa: SIM115
        self._write_manifest(complete=False)

    def write(self, paths: list[str], embeddings: np.ndarray) -> None:
        start = 0
        while start < len(paths):
            take = min(len(paths) - start, self._shard_size - self._pending_rows)
            self._pending_paths += paths[start : start + take]
            self._pending.append(np.asarray(embeddings[start : start + take], dtype=np.float32))
            self._pending_rows += take
            start += take
            if self._pending_rows == self._shard_size:
                self._flush_shard()

    def fail(self, path: str, reason: str) -> None:
        record = {
            "path": path.encode("utf-8", "surrogateescape").decode("utf-8", "replace"),
            "error": reason,
        }
        self._failures.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._failures.flush()
        self._failed += 1

    def close(self) -> None:
        self._flush_shard()
        self._failures.close()
        self._write_manifest(complete=True)

    def abort(self) -> None:
        if not self._failures.closed:
            self._flush_shard()
            self._failures.close()
            self._write_manifest(complete=False)

    def _flush_shard(self) -> None:
        if not self._pending_rows:
            return
        number = len(self._shards)
        embeddings_name = f"embeddings-{number:05d}.npy"
        paths_name = f"paths-{number:05d}.txt"
        block = np.concatenate(self._pending).reshape(-1, self._dim)
        text = "".join(path + "\n" for path in self._pending_paths)
        _write_atomically(os.path.join(self._output, embeddings_name), lambda f: np.save(f, block))
        _write_atomically(
            os.path.join(self._output, paths_name),
            lambda f: f.write(text.encode("utf-8", "surrogateescape")),
        )
        self._shards.append(
            {"embeddings": embeddings_name, "paths": paths_name, "rows": len(block)}
        )
        self._count += len(block)
        self._pending, self._pending_paths, self._pending_rows = [], [], 0
        self._write_manifest(complete=False)

    def _write_manifest(self, complete: bool) -> None:
        manifest = {
            **self._attrs,
            "format": "efx-npy-shards/1",
            "complete": complete,
            "count": self._count,
            "failed": self._failed,
            "shard_size": self._shard_size,
            "shards": self._shards,
            "failures": FAILURES,
        }
        data = (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
        _write_atomically(os.path.join(self._output, MANIFEST), lambda f: f.write(data))


def _manifest(output: str) -> dict[str, Any]:
    try:
        with open(os.path.join(output, MANIFEST), encoding="utf-8") as file:
            manifest: dict[str, Any] = json.load(file)
    except (OSError, ValueError) as error:
        raise EfxError(f"cannot read {MANIFEST} in {output}: {error}") from error
    return manifest


def read(output: str) -> tuple[list[str], np.ndarray]:
    manifest = _manifest(output)
    paths: list[str] = []
    blocks = []
    for shard in manifest["shards"]:
        blocks.append(np.load(os.path.join(output, shard["embeddings"]), allow_pickle=False))
        with open(
            os.path.join(output, shard["paths"]),
            encoding="utf-8",
            errors="surrogateescape",
            newline="\n",
        ) as file:
            paths += file.read().split("\n")[:-1]
    dim = int(manifest.get("feature_dim", 0))
    embeddings = np.concatenate(blocks) if blocks else np.zeros((0, dim), np.float32)
    return paths, embeddings


def read_failures(output: str) -> list[dict[str, str]]:
    path = os.path.join(output, FAILURES)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]


def describe(output: str) -> dict[str, Any]:
    manifest = _manifest(output)
    failures = read_failures(output)
    return {
        "count": int(manifest.get("count", 0)),
        "feature_dim": manifest.get("feature_dim"),
        "dtype": "float32",
        "model": manifest.get("model"),
        "image_size": manifest.get("image_size"),
        "resize": manifest.get("resize"),
        "exif_orientation": manifest.get("exif_orientation"),
        "failed": len(failures),
        "failures": failures[:20],
        "complete": bool(manifest.get("complete", False)),
        "created": manifest.get("created"),
        "efx_version": manifest.get("efx_version"),
        "tensorflow_version": manifest.get("tensorflow_version"),
        "device": manifest.get("device"),
        "shards": len(manifest.get("shards", [])),
    }

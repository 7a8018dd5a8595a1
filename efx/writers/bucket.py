"""Outputs in a bucket (`s3://bucket/emb.parquet`, `gs://…/emb/`): a local working copy that the
writers write as they write any folder, mirrored to the bucket. No TensorFlow.

An object store has no rename and no append, so a folder output cannot be written in place.
Instead efx writes the output in a working copy (under EFX_CACHE_DIR, by the URL's hash) and
uploads it by `sync`: every file changed since its last upload, each whole (an object PUT is
atomic: a reader sees the old object or the new one), then the manifest, then the deletion of
objects no longer part of the output. So the bucket always holds an output as the manifest
describes it, and `complete` there means every row is there. Parquet's `part-NNNNN.parquet`
files are finished whole before they exist, so glob readers (DuckDB, Polars) of the bucket see
whole files only.

While a run writes, a thread syncs when a new file appears in the working copy (a .npy shard
or Parquet part was finished) and at least every SYNC_SECONDS; the run ends with a last sync
(also when it stops on an error or Ctrl-C: the bucket then holds the rows so far, marked
incomplete). `--update` writes a new version beside the working copy and syncs once, at the end.

Resuming: the working copy records the SHA-256 of the manifest it last uploaded or downloaded,
and of the one being uploaded (`SYNC_STATE` beside it). If the bucket's manifest is one of
those, the working copy is this output's latest state (it may hold rows written after the last
sync: a kill -9 on this machine loses nothing); otherwise (another machine, a cleared cache) the
output is downloaded first, and a run resumes from what the bucket holds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from typing import Any

from .. import remote
from ..errors import EfxError
from ..files import write_atomically
from ..formats import FOLDER_FORMATS, FORMATS

MANIFESTS = {name: FORMATS[name].manifest for name in FOLDER_FORMATS}  # (efx.formats)
SYNC_SECONDS = 60.0  # the longest the bucket lags the working copy while a run writes
_POLL_SECONDS = 1.0
SYNC_STATE = ".sync.json"  # beside the working copy (never uploaded)
READ_COPY = ".read"  # beside it: an output read (efx info, similar) that is not its state


def working_copy(url: str) -> str:
    """The local folder where the output at `url` is written and read."""
    from ..model import cache_dir

    digest = hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]
    name = url.rstrip("/").rsplit("/", 1)[-1] or "output"
    return os.path.join(cache_dir(), "outputs", digest, name)


class Bucket:
    """The output at `url` and its working copy `local` (efx.writers.bucket)."""

    def __init__(self, url: str, fmt: str) -> None:
        if fmt not in MANIFESTS:
            raise EfxError(
                f"an output in a bucket must be a folder of .npy shards or Parquet: HDF5 needs a "
                f"local file (it is written in place). Write it locally and copy it after (for "
                f"example `aws s3 cp out.h5 {url}`), or name a Parquet output "
                f"({url.rstrip('/').rsplit('.', 1)[0]}.parquet). Received: OUTPUT {url}"
            )
        if remote.protocol(url) in ("http", "https"):
            raise EfxError(
                "an output cannot be written over plain HTTP: name a bucket (s3://, gs://) or a "
                f"local path. Received: OUTPUT {url}"
            )
        self.url = url.rstrip("/")
        self.format = fmt
        self.local = working_copy(url)
        self._fs, self._root = remote.filesystem(self.url)
        self._state_path = self.local + SYNC_STATE
        self._lock = threading.Lock()
        self._uploaded: dict[str, list[int]] = {}  # relative name -> local [size, mtime_ns]
        self._manifest_sha = ""

    # -- the bucket's side --------------------------------------------------------------

    def _remote_files(self) -> dict[str, int]:
        """Every object below the output's prefix: relative name -> size."""
        try:
            self._fs.invalidate_cache(self._root)
            found = self._fs.find(self._root, detail=True)
        except Exception as error:  # noqa: BLE001
            raise EfxError(f"cannot use OUTPUT {self.url}: {remote.reason(error)}") from None
        if not found:  # before any work: a bucket that is not there, or cannot be written to
            bucket = self._root.split("/", 1)[0]
            try:
                self._fs.ls(bucket)
            except Exception as error:  # noqa: BLE001
                raise EfxError(
                    f"cannot use OUTPUT {self.url}: {remote.reason(error)} ({bucket})"
                ) from None
        prefix = self._root.rstrip("/") + "/"
        return {
            path[len(prefix) :]: int(info.get("size") or 0)
            for path, info in found.items()
            if path.startswith(prefix) and info.get("type", "file") == "file"
        }

    def _remote_manifest(self, names: dict[str, int]) -> bytes | None:
        manifest = MANIFESTS[self.format]
        if manifest not in names:
            return None
        data: bytes = self._fs.cat_file(f"{self._root}/{manifest}")
        return data

    # -- preparing the working copy -------------------------------------------------------

    def prepare(self, mode: str) -> str:
        """Make the working copy what a run in `mode` starts from, and return its path.

        "new": empty (an existing output is refused, as a local one is); "overwrite": empty,
        the bucket's files deleted at the first sync; "resume"/"update"/"read": the output as the
        bucket holds it (the working copy as it is, if it is still the bucket's latest state).
        Refuses a prefix that holds other objects than an efx output."""
        names = self._remote_files()
        manifest = self._remote_manifest(names)
        if manifest is None and names:
            raise EfxError(
                f"OUTPUT {self.url} holds objects and is not an efx output; choose a new or "
                "empty prefix"
            )
        if mode == "read" and manifest is None:
            raise EfxError(f"output not found: {self.url}")
        if mode == "new" and manifest is not None:
            self._refuse_existing(manifest)
        state = self._read_state()
        # The bucket holds the manifest this working copy last uploaded (or was uploading when
        # the upload failed or the run was killed): the working copy is that state or newer.
        ours = {state.get("manifest_sha256"), state.get("pending_sha256")} - {None}
        current = manifest is not None and _sha(manifest) in ours
        if mode in ("resume", "update", "read") and current and os.path.isdir(self.local):
            self._uploaded = state.get("files", {})
            self._manifest_sha = _sha(manifest)  # type: ignore[arg-type]
            self._forget_missing(names)
            return self.local
        if mode == "read":  # never in place of a working copy a run on this machine may use
            return self._download(list(names), self.local + READ_COPY)
        self._wipe()
        if mode == "overwrite" or manifest is None:
            self._uploaded = {name: [-1, -1] for name in names}  # to be deleted at the 1st sync
            return self.local
        self._download(list(names), self.local)
        self._uploaded = {name: _local_facts(self._path(name)) for name in names}
        self._manifest_sha = _sha(manifest)
        self._write_state()
        return self.local

    def _refuse_existing(self, manifest: bytes) -> None:
        """As a local OUTPUT that exists is refused (efx.writers.check_output)."""
        try:
            complete = bool(json.loads(manifest).get("complete"))
        except ValueError:
            complete = False
        if complete:
            raise EfxError(f"OUTPUT {self.url} already exists; pass --overwrite to replace it")
        raise EfxError(
            f"OUTPUT {self.url} already exists, unfinished (the run that wrote it was stopped): "
            "pass --resume to finish it, or --overwrite to replace it"
        )

    def _forget_missing(self, names: dict[str, int]) -> None:
        """Files recorded as uploaded that the bucket no longer has are uploaded again."""
        for name in list(self._uploaded):
            if name not in names:
                del self._uploaded[name]

    def _wipe(self) -> None:
        shutil.rmtree(self.local, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.remove(self._state_path)
        os.makedirs(os.path.dirname(self.local), exist_ok=True)

    def _download(self, names: list[str], folder: str) -> str:
        """The objects `names` into `folder`, made anew (built aside, renamed into place;
        fetched concurrently by the filesystem's own batch `get`)."""
        scratch = folder + ".downloading"
        shutil.rmtree(scratch, ignore_errors=True)
        targets = [os.path.join(scratch, name) for name in names]
        for target in targets:
            os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            self._fs.get([f"{self._root}/{name}" for name in names], targets)
        except Exception as error:  # noqa: BLE001
            shutil.rmtree(scratch, ignore_errors=True)
            raise EfxError(f"cannot download {self.url}: {remote.reason(error)}") from None
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(scratch, folder)
        return folder

    # -- uploading ----------------------------------------------------------------------

    def sync(self) -> bool:
        """Upload what changed in the working copy: the data files, then the manifest, then
        delete the objects no longer in it. Returns whether anything was uploaded."""
        with self._lock:
            for _ in range(5):
                try:
                    return self._sync_once()
                except FileNotFoundError:
                    continue  # a file finished (renamed) while being listed: look again
            return self._sync_once()

    def _sync_once(self) -> bool:
        manifest_name = MANIFESTS[self.format]
        manifest_path = self._path(manifest_name)
        if not os.path.exists(manifest_path):
            return False
        with open(manifest_path, "rb") as file:
            manifest = file.read()  # first: every file it names is already on disk, whole
        local = self._local_files()
        changed = [
            name
            for name, facts in local.items()
            if name != manifest_name and self._uploaded.get(name) != facts
        ]
        stale = [name for name in self._uploaded if name not in local]
        if not changed and not stale and _sha(manifest) == self._manifest_sha:
            return False
        for name in changed:
            self._put(name, local[name])
        self._write_state(pending=_sha(manifest))  # a kill or failure in between: still ours
        self._put_bytes(manifest_name, manifest)
        self._manifest_sha = _sha(manifest)
        for name in stale:
            with contextlib.suppress(FileNotFoundError):
                self._fs.rm_file(f"{self._root}/{name}")
            self._uploaded.pop(name, None)
        self._write_state()
        return True

    def _put(self, name: str, facts: list[int]) -> None:
        try:
            self._fs.put_file(self._path(name), f"{self._root}/{name}")
        except FileNotFoundError:
            raise
        except Exception as error:  # noqa: BLE001
            raise OSError(f"cannot upload {name} to {self.url}: {remote.reason(error)}") from None
        self._uploaded[name] = facts

    def _put_bytes(self, name: str, data: bytes) -> None:
        try:
            self._fs.pipe_file(f"{self._root}/{name}", data)
        except Exception as error:  # noqa: BLE001
            raise OSError(f"cannot upload {name} to {self.url}: {remote.reason(error)}") from None

    def _local_files(self) -> dict[str, list[int]]:
        """The working copy's files (relative name -> [size, mtime_ns]), but scratch files."""
        found = {}
        for folder, _dirs, names in os.walk(self.local):
            for name in names:
                if name.endswith(".partial"):
                    continue
                path = os.path.join(folder, name)
                facts = _local_facts(path)
                if facts[0] >= 0:
                    found[os.path.relpath(path, self.local)] = facts
        return found

    def _path(self, name: str) -> str:
        return os.path.join(self.local, name)

    def _read_state(self) -> dict[str, Any]:
        try:
            with open(self._state_path, encoding="utf-8") as file:
                state: dict[str, Any] = json.load(file)
        except (OSError, ValueError):
            return {}
        return state if state.get("url") == self.url else {}

    def _write_state(self, pending: str | None = None) -> None:
        state = {
            "url": self.url, "manifest_sha256": self._manifest_sha, "pending_sha256": pending,
            "files": self._uploaded,
        }  # fmt: skip
        write_atomically(self._state_path, json.dumps(state).encode(), sync=False)

    @contextlib.contextmanager
    def mirrored(self, live: bool) -> Iterator[None]:
        """Sync while the block writes the working copy (`live`), and once at its end, however
        it ends (an error or Ctrl-C too: the bucket then holds the rows so far)."""
        stop = threading.Event()
        errors: list[BaseException] = []
        thread = None
        if live:
            thread = threading.Thread(target=self._follow, args=(stop, errors), daemon=True)
            thread.start()
        try:
            yield
        finally:
            stop.set()
            if thread is not None:
                thread.join()
            self.sync()
        if errors:
            raise errors[0]

    def _follow(self, stop: threading.Event, errors: list[BaseException]) -> None:
        """Sync when a new file appears (one was finished) or SYNC_SECONDS have passed."""
        names = set(self._local_files())
        last = time.monotonic()
        while not stop.wait(_POLL_SECONDS):
            now_names = set(self._local_files())
            if now_names - names or time.monotonic() - last >= SYNC_SECONDS:
                try:
                    self.sync()
                except OSError as error:
                    errors.append(error)
                    return
                names, last = now_names, time.monotonic()


def reading(output: str) -> str:
    """A local path to read the output `output` from: itself, or for a URL the working copy of
    the output in the bucket (downloaded unless it is the bucket's latest state)."""
    if not remote.is_url(output):
        return output
    fs, root = remote.filesystem(output)
    fs.invalidate_cache(root)
    for fmt, manifest in MANIFESTS.items():
        try:
            if fs.exists(f"{root.rstrip('/')}/{manifest}"):
                return Bucket(output, fmt).prepare("read")
        except Exception as error:  # noqa: BLE001
            raise EfxError(f"cannot read {output}: {remote.reason(error)}") from None
    if output.lower().endswith((".h5", ".hdf5")):
        raise EfxError(f"efx reads HDF5 from a local file: copy {output} here first")
    raise EfxError(f"output not found: {output} (no efx output there)")


@contextlib.contextmanager
def written(url: str, fmt: str, overwrite: bool) -> Iterator[str]:
    """A working copy to write a whole output in (efx merge, efx convert), uploaded at the
    end. Messages that name the working copy name the URL instead."""
    bucket = Bucket(url, fmt)
    local = bucket.prepare("overwrite" if overwrite else "new")
    try:
        with bucket.mirrored(live=False):
            yield local
    except EfxError as error:
        raise EfxError(str(error).replace(local, bucket.url)) from None
    except OSError as error:
        raise EfxError(str(error)) from None


def _local_facts(path: str) -> list[int]:
    try:
        found = os.stat(path)
    except OSError:
        return [-1, -1]
    return [found.st_size, found.st_mtime_ns]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

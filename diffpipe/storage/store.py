"""Content-addressed artifact store over fsspec, with atomic publish, verification and a cache-key index.

Layout under the root:
    objects/<sha[:2]>/<sha>/...     the artifact's files (immutable once published)
    manifests/<sha>.json            file list with per-file digests, kind, lineage; written last = commit
    keys/<cache key>.json           cache index: which artifact a stage's cache key produced, and why
    names/<pipeline>/<stage>.json   the newest cache key of each named stage (for `status` explanations)
    sweeps/<name>.json              the newest comparison of a sweep and its cells
    runs/<cache key>/step-<n>/      resumable training checkpoints
    leases/<cache key>/<gen>.json   who is computing a cache key right now (see `ArtifactStore.lease`)
    tmp/<uuid>/                     uploads in flight (never read)

The key index is the only source of truth: an artifact counts as built for a key when `keys/<key>.json`
names it and its manifest exists (and, verified, its checksums match). A record that cannot be read or
has the wrong shape is a warning and a recompute, never an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem
from pydantic import ValidationError

from diffpipe.errors import CorruptArtifact, InputError
from diffpipe.schemas import ArtifactKind, ArtifactRef

from . import remote

log = logging.getLogger(__name__)
CHUNK = 1 << 20
DEFAULT_LEASE_TTL_S = 60.0
"""How long a lease lives without a heartbeat; its holder renews it every quarter of this."""
_CREATE_LOCK = threading.Lock()  # exclusive creates on filesystems without an atomic one (memory://)


def file_sha256(path: Path) -> str:
    """sha256 of one local file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def tree_listing(local_dir: Path) -> dict[str, dict[str, Any]]:
    """Relative path -> {sha256, size} for every file below `local_dir`, sorted by path."""
    files = sorted(p for p in local_dir.rglob("*") if p.is_file())
    return {p.relative_to(local_dir).as_posix(): {"sha256": file_sha256(p), "size": p.stat().st_size} for p in files}


def tree_digest(listing: dict[str, dict[str, Any]]) -> str:
    """Digest of a directory: sha256 over its sorted (path, digest, size) lines."""
    lines = "".join(f"{k}\t{v['sha256']}\t{v['size']}\n" for k, v in sorted(listing.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


@dataclass
class LeaseInfo:
    """One lease record: who computes a cache key, until when (unless renewed), and whether it is over."""

    key: str
    holder: str
    """`host:pid:token` of the process holding it."""
    generation: int
    expires: float
    """Unix time after which the lease is void unless its holder renewed it."""
    released: bool = False

    @property
    def active(self) -> bool:
        """True while the holder is computing (not released, not expired)."""
        return not self.released and time.time() < self.expires


class ArtifactStore:
    """Put, get and verify content-addressed artifacts under an fsspec root URI.

    Concurrency: `lease(key)` makes computing a cache key exclusive across threads, processes and hosts
    sharing the root. `active_leases()` lists the keys being computed now; their `runs/<key>/` checkpoints
    and `tmp/` uploads are live and must not be garbage-collected. A holder that dies stops renewing its
    lease; once it expires (`lease_ttl_s`), the next run takes the lease over and resumes from the dead
    holder's newest checkpoint under `runs/<key>/`.
    """

    def __init__(self, root: str, lease_ttl_s: float = DEFAULT_LEASE_TTL_S):
        self.root_uri = root
        self.lease_ttl_s = lease_ttl_s
        try:
            protocol = fsspec.core.split_protocol(root)[0] or "file"
            self.fs, path = fsspec.core.url_to_fs(root, **remote.filesystem_options(protocol))
        except (ValueError, ImportError) as e:
            raise InputError("storage.root", "cannot open the artifact root", "an fsspec URI", f"'{root}' ({e})") from e
        self.root = path.rstrip("/") if path not in ("/", "") else path
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.has_buckets = remote.has_buckets(self.fs)
        """An object store (s3://...): no folders to create, and creating one would create a missing bucket."""
        self._read_cache: remote.ReadCache | None = None

    @property
    def read_cache(self) -> remote.ReadCache:
        """This machine's cache of a remote store's artifacts (fsspec's `simplecache`; see storage/remote.py)."""
        if self._read_cache is None:
            self._read_cache = remote.ReadCache(self.fs, self._path("objects"), self.fs.unstrip_protocol(self.root))
        return self._read_cache

    def check_reachable(self) -> None:
        """Raise InputError when a remote root's bucket is missing or its credentials are refused."""
        if self.has_buckets:
            remote.check_reachable(self.fs, self.root, self.root_uri)

    def check_writable(self) -> None:
        """Raise InputError if the root cannot be created or written."""
        self.check_reachable()
        probe = self._path("tmp", f"probe-{uuid.uuid4().hex}")
        try:
            if not self.has_buckets:
                self.fs.makedirs(self._path("tmp"), exist_ok=True)
            self.fs.pipe_file(probe, b"ok")
            self.fs.rm_file(probe)
        except (OSError, PermissionError) as e:
            raise InputError("storage.root", "the artifact root is not writable", "a writable location",
                             f"'{self.root_uri}' ({e.__class__.__name__}: {e})") from e

    def uri(self, ref: ArtifactRef) -> str:
        """The absolute URI of an artifact's folder (`file:///abs/objects/..`, `s3://bucket/prefix/objects/..`)."""
        if self.is_local:
            return Path(self.object_path(ref.sha256)).resolve().as_uri()
        return self.fs.unstrip_protocol(self.object_path(ref.sha256))

    # -- paths -------------------------------------------------------------------------------
    def _path(self, *parts: str) -> str:
        return "/".join([self.root, *parts]) if self.root else "/".join(parts)

    def path(self, *parts: str) -> str:
        """Store path of `parts` below the root (`keys/<key>.json`, `runs/<key>`, ...)."""
        return self._path(*parts)

    def object_path(self, sha: str) -> str:
        """Store path of an artifact's folder."""
        return self._path("objects", sha[:2], sha)

    def local_path(self, ref: ArtifactRef) -> Path:
        """A local folder holding the artifact's files (the store itself when it is local, else the read cache)."""
        if self.is_local:
            return Path(self.object_path(ref.sha256))
        return self.read_cache.object_folder(ref.sha256, self.manifest(ref.sha256)["files"], file_sha256)

    # -- publish -----------------------------------------------------------------------------
    def publish(self, local_dir: Path, kind: ArtifactKind, lineage: dict[str, Any]) -> ArtifactRef:
        """Publish a finished local folder atomically; identical content is stored once."""
        listing = tree_listing(local_dir)
        if not listing:
            raise ValueError(f"refusing to publish an empty artifact from {local_dir}")
        sha = tree_digest(listing)
        ref = ArtifactRef(uri=f"objects/{sha[:2]}/{sha}", sha256=sha,
                          nbytes=sum(v["size"] for v in listing.values()), kind=kind)
        manifest = {"ref": ref.model_dump(mode="json"), "files": listing, "lineage": lineage}
        if not self._has_valid_object(ref):
            self._upload(local_dir, ref)
        if not self.is_local:
            self.read_cache.seed(local_dir, sha, listing)
        self._write_json(self._path("manifests", f"{sha}.json"), manifest)
        return ref

    def _has_valid_object(self, ref: ArtifactRef) -> bool:
        try:
            self.verify(ref)
            return True
        except (CorruptArtifact, FileNotFoundError):
            return False

    def _upload(self, local_dir: Path, ref: ArtifactRef) -> None:
        final = self.object_path(ref.sha256)
        if self.has_buckets:  # object stores have no folder rename; each PUT is atomic and the bytes are
            self.fs.put(str(local_dir) + "/", final + "/", recursive=True)  # fixed by the digest
            return
        staging = self._path("tmp", uuid.uuid4().hex)
        self.fs.makedirs(staging, exist_ok=True)
        self.fs.put(str(local_dir) + "/", staging + "/", recursive=True)
        if self.fs.exists(final):
            self.fs.rm(final, recursive=True)
        self.fs.makedirs(self._path("objects", ref.sha256[:2]), exist_ok=True)
        self.fs.mv(staging, final, recursive=True)

    # -- read and verify ---------------------------------------------------------------------
    def manifest(self, sha: str) -> dict[str, Any]:
        """The manifest of a published artifact (FileNotFoundError when absent)."""
        return self._read_json(self._path("manifests", f"{sha}.json"))

    def verify(self, ref: ArtifactRef) -> None:
        """Recompute every file digest; raise CorruptArtifact on any difference."""
        manifest = self.manifest(ref.sha256)
        base = self.object_path(ref.sha256)
        if not self.is_local:  # one listing of the remote object, then the digests of the local cached copy
            remote.check_remote_listing(self.fs, base, manifest["files"], ref.sha256[:12])
            base = str(self.local_path(ref))
        for rel, meta in manifest["files"].items():
            try:
                digest = file_sha256(Path(base) / rel)
            except FileNotFoundError as e:
                raise CorruptArtifact(f"artifact {ref.sha256[:12]}: file '{rel}' is missing") from e
            if digest != meta["sha256"]:
                if not self.is_local:
                    self.read_cache.drop(ref.sha256)
                raise CorruptArtifact(f"artifact {ref.sha256[:12]}: file '{rel}' does not match its checksum")

    # -- cache-key index ---------------------------------------------------------------------
    def record_key(self, key: str, ref: ArtifactRef, record: dict[str, Any]) -> None:
        """Remember that cache key `key` produced `ref` (with the inputs that made the key)."""
        self._write_json(self._path("keys", f"{key}.json"), {"ref": ref.model_dump(mode="json"), **record})

    def lookup(self, key: str, verify: bool = True) -> ArtifactRef | None:
        """The artifact recorded for a cache key, or None when absent, unreadable or corrupt (with a warning)."""
        record = self.key_record(key)
        if record is None:
            return None
        try:
            ref = ArtifactRef.model_validate(record.get("ref"))
        except ValidationError as e:
            log.warning("index record keys/%s.json has the wrong shape and will be recomputed: %s", key[:12],
                        str(e).splitlines()[0])
            return None
        if not verify:
            return ref if self.fs.exists(self._path("manifests", f"{ref.sha256}.json")) else None
        try:
            self.verify(ref)
        except (CorruptArtifact, FileNotFoundError) as e:
            log.warning("cached artifact for key %s is unusable and will be recomputed: %s", key[:12], e)
            return None
        return ref

    def key_record(self, key: str) -> dict[str, Any] | None:
        """The index record of a cache key; None when absent, or unreadable / not a JSON object (with a warning)."""
        path = self._path("keys", f"{key}.json")
        try:
            record = json.loads(self.fs.cat_file(path))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            log.warning("index record keys/%s.json is unreadable and will be recomputed: %s", key[:12], e)
            return None
        if not isinstance(record, dict):
            log.warning("index record keys/%s.json is not a JSON object and will be recomputed", key[:12])
            return None
        return record

    def record_sweep(self, name: str, record: dict[str, Any]) -> None:
        """Remember the newest comparison of sweep `name` (its artifact and its cells)."""
        self._write_json(self._path("sweeps", f"{name}.json"), record)

    def sweep_record(self, name: str) -> dict[str, Any] | None:
        """The newest record of sweep `name`, if any."""
        try:
            return self._read_json(self._path("sweeps", f"{name}.json"))
        except FileNotFoundError:
            return None

    # -- leases: one computation per cache key ------------------------------------------------
    @contextmanager
    def lease(self, key: str, poll_s: float = 0.5) -> Iterator[LeaseInfo]:
        """Hold the exclusive lease on computing cache key `key`, waiting while another live holder has it.

        Use it around "look the key up; compute and publish only if absent": a second caller waits for the
        first to finish and then finds the artifact in the index. The lease is renewed by a background
        thread every `lease_ttl_s / 4` and released on exit (also on an exception). A lease whose holder
        died expires after `lease_ttl_s`; the next caller then takes it over (with a warning).
        """
        held = self._acquire(key, poll_s)
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(held, stop), daemon=True,
                                name=f"lease-{key[:8]}")
        beat.start()
        try:
            yield held
        finally:
            stop.set()
            beat.join()
            held.released = True
            self._write_json(self._lease_path(key, held.generation), _lease_json(held))

    def active_leases(self) -> dict[str, LeaseInfo]:
        """Cache key -> its live lease, for every key being computed now (what `gc` must leave alone)."""
        base = self._path("leases")
        if not self.fs.exists(base):
            return {}
        out = {}
        for entry in self.fs.ls(base, detail=False):
            key = entry.rstrip("/").rsplit("/", 1)[-1]
            current = self.lease_info(key)
            if current is not None and current.active:
                out[key] = current
        return out

    def lease_info(self, key: str) -> LeaseInfo | None:
        """The newest lease record of `key` (live, expired or released), or None if none was ever taken."""
        generations = self._lease_generations(key)
        return self._read_lease(key, generations[-1]) if generations else None

    def _acquire(self, key: str, poll_s: float) -> LeaseInfo:
        holder = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        unreadable_since: dict[int, float] = {}
        warned = False
        while True:
            generations = self._lease_generations(key)
            generation = 0
            if generations:
                top = generations[-1]
                current = self._read_lease(key, top)
                if current is None:  # being written right now, or garbage: live until a TTL has passed
                    first = unreadable_since.setdefault(top, time.time())
                    current = LeaseInfo(key, "unknown", top, first + self.lease_ttl_s)
                if current.active:
                    if not warned:
                        log.info("waiting for %s, which is computing key %s", current.holder, key[:12])
                        warned = True
                    time.sleep(poll_s)
                    continue
                if not current.released:
                    log.warning("the lease of %s on key %s expired (its holder is gone); taking it over and "
                                "resuming from its newest checkpoint", current.holder, key[:12])
                generation = top + 1
            mine = LeaseInfo(key, holder, generation, time.time() + self.lease_ttl_s)
            if self._create_exclusive(self._lease_path(key, generation), _lease_json(mine)):
                for old in generations:  # the newest record decides; older ones are history
                    with suppress(FileNotFoundError):
                        self.fs.rm_file(self._lease_path(key, old))
                return mine

    def _heartbeat(self, held: LeaseInfo, stop: threading.Event) -> None:
        while not stop.wait(self.lease_ttl_s / 4):
            newest = self._lease_generations(held.key)
            if newest and newest[-1] != held.generation:
                log.warning("lost the lease on key %s (it expired and was taken over)", held.key[:12])
                return
            held.expires = time.time() + self.lease_ttl_s
            self._write_json(self._lease_path(held.key, held.generation), _lease_json(held))

    def _lease_path(self, key: str, generation: int) -> str:
        return self._path("leases", key, f"{generation:08d}.json")

    def _lease_generations(self, key: str) -> list[int]:
        folder = self._path("leases", key)
        self.fs.invalidate_cache(folder)
        try:
            names = [e.rstrip("/").rsplit("/", 1)[-1] for e in self.fs.ls(folder, detail=False)]
        except FileNotFoundError:
            return []
        return sorted(int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit())

    def _read_lease(self, key: str, generation: int) -> LeaseInfo | None:
        try:
            raw = json.loads(self.fs.cat_file(self._lease_path(key, generation)))
            return LeaseInfo(key, str(raw["holder"]), generation, float(raw["expires"]), bool(raw["released"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _create_exclusive(self, path: str, data: bytes) -> bool:
        """Create `path` holding `data` unless it exists, atomically; False when someone else created it."""
        parent = path.rsplit("/", 1)[0]
        if not self.has_buckets:
            self.fs.makedirs(parent, exist_ok=True)
        if self.is_local:  # write aside, then hard-link: the file appears complete or not at all
            tmp = f"{parent}/.{uuid.uuid4().hex}.tmp"
            Path(tmp).write_bytes(data)
            try:
                os.link(tmp, path)
                return True
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
        with _CREATE_LOCK:
            try:
                with self.fs.open(path, "xb") as f:
                    f.write(data)
                return True
            except FileExistsError:
                return False

    def record_name(self, pipeline: str, stage: str, record: dict[str, Any]) -> None:
        """Remember the newest cache key and key inputs of a named stage."""
        self._write_json(self._path("names", pipeline, f"{stage}.json"), record)

    def name_record(self, pipeline: str, stage: str) -> dict[str, Any] | None:
        """The newest record of a named stage, if any."""
        try:
            return self._read_json(self._path("names", pipeline, f"{stage}.json"))
        except FileNotFoundError:
            return None

    # -- training checkpoints ----------------------------------------------------------------
    def run_dir(self, key: str) -> RunDir:
        """The resumable-checkpoint area of the stage run with cache key `key`."""
        return RunDir(self, self._path("runs", key))

    def clear_run(self, key: str) -> None:
        """Delete the training checkpoints of a finished run."""
        path = self._path("runs", key)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    # -- small JSON files, written atomically ------------------------------------------------
    def _write_json(self, path: str, obj: Any) -> None:
        data = obj if isinstance(obj, bytes) else json.dumps(obj, indent=2, sort_keys=True, default=str).encode()
        parent = path.rsplit("/", 1)[0]
        if not self.has_buckets:
            self.fs.makedirs(parent, exist_ok=True)
        tmp = f"{parent}/.{uuid.uuid4().hex}.tmp"
        self.fs.pipe_file(tmp, data)
        self.fs.mv(tmp, path)

    def _read_json(self, path: str) -> Any:
        try:
            return json.loads(self.fs.cat_file(path))
        except FileNotFoundError:
            raise
        except (OSError, ValueError) as e:
            raise FileNotFoundError(f"{path}: unreadable ({e})") from e


def _lease_json(lease: LeaseInfo) -> bytes:
    return json.dumps({"holder": lease.holder, "expires": lease.expires, "released": lease.released}).encode()


class RunDir:
    """Numbered training checkpoints of one stage run: save atomically, find the newest."""

    def __init__(self, store: ArtifactStore, path: str):
        self.store, self.path = store, path

    def steps(self) -> list[int]:
        """Steps with a complete checkpoint, ascending."""
        fs = self.store.fs
        if not fs.exists(self.path):
            return []
        out = []
        for entry in fs.ls(self.path, detail=False):
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            if name.startswith("step-") and fs.exists(f"{entry}/COMPLETE"):
                out.append(int(name[5:]))
        return sorted(out)

    def save(self, step: int, local_dir: Path, keep: int = 2) -> None:
        """Publish a checkpoint folder as `step-<n>` (a COMPLETE marker is written last)."""
        fs, final = self.store.fs, f"{self.path}/step-{step:08d}"
        if fs.exists(final):
            fs.rm(final, recursive=True)
        if not self.store.has_buckets:
            (local_dir / "COMPLETE").write_text(str(step))
            staging = f"{self.path}/.tmp-{uuid.uuid4().hex}"
            fs.makedirs(self.path, exist_ok=True)
            fs.put(str(local_dir) + "/", staging + "/", recursive=True)
            fs.mv(staging, final, recursive=True)
        else:  # no folder rename on object stores: the files, then the marker
            fs.put(str(local_dir) + "/", final + "/", recursive=True)
            fs.pipe_file(f"{final}/COMPLETE", str(step).encode())
        for old in self.steps()[:-keep]:
            fs.rm(f"{self.path}/step-{old:08d}", recursive=True)

    def load(self, step: int, into: Path) -> Path:
        """Copy checkpoint `step` into a local folder and return it."""
        src = f"{self.path}/step-{step:08d}"
        if self.store.is_local:
            return Path(src)
        into.mkdir(parents=True, exist_ok=True)
        self.store.fs.get(src + "/", str(into) + "/", recursive=True)
        return into


def env_info() -> dict[str, str]:
    """Versions of the libraries and platform that produced an artifact."""
    import platform

    import diffusers
    import torch

    import diffpipe

    return {
        "python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
        "diffusers": diffusers.__version__, "diffpipe": diffpipe.__version__, "host": os.uname().nodename,
    }

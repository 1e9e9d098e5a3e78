"""Artifact roots on object storage (s3://, gs://, ...): reachability checks, and the local read cache.

A stage reads a remote artifact through fsspec's `simplecache` layer (`SimpleCacheFileSystem`) over the
store's own filesystem. The cache lives in one known folder, `<cache>/<store>/<sha>/<file>`:
`<cache>` is `DIFFPIPE_CACHE_DIR` (default `~/.cache/diffpipe`), `<store>` a digest of the root URI
(its `ROOT` file names it), and `<sha>` the artifact. Published objects are immutable and named by their
digest, so a file is downloaded at most once per machine and never refreshed. Files are fetched in one
concurrent batch and checked against the manifest's digests.

The cache is bounded: after a download, and in `diffpipe gc`, the least recently used artifacts go until
the cache holds at most `DIFFPIPE_CACHE_MAX_GB` (default 20). An artifact a live process has read is
pinned (a shared `flock` held until that process ends) and is never evicted.

S3 settings come from the usual AWS variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
`AWS_PROFILE`, `AWS_DEFAULT_REGION`) and `AWS_ENDPOINT_URL` for an S3-compatible server.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fsspec.core import OpenFile, OpenFiles
from fsspec.implementations.cache_mapper import AbstractCacheMapper
from fsspec.implementations.cached import SimpleCacheFileSystem

from diffpipe.errors import CorruptArtifact, InputError

CACHE_ENV = "DIFFPIPE_CACHE_DIR"
CACHE_MAX_ENV = "DIFFPIPE_CACHE_MAX_GB"
DEFAULT_CACHE_MAX_GB = 20.0
CREDENTIAL_HINT = "credentials in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
_PINS: dict[Path, int] = {}
"""Lock file -> the descriptor holding its shared lock: the artifacts this process has read."""


def cache_root() -> Path:
    """Where remote artifacts are cached on this machine."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "diffpipe")


def cache_max_bytes() -> int:
    """The read cache's size bound, from `DIFFPIPE_CACHE_MAX_GB` (InputError when it is not a number >= 0)."""
    raw = os.environ.get(CACHE_MAX_ENV) or str(DEFAULT_CACHE_MAX_GB)
    try:
        gb = float(raw)
    except ValueError:
        gb = -1.0
    if not gb >= 0:
        raise InputError(CACHE_MAX_ENV, "not a size in GB", "a number >= 0", repr(raw))
    return int(gb * 1e9)


def filesystem_options(protocol: str) -> dict[str, Any]:
    """Options for a remote filesystem: no listings cache, since other processes write the same store."""
    return {} if protocol in ("file", "local") else {"use_listings_cache": False}


def has_buckets(fs: Any) -> bool:
    """True for object stores whose paths start with a bucket (s3fs, gcsfs, adlfs)."""
    return hasattr(fs, "split_path")


def check_reachable(fs: Any, root: str, uri: str) -> None:
    """Raise InputError when the bucket of a remote root does not exist or the credentials are refused."""
    bucket = root.split("/", 1)[0]
    try:
        fs.ls(bucket, detail=False)
    except FileNotFoundError as e:
        raise InputError("storage.root", "the bucket does not exist", "an existing bucket",
                         f"'{uri}' (bucket '{bucket}')") from e
    except PermissionError as e:
        raise InputError("storage.root", "access to the bucket was refused", f"valid {CREDENTIAL_HINT}",
                         f"'{uri}' ({e})") from e
    except OSError as e:
        raise InputError("storage.root", "cannot reach the artifact root", "a reachable object store",
                         f"'{uri}' ({e})") from e
    except Exception as e:  # botocore's NoCredentialsError and friends are not OSErrors
        if "credential" not in str(e).lower():
            raise
        raise InputError("storage.root", "no S3 credentials", CREDENTIAL_HINT, f"'{uri}' ({e})") from e


def check_remote_listing(fs: Any, base: str, files: dict[str, dict[str, Any]], short: str) -> None:
    """One listing of a remote object: every manifest file is there with its size (CorruptArtifact if not)."""
    try:
        found = {k[len(base) + 1:]: v["size"] for k, v in fs.find(base, detail=True).items()}
    except FileNotFoundError:
        found = {}
    for rel, meta in files.items():
        if rel not in found:
            raise CorruptArtifact(f"artifact {short}: file '{rel}' is missing")
        if found[rel] != meta["size"]:
            raise CorruptArtifact(f"artifact {short}: file '{rel}' has the wrong size")


class ObjectFileMapper(AbstractCacheMapper):
    """fsspec cache mapper: `<root>/objects/<xx>/<sha>/<file>` is cached as `<sha>/<file>`.

    The cache then holds each artifact as a folder, which is what diffusers and zarr open.
    """

    def __init__(self, objects: str):
        self.objects = objects.rstrip("/") + "/"

    def __call__(self, path: str) -> str:
        """The cache-relative name of a remote object file."""
        if not path.startswith(self.objects):
            raise ValueError(f"{path} is not an artifact file below {self.objects}")
        return path[len(self.objects):].split("/", 1)[1]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectFileMapper) and other.objects == self.objects

    def __hash__(self) -> int:
        return hash((type(self), self.objects))


class ReadCache:
    """Local copies of one remote store's artifacts, read through fsspec's `simplecache`."""

    def __init__(self, fs: Any, objects: str, uri: str):
        self.folder = cache_root() / hashlib.sha256(uri.encode()).hexdigest()[:16]
        self.folder.mkdir(parents=True, exist_ok=True)
        if not (self.folder / "ROOT").is_file():
            (self.folder / "ROOT").write_text(uri + "\n")
        self.objects = objects
        self.cached = SimpleCacheFileSystem(fs=fs, cache_storage=str(self.folder),
                                            cache_mapper=ObjectFileMapper(objects), skip_instance_cache=True)

    def object_folder(self, sha: str, files: dict[str, dict[str, Any]],
                      digest_of: Callable[[Path], str]) -> Path:
        """The local folder of artifact `sha`, its missing files fetched through the cache and checked."""
        target = self.folder / sha
        _pin(self.folder / f"{sha}.pin")
        with _locked(self.folder / f"{sha}.fill", fcntl.LOCK_EX):
            missing = _missing(target, files)
            if missing:
                base = f"{self.objects}/{sha[:2]}/{sha}"
                paths = [f"{base}/{rel}" for rel in missing]
                with OpenFiles([OpenFile(self.cached, p, "rb") for p in paths], mode="rb", fs=self.cached):
                    pass  # simplecache's open_many downloads every missing file in one batch
                _check_digests(target, {rel: files[rel] for rel in missing}, digest_of, sha)
        os.utime(target)  # last use, for least-recently-used eviction
        if missing:
            evict_to_bound(cache_max_bytes())
        return target

    def seed(self, local_dir: Path, sha: str, files: dict[str, dict[str, Any]]) -> None:
        """Put a just-published folder into the cache, so the next stage does not download it again."""
        target = self.folder / sha
        _pin(self.folder / f"{sha}.pin")
        with _locked(self.folder / f"{sha}.fill", fcntl.LOCK_EX):
            for rel in _missing(target, files):
                dest = target / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                part = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.part"
                shutil.copyfile(local_dir / rel, part)
                part.replace(dest)
        evict_to_bound(cache_max_bytes())

    def drop(self, sha: str) -> None:
        """Forget the cached copy of artifact `sha` (it failed its checksums)."""
        with _locked(self.folder / f"{sha}.fill", fcntl.LOCK_EX):
            shutil.rmtree(self.folder / sha, ignore_errors=True)


def _missing(target: Path, files: dict[str, dict[str, Any]]) -> list[str]:
    """Files of `target` not cached with their manifest size; a partial one (a killed download) is deleted."""
    out = []
    for rel, meta in files.items():
        path = target / rel
        if path.is_file() and path.stat().st_size == meta["size"]:
            continue
        path.unlink(missing_ok=True)
        out.append(rel)
    return out


def _check_digests(target: Path, files: dict[str, dict[str, Any]], digest_of: Callable[[Path], str],
                   sha: str) -> None:
    for rel, meta in files.items():
        if digest_of(target / rel) != meta["sha256"]:
            (target / rel).unlink(missing_ok=True)
            raise CorruptArtifact(f"artifact {sha[:12]}: file '{rel}' does not match its checksum")


@dataclass
class CachedArtifact:
    """One artifact in the read cache: its folder, size in bytes and time of last use."""

    path: Path
    nbytes: int
    last_used: float
    store: str
    """The root URI of the store it was read from."""

    @property
    def sha(self) -> str:
        """The artifact's digest."""
        return self.path.name


def cached_artifacts(root: Path | None = None) -> list[CachedArtifact]:
    """Every artifact in the read cache (all stores), least recently used first."""
    root = root or cache_root()
    out = []
    for store in root.iterdir() if root.is_dir() else ():
        uri = (store / "ROOT").read_text().strip() if (store / "ROOT").is_file() else "?"
        for folder in store.iterdir() if store.is_dir() else ():
            if folder.is_dir() and len(folder.name) == 64:
                size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
                out.append(CachedArtifact(folder, size, folder.stat().st_mtime, uri))
    return sorted(out, key=lambda c: c.last_used)


def over_bound(max_bytes: int, entries: list[CachedArtifact] | None = None) -> list[CachedArtifact]:
    """The least recently used artifacts to remove so that the cache holds at most `max_bytes`."""
    entries = cached_artifacts() if entries is None else entries
    excess = sum(c.nbytes for c in entries) - max_bytes
    out = []
    for c in entries:
        if excess <= 0:
            break
        out.append(c)
        excess -= c.nbytes
    return out


def pinned(folder: Path) -> bool:
    """True when a live process holds the cached artifact `folder` (it has read or written it)."""
    pin = folder.parent / f"{folder.name}.pin"
    if not pin.exists():
        return False
    with _locked(pin, fcntl.LOCK_EX | fcntl.LOCK_NB) as held:
        return not held


def evict(folder: Path) -> bool:
    """Remove a cached artifact's folder unless a live process has it pinned; True when it was removed."""
    pin = folder.parent / f"{folder.name}.pin"
    with _locked(pin, fcntl.LOCK_EX | fcntl.LOCK_NB) as held:
        if not held:
            return False
        shutil.rmtree(folder, ignore_errors=True)
        (folder.parent / f"{folder.name}.fill").unlink(missing_ok=True)
        pin.unlink(missing_ok=True)
    return True


def evict_to_bound(max_bytes: int) -> None:
    """Remove least recently used, unpinned artifacts until the cache holds at most `max_bytes`."""
    for entry in over_bound(max_bytes):
        evict(entry.path)


def _pin(path: Path) -> None:
    """Hold a shared lock on `path` until this process ends: the artifact is in use here."""
    if path not in _PINS:
        _PINS[path] = _open_locked(path, fcntl.LOCK_SH)


@contextmanager
def _locked(path: Path, how: int) -> Iterator[bool]:
    """Hold `flock(how)` on `path` for the block; yields False when a non-blocking lock was not granted."""
    try:
        fd = _open_locked(path, how)
    except BlockingIOError:
        yield False
        return
    try:
        yield True
    finally:
        os.close(fd)


def _open_locked(path: Path, how: int) -> int:
    """A descriptor of `path` holding `flock(how)`; retried when the file was replaced while waiting."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, how)
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:  # removed by an eviction while we waited: lock the new file
            same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            return fd
        os.close(fd)

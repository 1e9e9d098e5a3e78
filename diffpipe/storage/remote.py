"""Artifact roots on object storage (s3://, gs://, ...): reachability checks and a local read cache.

Published objects are immutable and named by their digest, so a remote object is downloaded at most once
per machine, into `<cache>/objects/<sha>/` (`DIFFPIPE_CACHE_DIR`, default `~/.cache/diffpipe`): the
files go to a private `.part-*` folder, are checked against the manifest's digests, and the folder is
renamed into place. Every later read, in this process or another, finds the finished folder; nothing is
left in temporary folders. `diffpipe gc` prunes cached objects the store no longer holds.

S3 settings come from the usual AWS variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
`AWS_PROFILE`, `AWS_DEFAULT_REGION`) and `AWS_ENDPOINT_URL` for an S3-compatible server.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from diffpipe.errors import CorruptArtifact, InputError

CACHE_ENV = "DIFFPIPE_CACHE_DIR"
CREDENTIAL_HINT = "credentials in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"


def cache_root() -> Path:
    """Where remote artifacts are cached on this machine."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "diffpipe")


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


def cached_copy(fs: Any, base: str, sha: str, files: dict[str, dict[str, Any]], digest_of) -> Path:
    """The local cached folder of remote object `sha`, downloaded and checked against `files` if absent."""
    target = cache_root() / "objects" / sha
    if not target.is_dir():
        _fill(target, lambda part: fs.get(base + "/", str(part) + "/", recursive=True), files, digest_of)
    return target


def seed_cache(local_dir: Path, sha: str, files: dict[str, dict[str, Any]], digest_of) -> None:
    """Put a just-published folder into the read cache, so the next stage does not download it again."""
    target = cache_root() / "objects" / sha
    if not target.is_dir():
        _fill(target, lambda part: shutil.copytree(local_dir, part, dirs_exist_ok=True), files, digest_of)


def drop_cached(sha: str) -> None:
    """Forget the cached copy of object `sha` (it failed its checksums)."""
    shutil.rmtree(cache_root() / "objects" / sha, ignore_errors=True)


def _fill(target: Path, copy, files: dict[str, dict[str, Any]], digest_of) -> None:
    part = target.parent / f".part-{target.name}-{uuid.uuid4().hex}"
    part.mkdir(parents=True)
    try:
        copy(part)
        for rel, meta in files.items():
            if digest_of(part / rel) != meta["sha256"]:
                raise CorruptArtifact(f"artifact {target.name[:12]}: file '{rel}' does not match its checksum")
        try:
            part.rename(target)
        except OSError:
            if not target.is_dir():  # another process renamed its identical copy first: use that one
                raise
    finally:
        shutil.rmtree(part, ignore_errors=True)

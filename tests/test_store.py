"""Artifact store: round trips on local and memory filesystems, atomic publish, checksum failures."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest

from diffpipe.errors import CorruptArtifact, InputError
from diffpipe.storage import ArtifactStore, tree_digest, tree_listing


def _folder(tmp_path: Path, text: str = "hello") -> Path:
    d = tmp_path / f"src-{uuid.uuid4().hex[:6]}"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text(text)
    (d / "sub" / "b.bin").write_bytes(bytes(range(256)) * 10)
    return d


@pytest.fixture(params=["local", "file", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    root = {"local": str(tmp_path / "root"), "file": f"file://{tmp_path}/root",
            "memory": f"memory://diffpipe-{uuid.uuid4().hex}"}[request.param]
    return ArtifactStore(root)


def test_round_trip_and_content_addressing(store: ArtifactStore, tmp_path: Path) -> None:
    src = _folder(tmp_path)
    ref = store.publish(src, "metrics", {"why": "test"})
    assert ref.sha256 == tree_digest(tree_listing(src))
    assert ref.nbytes == 5 + 2560
    store.verify(ref)
    local = store.local_path(ref)
    assert (local / "a.txt").read_text() == "hello"
    assert (local / "sub" / "b.bin").read_bytes() == bytes(range(256)) * 10
    assert store.manifest(ref.sha256)["lineage"] == {"why": "test"}
    again = store.publish(_folder(tmp_path), "metrics", {"why": "again"})
    assert again == ref  # same content, same artifact


def test_key_index(store: ArtifactStore, tmp_path: Path) -> None:
    ref = store.publish(_folder(tmp_path), "metrics", {})
    assert store.lookup("k" * 64) is None
    store.record_key("k" * 64, ref, {"inputs": {"a": 1}})
    assert store.lookup("k" * 64) == ref
    assert store.key_record("k" * 64)["inputs"] == {"a": 1}


def test_crash_during_publish_leaves_nothing_that_looks_complete(
    store: ArtifactStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _folder(tmp_path, "crash")
    sha = tree_digest(tree_listing(src))

    def killed(*args, **kwargs):
        raise OSError("simulated crash between upload and rename")

    monkeypatch.setattr(store.fs, "mv", killed)
    with pytest.raises(OSError):
        store.publish(src, "metrics", {})
    monkeypatch.undo()
    assert not store.fs.exists(store.object_path(sha))
    with pytest.raises(FileNotFoundError):
        store.manifest(sha)
    ref = store.publish(src, "metrics", {})  # the next attempt completes
    store.verify(ref)


def test_checksum_failure_detected(store: ArtifactStore, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ref = store.publish(_folder(tmp_path), "metrics", {})
    store.record_key("c" * 64, ref, {})
    store.fs.pipe_file(f"{store.object_path(ref.sha256)}/a.txt", b"tampered")
    with pytest.raises(CorruptArtifact, match="a.txt"):
        store.verify(ref)
    with caplog.at_level(logging.WARNING):
        assert store.lookup("c" * 64) is None
    assert "recomputed" in caplog.text
    healed = store.publish(_folder(tmp_path), "metrics", {})  # republishing repairs the object
    store.verify(healed)
    store.fs.rm_file(f"{store.object_path(ref.sha256)}/sub/b.bin")
    with pytest.raises(CorruptArtifact, match="missing"):
        store.verify(ref)


def test_run_checkpoints_keep_newest(store: ArtifactStore, tmp_path: Path) -> None:
    run = store.run_dir("r" * 64)
    for step in (10, 20, 30):
        d = tmp_path / f"ck{step}"
        d.mkdir()
        (d / "w").write_text(str(step))
        run.save(step, d, keep=2)
    assert run.steps() == [20, 30]
    assert (run.load(30, tmp_path / "out") / "w").read_text() == "30"
    store.fs.makedirs(f"{run.path}/step-00000040", exist_ok=True)  # no COMPLETE marker: ignored
    assert run.steps() == [20, 30]
    store.clear_run("r" * 64)
    assert run.steps() == []


def test_unwritable_and_unknown_roots(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(InputError, match="storage.root"):
        ArtifactStore(str(blocker / "root")).check_writable()
    with pytest.raises(InputError, match="storage.root"):
        ArtifactStore("nosuchprotocol://bucket/x")

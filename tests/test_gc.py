"""`diffpipe gc` and `diffpipe ls` on a real local store: what is kept, what is removed, bytes freed.

gc during a real run (nothing lost) is in test_s3.py, against the S3 store that run writes to."""

from __future__ import annotations

import json
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from diffpipe.flows.cli import main
from diffpipe.storage import ArtifactStore
from diffpipe.storage.gc import collect

HOUR = 3600


def _age(path: Path, seconds: float) -> None:
    """Make every file below `path` (and `path`) look `seconds` old."""
    stamp = time.time() - seconds
    for p in [*path.rglob("*"), path]:
        os.utime(p, (stamp, stamp))


def _artifact(store: ArtifactStore, tmp: Path, name: str, node: str, days: float, upstream: dict | None = None):
    src = tmp / f"src-{name}"
    src.mkdir()
    (src / "metrics.json").write_text(json.dumps({"name": name}))
    (src / "weights.bin").write_bytes(name.encode() * 1000)
    created = (datetime.now(UTC) - timedelta(days=days)).isoformat()
    ref = store.publish(src, "checkpoint", {"pipeline": "p", "node": node, "created": created,
                                            "upstream": upstream or {}})
    _age(Path(store.object_path(ref.sha256)), days * 86400)
    return ref


def _key(store: ArtifactStore, key: str, ref, node: str, days: float) -> None:
    store.record_key(key, ref, {"node": node, "kind": "pretrain"})
    _age(Path(store.path("keys", f"{key}.json")), days * 86400)


@pytest.fixture
def populated(tmp_path: Path) -> tuple[ArtifactStore, dict]:
    store = ArtifactStore(str(tmp_path / "store"))
    data = _artifact(store, tmp_path, "data", "data", 5)
    _key(store, "d" * 64, data, "data", 5)
    old = _artifact(store, tmp_path, "old", "pretrain", 3, {"data": data.sha256})
    _key(store, "a" * 64, old, "pretrain", 3)
    new = _artifact(store, tmp_path, "new", "pretrain", 2, {"data": data.sha256})
    _key(store, "b" * 64, new, "pretrain", 2)
    store.record_name("p", "data", {"key": "d" * 64})
    store.record_name("p", "pretrain", {"key": "b" * 64})
    orphan = _artifact(store, tmp_path, "orphan", "sample", 3)
    root = Path(store.path())
    partial_old = root / "objects" / "ee" / ("e" * 64)
    partial_new = root / "objects" / "ff" / ("f" * 64)
    staging = root / "tmp" / uuid.uuid4().hex
    published_run = root / "runs" / ("b" * 64) / "step-00000008"
    live_run = root / "runs" / ("c" * 64) / "step-00000008"
    for folder in (partial_old, partial_new, staging, published_run, live_run):
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"x" * 5000)
    (published_run / "COMPLETE").write_text("8")
    (live_run / "COMPLETE").write_text("8")
    for folder in (partial_old, staging, published_run.parent, live_run.parent):
        _age(folder, 2 * HOUR)
    return store, {"data": data, "old": old, "new": new, "orphan": orphan, "partial_old": partial_old,
                   "partial_new": partial_new, "staging": staging, "published_run": published_run.parent,
                   "live_run": live_run.parent}


def test_gc_keeps_what_is_referenced_and_removes_the_rest(populated) -> None:
    store, made = populated
    before = sorted(p for p in Path(store.path()).rglob("*"))
    dry = collect(store, keep_last=1, dry_run=True)
    assert sorted(p for p in Path(store.path()).rglob("*")) == before  # a dry run touches nothing
    report = collect(store, keep_last=1)
    assert [(r.what, r.path) for r in report.removals] == [(r.what, r.path) for r in dry.removals]
    removed = {r.what: r for r in report.removals}
    assert sorted(r.what for r in report.removals) == sorted(
        ["key", "artifact", "artifact", "partial object", "staging", "checkpoints"])
    assert removed["checkpoints"].why == "its stage is published"
    for gone in ("old", "orphan"):
        sha = made[gone].sha256
        assert not Path(store.object_path(sha)).exists() and not Path(store.path("manifests", f"{sha}.json")).exists()
    assert store.key_record("a" * 64) is None
    for kept in ("data", "new"):  # the named run and the data it was computed from
        store.verify(made[kept])
    assert store.lookup("b" * 64) is not None and store.lookup("d" * 64) is not None
    assert made["partial_new"].exists() and made["live_run"].exists()  # too young: may be a run in flight
    for gone in ("partial_old", "staging", "published_run"):
        assert not made[gone].exists()
    assert report.freed == sum(r.nbytes for r in report.removals) > 2 * 4000 + 3 * 5000
    assert collect(store, keep_last=1).removals == []  # nothing left to collect


def test_gc_without_keep_last_keeps_every_key(populated) -> None:
    store, made = populated
    report = collect(store, older_than_days=2.5)
    assert {r.path for r in report.removals if r.what == "artifact"} == {store.object_path(made["orphan"].sha256)}
    store.verify(made["old"])
    assert made["staging"].exists()  # two hours old: younger than --older-than


def test_ls_and_gc_commands(populated, capsys: pytest.CaptureFixture) -> None:
    store, made = populated
    assert main(["ls", store.path()]) == 0
    out = capsys.readouterr().out
    assert "pipeline p" in out and made["new"].sha256[:12] in out and "objects without a manifest: 2" in out
    assert main(["gc", store.path(), "--keep-last", "1", "--dry-run"]) == 0
    assert "would free" in capsys.readouterr().out and made["staging"].exists()
    assert main(["gc", store.path(), "--keep-last", "1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["freed_bytes"] > 0 and not made["staging"].exists()
    assert main(["gc", store.path(), "--keep-last", "0"]) == 2
    assert main(["gc", str(Path(store.path()) / "nothing-here")]) == 2


HOLDER = """
import sys
from diffpipe.storage import ArtifactStore
with ArtifactStore(sys.argv[1]).lease(sys.argv[2]):
    print("computing", flush=True)
    sys.stdin.readline()
"""


def test_gc_on_a_store_a_run_is_writing_to_exits_2_naming_it(populated, capsys: pytest.CaptureFixture) -> None:
    import subprocess
    import sys

    store, made = populated
    _age(made["live_run"], 2 * 86400)  # untouched for two days: only its lease keeps these checkpoints
    before = sorted(p for p in Path(store.path()).rglob("*") if "leases" not in p.parts)
    stage = subprocess.Popen([sys.executable, "-c", HOLDER, store.path(), "c" * 64], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)  # a stage computing key c... (its lease)
    try:
        assert stage.stdout.readline().strip() == "computing"
        assert main(["gc", store.path(), "--keep-last", "1"]) == 2
        err = capsys.readouterr().err
        assert f"store: a run is writing to {store.path()}: nothing was removed" in err
        assert f"key {'c' * 12} being computed by {os.uname().nodename}:{stage.pid}" in err and "--while-running" in err
        assert sorted(p for p in Path(store.path()).rglob("*") if "leases" not in p.parts) == before  # nothing lost
        assert main(["gc", store.path(), "--keep-last", "1", "--while-running"]) == 0
        assert made["live_run"].exists() and not made["staging"].exists()  # the running stage's checkpoints stay
    finally:
        stage.communicate("\n", timeout=60)
    assert main(["gc", store.path(), "--keep-last", "1"]) == 0  # the stage has ended: gc runs again
    assert not made["live_run"].exists()

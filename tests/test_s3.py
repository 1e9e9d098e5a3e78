"""The artifact store on S3: moto's S3 server on loopback (what s3fs tests itself against), real s3fs.

A digits sweep end to end through the CLI (two cells sharing data and pretrain, built once, with `gc`
collecting the store beside it and losing nothing), then `run` of its first cell (all cached), `status` and
`show` of both read back from the bucket, and no temporary folder left behind; atomic publish against a
killed writer and two concurrent writers of one key, the bad inputs (missing bucket, no credentials), and the
read cache: a second read served from it, and `gc` pruning it without touching what a live process holds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from helpers import free_port
from tiny_specs import tiny_digits_spec

from diffpipe.storage.remote import cached_artifacts

BIN = Path(sys.executable).parent
BUCKET = "diffpipe-test"


@pytest.fixture(scope="module")
def s3_env() -> Iterator[dict[str, str]]:
    """A moto S3 server on 127.0.0.1 with one bucket; the environment a client needs to reach it."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import s3fs

    s3fs.S3FileSystem(skip_instance_cache=True).mkdir(BUCKET)
    yield env
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


def _s3():
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "diffpipe"), *args], env={**os.environ, **env}, cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def test_a_digits_sweep_and_its_run_on_s3_with_gc_running_beside_it(s3_env, tmp_path: Path) -> None:
    from diffpipe.storage import ArtifactStore
    from diffpipe.storage.gc import collect

    spec = tiny_digits_spec(tmp_path / "unused")
    spec["storage"] = {"root": f"s3://{BUCKET}/runs/digits"}
    path = tmp_path / "s3.yaml"
    path.write_text(yaml.safe_dump(spec))
    sweep = tmp_path / "sweep.yaml"  # cell c00 is the spec above; c01 shares its data and pretrain
    sweep.write_text(yaml.safe_dump({**spec, "sweep": {"grid": {"stages.sample.num_samples": [40, 20]},
                                                       "metrics": ["evaluate.model.frechet_distance"]}}))
    scratch = tmp_path / "scratch"  # every temporary folder of the sweep and the commands below
    scratch.mkdir()
    env = {**s3_env, "DIFFPIPE_CACHE_DIR": str(tmp_path / "cache"), "TMPDIR": str(scratch),
           "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}  # (torch's own compile cache)
    run = subprocess.Popen([str(BIN / "diffpipe"), "sweep", str(sweep), "--json"], env={**os.environ, **env},
                           cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    store, passes = ArtifactStore(spec["storage"]["root"]), 0
    while run.poll() is None:  # the most aggressive gc, over and over, on the store the sweep is writing to
        assert collect(store, keep_last=1).removals == []
        passes += 1
        time.sleep(0.2)
    out, err = run.communicate()
    assert run.returncode == 0, err[-3000:]
    assert passes >= 5
    report = json.loads(out)
    stages = ("data", "pretrain", "sample", "evaluate")
    assert [c["states"] for c in report["cells"]] == [  # the shared stages built once, in cell c00
        dict.fromkeys(stages, "executed"), {"data": "cached", "pretrain": "cached", "sample": "executed",
                                            "evaluate": "executed"}]
    fs = _s3()
    assert len(fs.ls(f"{BUCKET}/runs/digits/manifests")) == 7  # 4 + 2 stage artifacts and the comparison
    assert len(fs.ls(f"{BUCKET}/runs/digits/keys")) == 6
    assert not fs.exists(f"{BUCKET}/runs/digits/runs")  # training checkpoints removed after publish
    assert report["location"].startswith(f"s3://{BUCKET}/runs/digits/objects/")
    published = {p.rsplit("/", 1)[-1] for p in fs.ls(report["location"].removeprefix("s3://"))}
    assert {"comparison.json", "comparison.csv", "evaluate.model.frechet_distance.png"} <= published

    done = _cli(["run", str(path), "--json"], env, tmp_path)  # the base spec is cell c00: all cached
    assert done.returncode == 0, done.stderr[-3000:]
    assert {s["name"]: s["state"] for s in json.loads(done.stdout)["stages"]} == dict.fromkeys(stages, "cached")
    status = _cli(["status", str(path), "--json"], env, tmp_path)
    assert {s["state"] for s in json.loads(status.stdout)["stages"]} == {"cached"}
    show = json.loads(_cli(["show", str(path), "pretrain", "--json"], env, tmp_path).stdout)
    assert show["location"].startswith(f"s3://{BUCKET}/runs/digits/objects/")
    assert "model/config.json" in show["files"]
    shown = json.loads(_cli(["show", str(sweep), "--json"], env, tmp_path).stdout)  # read back from the bucket
    assert shown["location"] == report["location"] and shown["cells"] == report["cells"]
    swept = json.loads(_cli(["status", str(sweep), "--json"], env, tmp_path).stdout)  # both cells, from the bucket
    assert [{st["name"]: st["state"] for st in c["stages"]} for c in swept["cells"]] == [
        dict.fromkeys(stages, "cached")] * 2
    per_cell = json.loads(_cli(["show", str(sweep), "sample", "--json"], env, tmp_path).stdout)
    assert [r["state"] for r in per_cell] == ["cached", "cached"]  # one sample artifact per cell, in the bucket
    shas = [r["artifact"]["sha256"] for r in per_cell]
    assert len(set(shas)) == 2 and all(fs.exists(f"{BUCKET}/runs/digits/manifests/{sha}.json") for sha in shas)
    cached = cached_artifacts(tmp_path / "cache")  # one known folder, one copy per artifact
    assert len(cached) == 7 and {c.store for c in cached} == {f"s3://{BUCKET}/runs/digits"}
    assert sorted(p.name for p in scratch.iterdir()) == []  # no copies of remote artifacts left behind


PUBLISHER = """
import sys, time
from pathlib import Path
from diffpipe.storage import ArtifactStore
from diffpipe.schemas import ArtifactRef
store = ArtifactStore(sys.argv[1])
src = Path(sys.argv[2])
ref = store.publish(src, "samples", {"writer": sys.argv[3]})
store.record_key("k" * 64, ref, {"writer": sys.argv[3]})
print(ref.sha256)
"""


def _folder(root: Path, files: int, size: int) -> Path:
    root.mkdir(parents=True)
    for i in range(files):
        (root / f"part-{i:04d}.bin").write_bytes(bytes([i % 251]) * size)
    return root


def _publisher(root: str, src: Path, name: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", PUBLISHER, root, str(src), name], env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_killed_publish_leaves_nothing_complete(s3_env, tmp_path: Path) -> None:
    from diffpipe.storage import ArtifactStore, tree_digest, tree_listing

    root = f"s3://{BUCKET}/killed"
    src = _folder(tmp_path / "big", files=400, size=4096)
    sha = tree_digest(tree_listing(src))
    env = {**s3_env, "DIFFPIPE_CACHE_DIR": str(tmp_path / "cache")}
    proc = _publisher(root, src, "killed", env)
    fs, objects = _s3(), f"{BUCKET}/killed/objects/{sha[:2]}/{sha}"
    deadline = time.monotonic() + 120
    while not (fs.exists(objects) and fs.ls(objects)):
        assert proc.poll() is None and time.monotonic() < deadline, "the publisher ended before it was killed"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not fs.exists(f"{BUCKET}/killed/manifests/{sha}.json")  # the manifest is the commit: never written
    store = ArtifactStore(root)
    assert store.lookup("k" * 64) is None
    ref = store.publish(src, "samples", {"writer": "second"})  # a later publish completes the same object
    store.verify(ref)
    assert len(fs.find(objects)) == 400


def test_two_writers_of_one_key_do_not_corrupt_it(s3_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from diffpipe.storage import ArtifactStore

    root = f"s3://{BUCKET}/race"
    src = _folder(tmp_path / "same", files=60, size=8192)
    procs = [_publisher(root, src, name, {**s3_env, "DIFFPIPE_CACHE_DIR": str(tmp_path / name)})
             for name in ("a", "b")]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    assert outs[0][0] == outs[1][0]
    monkeypatch.setenv("DIFFPIPE_CACHE_DIR", str(tmp_path / "reader"))  # a third machine reads it back
    ref = ArtifactStore(root).lookup("k" * 64)
    assert ref is not None and ref.sha256 == outs[0][0].strip()


def test_missing_bucket_and_missing_credentials_exit_2(s3_env, tmp_path: Path) -> None:
    spec = tiny_digits_spec(tmp_path / "unused")
    spec["storage"] = {"root": "s3://no-such-bucket-here/x"}
    path = tmp_path / "nobucket.yaml"
    path.write_text(yaml.safe_dump(spec))
    for command in (["status", str(path)], ["run", str(path)], ["gc", "s3://no-such-bucket-here/x"],
                    ["ls", str(path)]):
        done = _cli(command, s3_env, tmp_path)
        assert done.returncode == 2, done.stderr
        assert "storage.root: the bucket does not exist" in done.stderr and "no-such-bucket-here" in done.stderr
    assert not _s3().exists("no-such-bucket-here")  # not created on the way

    spec["storage"] = {"root": f"s3://{BUCKET}/x"}
    path.write_text(yaml.safe_dump(spec))
    bare = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    bare.update(AWS_ENDPOINT_URL=s3_env["AWS_ENDPOINT_URL"], AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
                AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_EC2_METADATA_DISABLED="true")
    done = subprocess.run([str(BIN / "diffpipe"), "status", str(path)], env=bare, cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "storage.root: no S3 credentials" in done.stderr and "AWS_ACCESS_KEY_ID" in done.stderr


def test_training_checkpoints_resume_from_s3(s3_env, tmp_path: Path) -> None:
    from diffpipe.storage import ArtifactStore

    run = ArtifactStore(f"s3://{BUCKET}/resume").run_dir("r" * 64)
    for step in (8, 16, 24):
        ckpt = _folder(tmp_path / f"ckpt-{step}", files=3, size=1000 + step)
        run.save(step, ckpt, keep=2)
    assert run.steps() == [16, 24]  # the oldest is dropped
    _s3().pipe_file(f"{BUCKET}/resume/runs/{'r' * 64}/step-00000032/model.bin", b"half")  # a save killed early
    assert run.steps() == [16, 24]  # no COMPLETE marker: never resumed from
    back = run.load(24, tmp_path / "loaded")
    assert sorted(p.name for p in back.iterdir()) == ["COMPLETE", "part-0000.bin", "part-0001.bin", "part-0002.bin"]
    assert (back / "part-0001.bin").read_bytes() == (tmp_path / "ckpt-24" / "part-0001.bin").read_bytes()


READER = """
import sys
from diffpipe.storage import ArtifactStore
store = ArtifactStore(sys.argv[1])
for key in sys.argv[3:]:
    print(store.local_path(store.lookup(key, verify=False)), flush=True)
if sys.argv[2] == "hold":
    sys.stdin.readline()
"""


def _reader(root: str, keys: list[str], cache: Path, hold: bool = False) -> subprocess.Popen:
    """A process on another 'machine' (its own read cache) that reads artifacts; with `hold`, it stays alive."""
    env = {**os.environ, "DIFFPIPE_CACHE_DIR": str(cache)}
    return subprocess.Popen([sys.executable, "-c", READER, root, "hold" if hold else "exit", *keys], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _read(root: str, keys: list[str], cache: Path) -> subprocess.CompletedProcess:
    proc = _reader(root, keys, cache)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _publish(store, tmp_path: Path, name: str, key: str, files: int, size: int):
    ref = store.publish(_folder(tmp_path / name, files, size), "samples", {"node": name})
    store.record_key(key, ref, {"node": name})
    return ref


def test_a_second_read_is_served_from_the_read_cache(s3_env, tmp_path: Path) -> None:
    from diffpipe.storage import ArtifactStore

    root = f"s3://{BUCKET}/cached"
    ref = _publish(ArtifactStore(root), tmp_path, "src", "c" * 64, files=5, size=3000)
    first = _read(root, ["c" * 64], tmp_path / "reader")
    assert first.returncode == 0, first.stderr[-2000:]
    folder = Path(first.stdout.strip())
    (entry,) = cached_artifacts(tmp_path / "reader")
    assert entry.path == folder and folder.name == ref.sha256 and entry.store == root
    assert sorted(p.name for p in folder.iterdir()) == [f"part-{i:04d}.bin" for i in range(5)]

    (folder / "part-0003.bin").write_bytes(b"cut")  # a download killed half-way: fetched again
    again = _read(root, ["c" * 64], tmp_path / "reader")
    assert again.returncode == 0 and (folder / "part-0003.bin").read_bytes() == bytes([3]) * 3000

    _s3().rm(f"{BUCKET}/cached/objects/{ref.sha256[:2]}/{ref.sha256}", recursive=True)  # the bytes leave S3
    cached = _read(root, ["c" * 64], tmp_path / "reader")
    assert cached.returncode == 0, cached.stderr[-2000:]
    assert cached.stdout.strip() == str(folder)  # served from the cache: nothing left to download
    cold = _read(root, ["c" * 64], tmp_path / "elsewhere")  # a machine without the copy needs S3
    assert cold.returncode != 0 and "FileNotFoundError" in cold.stderr


def test_gc_prunes_the_read_cache_but_not_what_a_live_process_holds(s3_env, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from diffpipe.storage import ArtifactStore
    from diffpipe.storage.gc import collect

    root, cache = f"s3://{BUCKET}/pruned", tmp_path / "reader"
    old = _publish(ArtifactStore(root), tmp_path, "old", "o" * 64, files=2, size=5000)
    kept = _publish(ArtifactStore(root), tmp_path, "kept", "k" * 64, files=3, size=7000)
    assert _read(root, ["o" * 64, "k" * 64], cache).returncode == 0
    holder = _reader(root, ["k" * 64], cache, hold=True)
    assert holder.stdout.readline().strip().endswith(kept.sha256)  # a live stage reading `kept`
    fs = _s3()  # the store drops `old` (as a gc on another machine would)
    fs.rm([f"{BUCKET}/pruned/keys/{'o' * 64}.json", f"{BUCKET}/pruned/manifests/{old.sha256}.json"])
    fs.rm(f"{BUCKET}/pruned/objects/{old.sha256[:2]}/{old.sha256}", recursive=True)

    monkeypatch.setenv("DIFFPIPE_CACHE_DIR", str(cache))
    store = ArtifactStore(root)
    dry = collect(store, dry_run=True)
    assert [(r.what, Path(r.path).name, r.nbytes) for r in dry.removals] == [("cached copy", old.sha256, 10000)]
    assert {c.sha for c in cached_artifacts(cache)} == {old.sha256, kept.sha256}
    assert collect(store).freed == 10000
    assert {c.sha for c in cached_artifacts(cache)} == {kept.sha256}

    monkeypatch.setenv("DIFFPIPE_CACHE_MAX_GB", "0")  # over the bound, but held by a live process: kept
    assert collect(store).removals == [] and len(cached_artifacts(cache)) == 1
    holder.communicate("\n", timeout=60)
    report = collect(store)
    assert [(r.what, r.nbytes) for r in report.removals] == [("cached copy", 21000)]
    assert "over the 0 GB bound" in report.removals[0].why and cached_artifacts(cache) == []
    assert _read(root, ["k" * 64], cache).returncode == 0  # still in the store: read again on demand


def test_gc_prunes_cached_copies_of_what_it_removes_and_stale_ones(s3_env, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture) -> None:
    from diffpipe.flows.cli import main
    from diffpipe.storage import ArtifactStore, gc

    root, cache = f"s3://{BUCKET}/stale", tmp_path / "reader"
    writer = ArtifactStore(root)  # the machine that computed them (its own read cache)
    old = _publish(writer, tmp_path, "old", "1" * 64, files=2, size=4000)
    writer.record_key("1" * 64, old, {"node": "sample"})  # one stage's older run ...
    time.sleep(1.5)  # (S3 times are in seconds)
    new = _publish(writer, tmp_path, "new", "2" * 64, files=2, size=6000)
    writer.record_key("2" * 64, new, {"node": "sample"})  # ... and its newer one: --keep-last 1 keeps only this
    held = _publish(writer, tmp_path, "held", "3" * 64, files=1, size=9000)
    assert _read(root, ["1" * 64, "2" * 64, "3" * 64], cache).returncode == 0
    holder = _reader(root, ["3" * 64], cache, hold=True)  # a running stage reads `held`
    assert holder.stdout.readline().strip().endswith(held.sha256)
    ten_days = time.time() - 10 * 86400
    for c in cached_artifacts(cache):  # every copy last used ten days ago
        os.utime(c.path, (ten_days, ten_days))
    monkeypatch.setenv("DIFFPIPE_CACHE_DIR", str(cache))  # gc runs on the reader's machine
    store = ArtifactStore(root)

    assert gc.collect(store, older_than_days=30).removals == []  # all referenced, none unused for 30 days
    dry = gc.collect(store, keep_last=1, dry_run=True)  # the older key is young: it stays in the store for now
    assert [(r.what, Path(r.path).name, r.nbytes, r.why) for r in dry.removals] == [
        ("cached copy", old.sha256, 8000, "no kept key or named run refers to it")]
    assert len(cached_artifacts(cache)) == 3

    monkeypatch.setattr(gc, "GRACE_S", 0.0)  # the older run is past the grace hour: gc removes it, copy too
    assert main(["gc", root, "--keep-last", "1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {(r["what"], r["why"]) for r in doc["removed"]} == {
        ("key", "not among the kept runs"), ("artifact", "no kept key refers to it"),
        ("cached copy", "gc removes it from the store")}
    assert doc["freed_cache_bytes"] == 8000 and doc["freed_store_bytes"] >= 8000  # the object's bytes and more
    assert doc["freed_bytes"] == doc["freed_store_bytes"] + 8000
    gone = f"{BUCKET}/stale/objects/{old.sha256[:2]}/{old.sha256}"
    assert store.key_record("1" * 64) is None and not _s3().exists(gone)
    assert {c.sha for c in cached_artifacts(cache)} == {new.sha256, held.sha256}

    assert main(["gc", root, "--older-than", "5", "--json"]) == 0  # stale copies go, the held one stays
    doc = json.loads(capsys.readouterr().out)
    assert doc["freed_bytes"] == doc["freed_cache_bytes"] == 12000 and doc["freed_store_bytes"] == 0
    assert [(Path(r["path"]).name, r["why"]) for r in doc["removed"]] == [(new.sha256, "unused for 10.0 days")]
    assert {c.sha for c in cached_artifacts(cache)} == {held.sha256}
    assert all(store.lookup(k * 64, verify=False) for k in "23")  # in the store still (verify=False: no read)
    holder.communicate("\n", timeout=60)
    os.utime(cached_artifacts(cache)[0].path, (ten_days, ten_days))
    assert main(["gc", root, "--older-than", "5"]) == 0  # the stage has ended: its copy is stale now
    out = capsys.readouterr().out
    assert "removed cached copy" in out and held.sha256 in out and "unused for 10.0 days" in out
    assert "freed 0.01 MB (9000 bytes) in 1 items: 0.00 MB in the store, 0.01 MB in 1 cached copies" in out
    assert cached_artifacts(cache) == []

"""The store's index is the one source of truth: two roots in one project, content-only digests, bad records."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import pytest
from tiny_specs import run_spec

from diffpipe.flows.plan import status
from diffpipe.flows.spec_loading import validate_spec
from diffpipe.storage import ArtifactStore

pytestmark = pytest.mark.slow


def _rooted(raw: dict, root: Path) -> dict:
    out = copy.deepcopy(raw)
    out["storage"]["root"] = str(root)
    return out


def test_two_roots_in_one_project_and_content_only_digests(tiny_spec: dict, tmp_path: Path, prefect_api,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    a, b = _rooted(tiny_spec, tmp_path / "a"), _rooted(tiny_spec, tmp_path / "b")
    first = run_spec(a)
    second = run_spec(b)  # same keys, another root: Prefect's result store now remembers b's artifacts
    changed = copy.deepcopy(a)
    changed["stages"][2]["sw_projections"] = 64  # one changed option on root a: only evaluate reruns
    third = run_spec(changed)  # (before the fix: handed b's pretrain, FileNotFoundError under b's object)
    assert {n: s["state"] for n, s in second.items()} == dict.fromkeys(first, "executed")
    assert {n: s["state"] for n, s in third.items()} == {"data": "cached", "pretrain": "cached",
                                                          "sample": "cached", "evaluate": "executed"}
    # deterministic stages republish the same digests: timings live in the lineage, not in hashed files
    assert {n: s["artifact"]["sha256"] for n, s in first.items()} == {
        n: s["artifact"]["sha256"] for n, s in second.items()}
    store = ArtifactStore(str(tmp_path / "a"))
    pretrain = first["pretrain"]["artifact"]["sha256"]
    assert third["pretrain"]["artifact"]["sha256"] == pretrain
    lineage = store.manifest(pretrain)["lineage"]
    assert {"train_wall_s", "steps_per_s", "resumed_from_step"} <= set(lineage["timings"]["metrics.json"])
    assert "train_wall_s" in first["pretrain"]["metrics"]  # the index record keeps them for status and show

    # unreadable and wrong-shaped index records: a warning and a recompute, never a crash
    keys = Path(tmp_path / "a" / "keys")
    (keys / f"{first['sample']['cache_key']}.json").write_bytes(b"\x00\xffnot json")
    (keys / f"{first['pretrain']['cache_key']}.json").write_text(json.dumps({"ref": {"sha256": 5}}))
    with caplog.at_level(logging.WARNING):
        fourth = run_spec(changed)
    assert fourth["pretrain"]["state"] == "executed" and fourth["sample"]["state"] == "executed"
    assert fourth["pretrain"]["artifact"]["sha256"] == pretrain  # same content, same digest
    assert "unreadable" in caplog.text and "wrong shape" in caplog.text
    rows = {r.name: r.state for r in status(validate_spec(copy.deepcopy(changed)), store)}
    assert set(rows.values()) == {"cached"}


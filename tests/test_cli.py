"""The `diffpipe` command: exit codes, messages that name the field, nothing written on bad input, JSON output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from diffpipe.flows.cli import main


def _write(tmp_path: Path, spec: dict, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return path


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_validate_ok(tiny_spec_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(["validate", str(tiny_spec_file)], capsys)
    assert code == 0 and "pretrain (pretrain)" in out


@pytest.mark.parametrize(
    ("edit", "where"),
    [
        (lambda s: s["stages"][0].update(color="blue"), "stages[0].color"),
        (lambda s: s["stages"][0].update(steps="lots"), "stages[0].steps"),
        (lambda s: s["stages"][1].update(model="evaluate"), "stages[1].model"),
        (lambda s: s["stages"][1]["scheduler"].update(name="EDMEulerScheduler"), "stages[1].scheduler.name"),
        (lambda s: s["stages"][1]["scheduler"].update(name="NotAScheduler"), "stages[1].scheduler.name"),
        (lambda s: s["stages"][1]["scheduler"].update(options={"bogus": 1}), "stages[1].scheduler.options.bogus"),
        (lambda s: s["data"].update(kind="imagenet"), "data.kind"),
    ],
)
def test_bad_specs_exit_2_and_write_nothing(tiny_spec: dict, tmp_path: Path, edit, where: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    edit(tiny_spec)
    path = _write(tmp_path, tiny_spec)
    for command in ("validate", "run", "status"):
        code, out, err = _run([command, str(path)], capsys)
        assert code == 2, (command, err)
        assert err.startswith(f"error: {where}") and "Traceback" not in err
    assert not Path(tiny_spec["storage"]["root"]).exists()


def test_missing_file_bad_override_unwritable_root(tiny_spec: dict, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["validate", str(tmp_path / "nope.yaml")], capsys)
    assert code == 2 and "spec file not found" in err
    path = _write(tmp_path, tiny_spec)
    code, _, err = _run(["validate", str(path), "--set", "stages.nosuch.steps=3"], capsys)
    assert code == 2 and "nosuch" in err
    (tmp_path / "blocker").write_text("a file, not a folder")
    tiny_spec["storage"]["root"] = str(tmp_path / "blocker" / "artifacts")
    code, _, err = _run(["run", str(_write(tmp_path, tiny_spec, "bad-root.yaml"))], capsys)
    assert code == 2 and err.startswith("error: storage.root: the artifact root is not writable")
    (tmp_path / "broken.yaml").write_text("name: x\nstages: [\n")
    code, _, err = _run(["validate", str(tmp_path / "broken.yaml")], capsys)
    assert code == 2 and "not valid YAML" in err


def test_status_and_show_json_before_any_run(tiny_spec_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(["status", str(tiny_spec_file), "--json"], capsys)
    doc = json.loads(out)
    assert code == 0 and [s["state"] for s in doc["stages"]] == ["never run"] * 4
    assert doc["stages"][0]["cache_key"] and doc["stages"][1]["cache_key"] is None
    code, out, _ = _run(["show", str(tiny_spec_file), "pretrain", "--json"], capsys)
    assert code == 0 and json.loads(out)["state"] == "never run"
    code, _, err = _run(["show", str(tiny_spec_file), "nosuch"], capsys)
    assert code == 2 and "no such stage" in err


@pytest.mark.slow
def test_fully_cached_rerun_starts_no_flow(tiny_spec_file: Path, prefect_api, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    import diffpipe.flows.cli as cli

    def states(out: str) -> list[str]:
        return [s["state"] for s in json.loads(out)["stages"]]

    code, out, _ = _run(["run", str(tiny_spec_file), "--json"], capsys)
    assert code == 0 and states(out) == ["executed"] * 4
    flows_started = []
    real_run_flow = cli._run_flow
    monkeypatch.setattr(cli, "_run_flow", lambda args: flows_started.append(args) or real_run_flow(args))
    server = False
    monkeypatch.setattr(cli, "_prefect_server_configured", lambda: server)
    code, out, err = _run(["run", str(tiny_spec_file), "--json"], capsys)
    assert code == 0 and states(out) == ["cached"] * 4 and flows_started == [] and "nothing to run" in err
    code, out, _ = _run(["run", str(tiny_spec_file), "--json", "--record"], capsys)
    assert code == 0 and states(out) == ["cached"] * 4 and len(flows_started) == 1
    server = True  # a server records every run, cached or not
    code, out, _ = _run(["run", str(tiny_spec_file), "--json"], capsys)
    assert code == 0 and states(out) == ["cached"] * 4 and len(flows_started) == 2
    code, out, _ = _run(["run", str(tiny_spec_file), "--json", "--set", "stages[2].sw_projections=16"], capsys)
    assert code == 0 and states(out) == ["cached", "cached", "cached", "executed"] and len(flows_started) == 3
    server = False  # a corrupt cached artifact is no fast path: the flow recomputes it
    sample = next(s for s in json.loads(out)["stages"] if s["name"] == "sample")
    objects = Path(yaml.safe_load(tiny_spec_file.read_text())["storage"]["root"]) / "objects"
    victim = next(f for f in (objects / sample["artifact"]["sha256"][:2] / sample["artifact"]["sha256"]).rglob("*")
                  if f.is_file())
    victim.write_bytes(victim.read_bytes() + b"corrupt")
    code, out, _ = _run(["run", str(tiny_spec_file), "--json", "--set", "stages[2].sw_projections=16"], capsys)
    assert code == 0 and len(flows_started) == 4 and states(out)[:3] == ["cached", "cached", "executed"]


def test_reading_the_store_imports_no_stage_code(tiny_spec_file: Path) -> None:
    """The plan a fully cached `run` reads (keys, store lookups) imports no diffusers, domain or Prefect code."""
    import subprocess
    import sys

    probe = f"""import argparse, sys
from diffpipe.flows.cli import _spec
from diffpipe.flows.plan import status
from diffpipe.storage import ArtifactStore
spec = _spec(argparse.Namespace(spec={str(tiny_spec_file)!r}, set=[]), library_checks=False)
rows = status(spec, ArtifactStore(spec.storage.root))
print('keys:', all(r.key for r in rows[:1]))
print('heavy:', [m for m in ('diffusers', 'prefect', 'sklearn', 'diffpipe.tasks.data.digits') if m in sys.modules])
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert "keys: True" in done.stdout and "heavy: []" in done.stdout, done.stdout + done.stderr

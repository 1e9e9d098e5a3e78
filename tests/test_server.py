"""Against a real `prefect server start` on loopback: a CLI run and its artifacts through the API, and the same
pages a person opens in the Prefect UI, driven in headless Chromium (deployments: test_team_server.py)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from helpers import api_server, free_port
from tiny_specs import tiny_digits_spec

pytestmark = [pytest.mark.slow, pytest.mark.server]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": api, "HF_HUB_OFFLINE": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PATH": f"{BIN}:{os.environ['PATH']}"}
    command = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with api_server(command, env, home / "server.log", api):
        yield api, env


def _filter(api: str, what: str, body: dict | None = None) -> list[dict]:
    r = httpx.post(f"{api}/{what}/filter", json=body or {}, timeout=30)
    r.raise_for_status()
    return r.json()


def _tiny(tmp_path: Path, root: str) -> Path:
    path = tmp_path / f"{root}.yaml"
    path.write_text(yaml.safe_dump(tiny_digits_spec(tmp_path / root)))
    return path


def _cli(args: list[str], env: dict[str, str], cwd: Path, timeout: int = 600) -> str:
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done.stdout + done.stderr


def _variant(spec_file: Path, overrides: list[str] | None = None) -> str:
    from diffpipe.flows.spec_loading import load_spec
    from diffpipe.flows.watch import variant

    return variant(load_spec(spec_file, overrides))


def _artifacts(api: str, key: str) -> list[dict]:
    return _filter(api, "artifacts", {"artifacts": {"key": {"any_": [key]}}})


def test_runs_are_named_keyed_and_followed_through_the_api(server, tmp_path: Path) -> None:
    api, env = server
    spec = _tiny(tmp_path, "art")
    override = "stages.sample.num_samples=30"
    v, v2 = _variant(spec), _variant(spec, [override])
    assert v != v2
    _cli([str(BIN / "diffpipe"), "run", str(spec)], env, tmp_path)
    runs = {r["name"]: r for r in _filter(api, "flow_runs")}
    first = runs[f"digits [{v}]"]  # named from the spec, not its path
    assert first["state_type"] == "COMPLETED"
    tasks = {t["name"]: t["state_type"] for t in _filter(api, "task_runs")}
    assert {"data", "pretrain", "sample", "evaluate"} <= set(tasks)
    for stage in ("data", "pretrain", "sample", "evaluate"):
        assert _artifacts(api, f"digits-{v}-{stage}-summary") and _artifacts(api, f"digits-{v}-{stage}-metrics")
    (summary,) = _artifacts(api, f"digits-{v}-sample-summary")
    assert "data:image/png;base64," in summary["data"]
    assert f"artifact: `file://{tmp_path}/art/objects/" in summary["data"]  # absolute URI
    (progress,) = _artifacts(api, f"digits-{v}-pretrain-progress")  # one artifact, updated as training ran
    assert progress["type"] == "progress" and progress["data"] == 100.0
    (sampled,) = _artifacts(api, f"digits-{v}-sample-samples-progress")  # sampling shows its progress too
    assert sampled["type"] == "progress" and sampled["data"] == 100.0
    assert len(_artifacts(api, f"digits-{v}-pretrain-loss-table")) >= 2  # drawn during training, then at the end
    assert "data:image/png;base64," in _artifacts(api, f"digits-{v}-pretrain-loss-curve")[0]["data"]

    _cli([str(BIN / "diffpipe"), "run", str(spec)], env, tmp_path)  # a rerun of the same variant: all cached
    cached = [t for t in _filter(api, "task_runs") if t["state_name"] == "Cached"]
    assert {t["name"] for t in cached} >= {"data", "pretrain", "sample", "evaluate"}
    (link,) = _artifacts(api, f"digits-{v}-pretrain-cached")
    assert first["id"] in link["data"] and "file://" in link["data"]  # the run that computed it, and where
    assert f"{api.removesuffix('/api')}/v2/runs/flow-run/{first['id']})" in link["data"]  # its page in the V2 UI

    _cli([str(BIN / "diffpipe"), "run", str(spec), "--set", override], env, tmp_path)
    assert f"digits {override} [{v2}]" in {r["name"] for r in _filter(api, "flow_runs")}
    assert len(_artifacts(api, f"digits-{v2}-sample-summary")) == 1  # its own key: the variant v's is untouched
    assert len(_artifacts(api, f"digits-{v}-sample-summary")) == 1


def test_a_person_follows_the_runs_in_the_ui_in_headless_chromium(server, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no Chromium binary on PATH (`chromium`; .ci/run installs the Debian package)")
    from playwright.sync_api import expect, sync_playwright

    api, env = server
    raw = tiny_digits_spec(tmp_path / "ui")
    raw["runtime"]["seed"] = 1  # a variant of its own: the other test's runs and artifact keys stay apart
    spec = tmp_path / "ui.yaml"
    spec.write_text(yaml.safe_dump(raw))
    _cli([str(BIN / "diffpipe"), "run", str(spec)], env, tmp_path)
    _cli([str(BIN / "diffpipe"), "run", str(spec)], env, tmp_path)  # the rerun: every stage cached
    v = _variant(spec)
    name, prefix = f"digits [{v}]", f"digits-{v}"
    first, rerun = sorted((r for r in _filter(api, "flow_runs") if r["name"] == name), key=lambda r: r["start_time"])

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)  # a loaded machine renders slowly; a missing element still fails
        expect.set_options(timeout=60_000)
        page.goto(api.removesuffix("/api") + "/")  # the server's default UI, as a person opens it
        runs_link = page.get_by_role("link", name="Runs", exact=True).first  # the sidebar's (a breadcrumb's too)
        runs_link.click()
        expect(page.get_by_role("link", name=name, exact=True)).to_have_count(2)  # listed under the spec's name

        page.locator(f"a[href$='/runs/flow-run/{first['id']}']").first.click()
        expect(page.get_by_role("tab", name="Parameters")).to_be_visible()  # the run's page, not the list's tabs
        page.get_by_role("tab", name="Task Runs").click()
        tasks = page.get_by_role("tabpanel", name="Task Runs")
        expect(tasks).to_contain_text("(4 Completed)")
        for stage in ("data", "pretrain", "sample", "evaluate"):
            expect(tasks.get_by_role("link", name=stage, exact=True)).to_be_visible()
        page.get_by_role("tab", name="Artifacts").click()
        for key, alt in ((f"{prefix}-pretrain-loss-curve", "loss"), (f"{prefix}-sample-summary", "samples")):
            page.get_by_text(key, exact=True).first.click()  # the key's versions, newest first
            page.locator("a[href*='/artifacts/artifact/']").first.click()
            page.wait_for_function("alt => [...document.querySelectorAll('img')].some("
                                   "i => i.alt === alt && i.complete && i.naturalWidth > 0)", arg=alt)
            page.go_back()
            page.go_back()
            expect(page.get_by_role("tabpanel", name="Artifacts")).to_be_visible()

        runs_link.click()
        page.locator(f"a[href$='/runs/flow-run/{rerun['id']}']").first.click()
        expect(page.get_by_role("tab", name="Parameters")).to_be_visible()
        page.get_by_role("tab", name="Task Runs").click()
        tasks = page.get_by_role("tabpanel", name="Task Runs")
        expect(tasks).to_contain_text("(4 Cached)")
        for stage in ("data", "pretrain", "sample", "evaluate"):
            rows = tasks.get_by_role("listitem").filter(has=page.get_by_role("link", name=stage, exact=True))
            expect(rows.filter(has_text="Cached")).to_have_count(1)  # the stage's row carries the Cached badge
        page.get_by_role("tab", name="Artifacts").click()
        page.get_by_text(f"{prefix}-pretrain-cached", exact=True).click()
        page.locator("a[href*='/artifacts/artifact/']").first.click()
        computed_by = page.get_by_role("listitem").filter(has_text="computed by")  # the rendered markdown's line
        link = computed_by.get_by_role("link", name=name, exact=True)
        expect(link).to_have_attribute("href", re.compile(f"/v2/runs/flow-run/{first['id']}$"))
        link.click()
        expect(page).to_have_title(f"Flow Run: {name} • Prefect Server")  # the run that computed the stage
        assert f"/v2/runs/flow-run/{first['id']}" in page.url  # in the UI it was opened in, not V1
        browser.close()

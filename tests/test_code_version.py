"""A stage's code version covers the modules it executes: edits elsewhere leave its cache key alone."""

from __future__ import annotations

import shutil
from pathlib import Path

from diffpipe.flows.cache import PACKAGE_DIR, code_modules, code_version
from diffpipe.flows.plan import nodes
from diffpipe.flows.spec_loading import load_spec

REPO = Path(__file__).resolve().parents[1]


def _copy(tmp_path: Path, name: str, edits: tuple[str, ...] = ()) -> Path:
    """A copy of the diffpipe sources under its own path (code versions are cached per path), with `edits`
    (files relative to the package) changed by an appended comment."""
    copy = tmp_path / name / "diffpipe"
    shutil.copytree(PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    for relative in edits:
        path = copy / relative
        path.write_text(path.read_text() + "\n# an edit\n")
    return copy


def _version(spec_file: str, stage: str, package: Path) -> str:
    spec = load_spec(REPO / "pipelines" / spec_file)
    node = next(n for n in nodes(spec) if n.name == stage)
    return code_version(node.modules(spec), package)


def test_digits_pretrain_ignores_the_masked_diffusion_sampler_but_not_the_digits_domain(tmp_path: Path) -> None:
    original = _copy(tmp_path, "original")
    sampler = _copy(tmp_path, "sampler", ("tasks/mdlm/sampler.py",))
    domain = _copy(tmp_path, "domain", ("tasks/data/digits.py",))
    assert _version("digits.yaml", "pretrain", sampler) == _version("digits.yaml", "pretrain", original)
    assert _version("digits.yaml", "pretrain", domain) != _version("digits.yaml", "pretrain", original)
    # the Countdown domain samples with the masked-diffusion sampler, so its pretrain key does change
    assert _version("countdown.yaml", "pretrain", sampler) != _version("countdown.yaml", "pretrain", original)


def test_a_stage_covers_the_implementations_it_names_and_no_other() -> None:
    spec = load_spec(REPO / "pipelines" / "digits.yaml")
    pretrain = next(n for n in nodes(spec) if n.name == "pretrain")
    modules = {m for m, _ in code_modules(tuple(sorted(set(pretrain.modules(spec)))))}
    assert {"diffpipe.tasks.pretrain", "diffpipe.tasks.data.digits", "diffpipe.tasks.objectives.flow_matching",
            "diffpipe.tasks.nets.unet2d"} <= modules
    elsewhere = ("diffpipe.tasks.mdlm", "diffpipe.tasks.objectives.ddpm", "diffpipe.tasks.nets.atom_transformer",
                 "diffpipe.tasks.rl.discrete", "diffpipe.tasks.data.cei", "diffpipe.tasks.flowmap.cmt")
    unrelated = {m for m in modules if m.startswith(elsewhere)}
    assert not unrelated

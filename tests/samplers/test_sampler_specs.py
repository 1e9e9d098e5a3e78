"""Bad sampler specs exit 2 at validate with a message naming the field; nothing is written."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from diffpipe.flows.cli import main

GOOD = {
    "name": "s",
    "data": {"kind": "energy", "target": {"kind": "ising", "size": 4, "beta": 0.4407}},
    "model": {"arch": "mdlm"},
    "stages": [{"name": "mdns", "stage": "neural_sampler", "method": "mdns"}, {"name": "ev", "stage": "evaluate"}],
}


def gmm(spec: dict) -> None:
    spec["data"]["target"] = {"kind": "gmm"}
    spec["model"] = {"arch": "time_mlp"}


@pytest.mark.parametrize(("edit", "where", "words"), [
    (lambda s: s["data"]["target"].update(beta=-0.3), "data.target.beta", "greater than 0"),
    (lambda s: s["data"]["target"].update(size=24), "data.target", "size: a 24x24 lattice"),
    (lambda s: s["data"]["target"].update(kind="potts", size=8, q=4), "data.target", "too many for the exact log Z"),
    (lambda s: s["data"]["target"].update(kind="potts", beta=0.0), "data.target.beta", "greater than 0"),
    (lambda s: s["data"].update(target={"kind": "many_well", "dim": 3, "wells": 5}), "data.target", "wells"),
    (lambda s: s["data"].update(target={"kind": "dw4", "temperature": -1.0}), "data.target.temperature",
     "greater than 0"),
    (gmm, "stages[0].method", "mdns samples discrete targets, but gmm lives on a continuous space"),
    (lambda s: s["stages"][0].update(method="pis"), "stages[0].method", "pis samples continuous targets"),
    (lambda s: s["stages"][0].update(method="naas"), "stages[0].method", "naas samples continuous targets"),
    (lambda s: (s["data"]["target"].update(kind="potts", beta=1.005), s["stages"][0].update(method="adjoint")),
     "stages[0].method", "adjoint samples continuous targets, but potts lives on a discrete lattice"),
    (lambda s: s["data"].update(target={"kind": "dw4"}), "stages[0].method",
     "mdns samples discrete targets, but dw4 lives on a continuous space"),
    (lambda s: s.update(model={"arch": "time_mlp"}), "stages[0].method", "model.arch mdlm"),
    (lambda s: s["stages"][0].update(method="langevin"), "stages[0].method", "unknown choice"),
    (lambda s: s["stages"][0].update(warm_start_beta=0.2), "stages[0]", "warm_start_steps: a warm start needs both"),
    (lambda s: s["stages"][0].update(warm_start_beta=0.2, warm_start_steps=2000), "stages[0]",
     "warm_start_steps: must be below steps (1000)"),
    (lambda s: (gmm(s), s["stages"][0].update(method="pdns", warm_start_beta=0.2, warm_start_steps=5)),
     "stages[0].warm_start_beta", "the warm start rescales a lattice's -beta H, but gmm is continuous"),
    (lambda s: (gmm(s), s["stages"][0].update(method="adjoint", sigma_max=0.005)), "stages[0]",
     "sigma_max: the VE schedule needs sigma_max > sigma_min"),
])
def test_bad_sampler_specs_exit_2_naming_the_field(tmp_path: Path, capsys, edit, where: str, words: str) -> None:
    spec = copy.deepcopy(GOOD)
    spec["storage"] = {"root": str(tmp_path / "artifacts")}
    edit(spec)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"error: {where}" in err and words in err, err
    assert not (tmp_path / "artifacts").exists()


def test_good_sampler_spec_validates(tmp_path: Path, capsys) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    assert main(["validate", str(path)]) == 0


def test_large_lattice_without_exact_log_z_validates(tmp_path: Path) -> None:
    """The size limit is the exact log Z's: a 24x24 lattice without it (MCMC ground truth) is a valid spec."""
    spec = copy.deepcopy(GOOD)
    spec["data"]["target"].update(size=24, exact_log_z=False)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["validate", str(path)]) == 0

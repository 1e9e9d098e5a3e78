"""Two-time wrapper: teacher initialisation, save/load, forward-mode AD through a diffusers UNet."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from diffusers import UNet2DModel  # noqa: E402
from flowmap_helpers import generator, method_spec  # noqa: E402

from diffpipe.errors import SpecError  # noqa: E402
from diffpipe.tasks.flowmap.meanflow import MeanFlowLoss  # noqa: E402
from diffpipe.tasks.nets.atom_transformer import AtomTransformer  # noqa: E402
from diffpipe.tasks.nets.flowmap import FlowMapNet, VelocityMLP, one_time_velocity  # noqa: E402


def _digits_unet() -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8, num_class_embeds=11,
    )


def test_student_from_a_unet_teacher_gives_the_teacher_velocity():
    teacher = _digits_unet()
    student = FlowMapNet.from_teacher(teacher)
    x, t, labels = torch.randn(6, 1, 8, 8), torch.rand(6), torch.randint(0, 11, (6,))
    with torch.no_grad():
        v = one_time_velocity(teacher)(x, t, labels)
        assert torch.allclose(student(x, t, t, labels), v, atol=1e-5)
        assert torch.allclose(student(x, 0.3 * t, t, labels), v, atol=1e-5)
        assert not torch.allclose(student(x, t, t, (labels + 1) % 11), v, atol=1e-3)


def test_student_from_an_mlp_teacher_is_exact_and_round_trips(tmp_path):
    torch.manual_seed(0)
    teacher = VelocityMLP(hidden=32, depth=2, time_channels=16)
    student = FlowMapNet.from_teacher(teacher)
    z, t = torch.randn(10, 2), torch.rand(10)
    with torch.no_grad():
        assert torch.equal(student(z, t, t), one_time_velocity(teacher)(z, t, None))
        student.gap_slot.gap.linear_2.bias.add_(0.5)
        before = student(z, 0.5 * t, t)
    student.save_pretrained(tmp_path)
    loaded = FlowMapNet.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(z, 0.5 * t, t), before)


def test_meanflow_jvp_runs_through_the_unet_and_trains_the_gap_embedding():
    student = FlowMapNet.from_teacher(_digits_unet())
    x0, labels = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    loss = MeanFlowLoss(method_spec("meanflow"))(student, x0, labels, generator()).mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert float(student.gap_slot.gap.linear_2.weight.grad.abs().sum()) > 0


def test_unknown_base_models_are_refused():
    with pytest.raises(SpecError, match="base_class"):
        FlowMapNet(base_class="DiTTransformer2DModel", base_config={})


def _atom_condition(batch: int = 4, atoms: int = 5) -> dict[str, torch.Tensor]:
    mask = torch.ones(batch, atoms, dtype=torch.bool)
    mask[0, -1] = False
    return {"elements": torch.randint(1, 9, (batch, atoms)), "charges": torch.randint(1, 4, (batch, atoms)),
            "momenta": torch.randn(batch, atoms, 3) * 50, "mask": mask}


def _call_atoms(model, x, timestep, cond):
    return model(x, timestep, cond["elements"], cond["charges"], cond["momenta"], cond["mask"])


def test_atom_transformer_student_is_the_teacher_and_meanflow_jvp_trains_its_gap():
    torch.manual_seed(0)
    teacher = AtomTransformer(width=32, depth=2, heads=4)
    for block in teacher.blocks:  # a trained teacher: its adaLN (zero at init) lets the time act
        torch.nn.init.normal_(block.modulation.weight, std=0.1)
    student = FlowMapNet.from_teacher(teacher).bind(_call_atoms)
    cond, x, t = _atom_condition(), torch.randn(4, 5, 3), torch.rand(4)
    with torch.no_grad():
        expected = _call_atoms(teacher, x, 1000 * t, cond)
        assert torch.allclose(student(x, 0.2 * t, t, cond), expected, atol=1e-5)
    loss = MeanFlowLoss(method_spec("meanflow"))(student, x, cond, generator()).mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert float(student.gap_slot.gap.linear_2.weight.grad.abs().sum()) > 0


def test_year_embedding_of_a_timestep_class_unet_keeps_its_meaning_in_the_student():
    torch.manual_seed(0)
    teacher = UNet2DModel(sample_size=8, in_channels=2, out_channels=2, block_out_channels=(16, 32),
                          layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                          up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8, class_embed_type="timestep")
    student = FlowMapNet.from_teacher(teacher)
    x, t, year = torch.randn(3, 2, 8, 8), torch.rand(3), torch.tensor([10.0, 120.0, 240.0])
    with torch.no_grad():
        v = one_time_velocity(teacher)(x, t, year)
        assert torch.allclose(student(x, 0.5 * t, t, year), v, atol=1e-5)
        assert not torch.allclose(student(x, 0.5 * t, t, year + 50), v, atol=1e-3)
        student.gap_slot.gap.linear_2.weight.normal_(std=0.1)
        assert not torch.allclose(student(x, 0.5 * t, t, year), student(x, t, t, year), atol=1e-4)

"""Two-time wrapper: teacher initialisation, explicit times, whole save/load, forward-mode AD through the bases."""

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
from diffpipe.tasks.nets.flowmap import (  # noqa: E402
    FlowMapNet,
    TwoTimeCall,
    VelocityMLP,
    network_fn,
    one_time_velocity,
)


def _digits_unet() -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8, num_class_embeds=11,
    )


def test_student_from_a_unet_teacher_gives_the_teacher_velocity():
    teacher = _digits_unet()
    student = TwoTimeCall(FlowMapNet.from_teacher(teacher))
    x, t, labels = torch.randn(6, 1, 8, 8), torch.rand(6), torch.randint(0, 11, (6,))
    with torch.no_grad():
        v = one_time_velocity(teacher)(x, t, labels)
        assert torch.allclose(student(x, t, t, labels), v, atol=1e-5)
        assert torch.allclose(student(x, 0.3 * t, t, labels), v, atol=1e-5)
        assert not torch.allclose(student(x, t, t, (labels + 1) % 11), v, atol=1e-3)


def test_student_from_an_mlp_teacher_is_exact_and_round_trips(tmp_path):
    torch.manual_seed(0)
    teacher = VelocityMLP(hidden=32, depth=2, time_channels=16)
    model = FlowMapNet.from_teacher(teacher)
    student = TwoTimeCall(model)
    z, t = torch.randn(10, 2), torch.rand(10)
    with torch.no_grad():
        assert torch.equal(student(z, t, t), one_time_velocity(teacher)(z, t, None))
        model.gap_embedding.linear_2.bias.add_(0.5)
        before = student(z, 0.5 * t, t)
    model.save_pretrained(tmp_path)
    loaded = FlowMapNet.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(TwoTimeCall(loaded)(z, 0.5 * t, t), before)
        assert not torch.allclose(before, one_time_velocity(teacher)(z, t, None), atol=1e-3)  # the gap weights load


def test_the_times_are_explicit_arguments_and_no_state_is_kept_between_calls():
    model = FlowMapNet.from_teacher(_digits_unet())
    with torch.no_grad():
        model.gap_embedding.linear_2.weight.normal_(std=0.1)
    x, labels = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    t, r = torch.full((4,), 800.0), torch.tensor([0.0, 200.0, 400.0, 800.0])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    loose = [n for m in model.modules() for n, v in vars(m).items() if isinstance(v, torch.Tensor)]
    with torch.no_grad():
        first = model(x, t, r, class_labels=labels).sample
        model(x, t, t, class_labels=labels)  # a call at another gap in between changes nothing
        again = model(x, t, r, class_labels=labels).sample
        rows = torch.cat([model(x[i:i + 1], t[i], r[i], class_labels=labels[i:i + 1]).sample for i in range(4)])
    assert torch.equal(first, again)
    assert torch.allclose(first, rows, atol=1e-5)  # row i depends on its own (t, r) only
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert not loose  # no tensor held outside the registered parameters and buffers


def test_a_digits_student_reloaded_from_its_folder_computes_the_same_outputs_with_no_binding(tmp_path):
    from diffpipe.tasks.data.digits import DigitsDomain
    from diffpipe.tasks.nets import load_model

    model = FlowMapNet.from_teacher(_digits_unet())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    assert type(loaded) is FlowMapNet
    x, labels = torch.randn(5, 1, 8, 8), torch.randint(0, 10, (5,))
    t, r = torch.rand(5) * 1000, torch.rand(5) * 300
    domain = DigitsDomain()
    with torch.no_grad():
        for net in (domain.net, network_fn):
            assert torch.equal(net(loaded)(x, t, labels, r), net(model)(x, t, labels, r))
        assert torch.equal(loaded(x, t, r, class_labels=labels).sample, model(x, t, r, class_labels=labels).sample)
        assert not torch.equal(domain.net(loaded)(x, t, labels, r), domain.net(loaded)(x, t, labels))


def test_meanflow_jvp_runs_through_the_unet_and_trains_the_gap_embedding():
    student = FlowMapNet.from_teacher(_digits_unet())
    x0, labels = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    loss = MeanFlowLoss(method_spec("meanflow"))(TwoTimeCall(student), x0, labels, generator()).mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert float(student.gap_embedding.linear_2.weight.grad.abs().sum()) > 0


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
    model = FlowMapNet.from_teacher(teacher)
    student = TwoTimeCall(model, _call_atoms)
    cond, x, t = _atom_condition(), torch.randn(4, 5, 3), torch.rand(4)
    with torch.no_grad():
        expected = _call_atoms(teacher, x, 1000 * t, cond)
        assert torch.allclose(student(x, 0.2 * t, t, cond), expected, atol=1e-5)
        assert torch.allclose(model(x, 1000 * t, 200 * t, **cond), expected, atol=1e-5)
    loss = MeanFlowLoss(method_spec("meanflow"))(student, x, cond, generator()).mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert float(model.gap_embedding.linear_2.weight.grad.abs().sum()) > 0


def test_an_atom_transformer_student_round_trips_whole(tmp_path):
    torch.manual_seed(1)
    model = FlowMapNet.from_teacher(AtomTransformer(width=32, depth=1, heads=4))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(tmp_path)
    loaded = FlowMapNet.from_pretrained(tmp_path)
    cond, x, t = _atom_condition(), torch.randn(4, 5, 3), torch.rand(4) * 1000
    with torch.no_grad():
        assert torch.equal(loaded(x, t, 0.5 * t, **cond), model(x, t, 0.5 * t, **cond))


def test_year_embedding_of_a_timestep_class_unet_keeps_its_meaning_in_the_student():
    torch.manual_seed(0)
    teacher = UNet2DModel(sample_size=8, in_channels=2, out_channels=2, block_out_channels=(16, 32),
                          layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                          up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8, class_embed_type="timestep")
    model = FlowMapNet.from_teacher(teacher)
    student = TwoTimeCall(model)
    x, t, year = torch.randn(3, 2, 8, 8), torch.rand(3), torch.tensor([10.0, 120.0, 240.0])
    with torch.no_grad():
        v = one_time_velocity(teacher)(x, t, year)
        assert torch.allclose(student(x, 0.5 * t, t, year), v, atol=1e-5)
        assert not torch.allclose(student(x, 0.5 * t, t, year + 50), v, atol=1e-3)
        model.gap_embedding.linear_2.weight.normal_(std=0.1)
        assert not torch.allclose(student(x, 0.5 * t, t, year), student(x, t, t, year), atol=1e-4)

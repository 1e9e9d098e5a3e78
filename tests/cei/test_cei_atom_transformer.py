"""The atom transformer: equivariance through the momentum frame, padding, regressor mode, save/load."""

from __future__ import annotations

import torch

from diffpipe.tasks.data.cei.augment import random_rotations, rotate
from diffpipe.tasks.nets.atom_transformer import AtomTransformer, atom_regressor, momentum_frame


def make_batch(seed: int = 0):
    """Four events of up to 6 atoms, the first padded to 4."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[0, 4:] = False
    momenta = torch.randn(4, 6, 3, generator=generator, dtype=torch.float64) * 100 * mask[..., None]
    sample = torch.randn(4, 6, 3, generator=generator, dtype=torch.float64) * mask[..., None]
    elements = torch.randint(1, 18, (4, 6), generator=generator) * mask
    charges = torch.randint(1, 5, (4, 6), generator=generator) * mask
    timestep = torch.rand(4, generator=generator, dtype=torch.float64) * 1000
    return sample, timestep, elements, charges, momenta, mask


def test_momentum_frame_is_a_proper_equivariant_rotation():
    _, _, _, _, momenta, mask = make_batch()
    frame = momentum_frame(momenta, mask)
    assert torch.allclose(torch.linalg.det(frame), torch.ones(4, dtype=torch.float64))
    rotations = random_rotations(4, torch.Generator().manual_seed(1))
    assert torch.allclose(momentum_frame(rotate(momenta, rotations), mask), rotations @ frame, atol=1e-10)


def test_diffusion_output_rotates_with_the_event_and_ignores_padding():
    torch.manual_seed(0)
    net = AtomTransformer(width=32, depth=2, heads=4).double()
    sample, timestep, elements, charges, momenta, mask = make_batch()
    out = net(sample, timestep, elements, charges, momenta, mask)
    rotations = random_rotations(4, torch.Generator().manual_seed(2))
    rotated = net(rotate(sample, rotations), timestep, elements, charges, rotate(momenta, rotations), mask)
    assert torch.allclose(rotated, rotate(out, rotations), atol=1e-10)
    assert torch.all(out[0, 4:] == 0)
    alone = net(sample[:1, :4], timestep[:1], elements[:1, :4], charges[:1, :4], momenta[:1, :4],
                mask[:1, :4])
    assert torch.allclose(alone, out[:1, :4], atol=1e-10)
    out.square().sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_regressor_shares_the_backbone_and_round_trips(tmp_path):
    regressor = atom_regressor(width=32, depth=2, heads=4)
    _, _, elements, charges, momenta, mask = make_batch()
    out = regressor(None, None, elements, charges, momenta.float(), mask)
    assert out.shape == (4, 6, 3) and regressor.config.deterministic
    regressor.save_pretrained(tmp_path / "regressor")
    loaded = AtomTransformer.from_pretrained(tmp_path / "regressor")
    assert torch.equal(loaded(None, None, elements, charges, momenta.float(), mask), out)

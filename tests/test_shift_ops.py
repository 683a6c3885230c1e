import pytest
import torch
from torch import nn

from shufflenet.ops import (
    GroupedShift,
    SegmentShift,
    SparseShift,
    bilinear_shift,
    grouped_offsets,
    integer_shift,
    shift_penalty,
    shift_segments,
    shift_sparsity,
    sparsity_table,
)


def rolled_with_zero_fill(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Oracle: torch.roll per channel, then zero the rows/columns that wrapped around."""
    out = torch.empty_like(x)
    height, width = x.shape[-2:]
    for c, (a, b) in enumerate(zip(dy.tolist(), dx.tolist(), strict=True)):
        channel = torch.roll(x[:, c], (a, b), dims=(1, 2))
        rows = torch.arange(height)
        cols = torch.arange(width)
        wrapped = ((rows - a < 0) | (rows - a >= height))[:, None] | ((cols - b < 0) | (cols - b >= width))
        out[:, c] = channel.masked_fill(wrapped, 0)
    return out


def random_ssl(channels: int, spread: float = 2.0, seed: int = 0) -> SparseShift:
    generator = torch.Generator().manual_seed(seed)
    layer = SparseShift(channels).double()
    with torch.no_grad():
        layer.alpha.copy_(torch.randn(channels, generator=generator, dtype=torch.float64) * spread)
        layer.beta.copy_(torch.randn(channels, generator=generator, dtype=torch.float64) * spread)
    return layer


def test_integer_shift_equals_roll_with_zero_fill():
    x = torch.randn(2, 24, 6, 7)
    dy, dx = torch.randint(-4, 5, (24,)), torch.randint(-4, 5, (24,))
    assert torch.equal(integer_shift(x, dy, dx), rolled_with_zero_fill(x, dy, dx))


def test_integer_shift_direction_and_beyond_the_map():
    x = torch.arange(1.0, 10.0).view(1, 1, 3, 3)
    # (dy, dx) = (1, 0): content moves one row down, the top row is zero.
    down = integer_shift(x, torch.tensor([1]), torch.tensor([0]))
    assert down[0, 0].tolist() == [[0, 0, 0], [1, 2, 3], [4, 5, 6]]
    gone = integer_shift(x, torch.tensor([0]), torch.tensor([-7]))
    assert torch.count_nonzero(gone) == 0


def test_integer_shift_input_gradient_is_the_inverse_shift():
    x = torch.randn(1, 9, 5, 5, requires_grad=True)
    dy, dx = grouped_offsets(9)
    weights = torch.randn(1, 9, 5, 5)
    (integer_shift(x, dy, dx) * weights).sum().backward()
    assert torch.equal(x.grad, integer_shift(weights, -dy, -dx))


def test_ssl_forward_is_the_rounded_integer_shift():
    x = torch.randn(2, 16, 8, 9, dtype=torch.float64)
    layer = random_ssl(16)
    dy, dx = torch.round(layer.beta).long(), torch.round(layer.alpha).long()
    assert torch.equal(layer(x), rolled_with_zero_fill(x, dy, dx))
    assert torch.equal(torch.stack(layer.displacement()), torch.stack([dy, dx]))


def test_ssl_displacement_gradients_match_finite_differences_of_the_bilinear_shift():
    torch.manual_seed(0)
    x = torch.randn(2, 12, 7, 6, dtype=torch.float64)
    layer = random_ssl(12, seed=1)
    upstream = torch.randn(2, 12, 7, 6, dtype=torch.float64)
    (layer(x) * upstream).sum().backward()
    alpha, beta = layer.alpha.detach(), layer.beta.detach()
    eps = 1e-6

    def loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (bilinear_shift(x, a, b) * upstream).sum()

    for c in range(12):
        step = torch.zeros(12, dtype=torch.float64)
        step[c] = eps
        d_alpha = (loss(alpha + step, beta) - loss(alpha - step, beta)) / (2 * eps)
        d_beta = (loss(alpha, beta + step) - loss(alpha, beta - step)) / (2 * eps)
        assert layer.alpha.grad[c].item() == pytest.approx(d_alpha.item(), rel=1e-6, abs=1e-8)
        assert layer.beta.grad[c].item() == pytest.approx(d_beta.item(), rel=1e-6, abs=1e-8)


def test_ssl_gradients_agree_with_autograd_through_the_bilinear_shift():
    x = torch.randn(1, 10, 6, 6, dtype=torch.float64, requires_grad=True)
    layer = random_ssl(10, spread=1.5, seed=2)
    upstream = torch.randn(1, 10, 6, 6, dtype=torch.float64)
    (layer(x) * upstream).sum().backward()
    alpha = layer.alpha.detach().clone().requires_grad_()
    beta = layer.beta.detach().clone().requires_grad_()
    (bilinear_shift(x.detach(), alpha, beta) * upstream).sum().backward()
    assert torch.allclose(layer.alpha.grad, alpha.grad)
    assert torch.allclose(layer.beta.grad, beta.grad)
    # The input gradient is the straight-through one: the inverse of the integer shift actually applied.
    dy, dx = layer.displacement()
    assert torch.equal(x.grad, integer_shift(upstream, -dy, -dx))


def test_ssl_learns_a_displacement():
    # A smooth blob, so the interpolated loss has a slope from two pixels away.
    grid = torch.arange(16.0) - 7.5
    blob = torch.exp(-(grid[:, None] ** 2 + grid[None, :] ** 2) / 8).view(1, 1, 16, 16)
    target = integer_shift(blob, torch.tensor([2]), torch.tensor([-1]))
    layer = SparseShift(1, init="zero")
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.05)
    for _ in range(100):
        optimizer.zero_grad()
        ((layer(blob) - target) ** 2).sum().backward()
        optimizer.step()
    assert [t.item() for t in layer.displacement()] == [2, -1]


def test_grouped_initialisation_spreads_the_3x3_window():
    dy, dx = grouped_offsets(20)  # 2 channels per offset, 2 left unshifted
    offsets = {(a, b) for a, b in zip(dy[:18].tolist(), dx[:18].tolist(), strict=True)}
    assert offsets == {(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)}
    assert dy[18:].tolist() == [0, 0] and dx[18:].tolist() == [0, 0]
    layer = SparseShift(20)
    assert torch.equal(torch.stack(layer.displacement()), torch.stack([dy, dx]))
    assert shift_sparsity(layer)[0].unshifted == 4  # the centre group and the remainder


@pytest.mark.parametrize("make", [lambda: random_ssl(30, seed=3), lambda: GroupedShift(30).double()])
@pytest.mark.parametrize("in_place", [False, True])
def test_inference_form_equals_training_form_exactly(make, in_place):
    layer = make()
    x = torch.randn(2, 30, 7, 5, dtype=torch.float64)
    inference = SegmentShift.from_layer(layer, in_place=in_place)
    assert torch.equal(inference(x.clone()), layer(x))


def test_segments_group_channels_unshifted_first():
    dy = torch.tensor([1, 0, 1, 0, -2])
    dx = torch.tensor([0, 0, 0, 0, 1])
    order, segments = shift_segments(dy, dx)
    assert order.tolist() == [1, 3, 4, 0, 2]
    assert [(s.start, s.stop, s.dy, s.dx) for s in segments] == [(0, 2, 0, 0), (2, 3, -2, 1), (3, 5, 1, 0)]


def test_in_place_inference_moves_only_shifted_channels():
    layer = GroupedShift(18)
    _, segments = shift_segments(*layer.displacement())
    contiguous = SegmentShift(segments, in_place=True)
    x = torch.randn(1, 18, 4, 4)
    before = x.clone()
    out = contiguous(x)
    assert out.data_ptr() == x.data_ptr()  # written over the input, no new map
    assert torch.equal(out[:, :2], before[:, :2])  # the two unshifted (centre) channels untouched


def test_shift_penalty_l1_and_l2():
    model = nn.Sequential(SparseShift(9), nn.ReLU(), SparseShift(9), GroupedShift(9))
    # 9 channels: offsets in {-1, 0, 1}, six nonzero alpha and six nonzero beta per layer.
    assert shift_penalty(model, "l1").item() == 24
    assert shift_penalty(model, "l2").item() == 24
    with torch.no_grad():
        model[0].alpha.mul_(2)
    assert shift_penalty(model, "l1").item() == 30
    assert shift_penalty(model, "l2").item() == 42
    with pytest.raises(ValueError, match="l1, l2"):
        shift_penalty(model, "l3")


def test_sparsity_report_in_table_2_format():
    model = nn.Sequential(SparseShift(9, init="zero"), SparseShift(18))
    rows = shift_sparsity(model)
    assert [(r.layer, r.unshifted, r.channels) for r in rows] == [("0", 9, 9), ("1", 2, 18)]
    cells = [
        [cell.strip() for cell in line.strip("|").split("|")] for line in sparsity_table(rows).splitlines()
    ]
    assert ["0", "9 / 9", "100.0%"] in cells
    assert cells[-1] == ["**total**", "11 / 27", "40.7%"]


def test_integer_shift_rejects_bad_shapes():
    with pytest.raises(ValueError, match="one displacement per channel"):
        integer_shift(torch.randn(1, 4, 3, 3), torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="init must be one of"):
        SparseShift(4, init="random")

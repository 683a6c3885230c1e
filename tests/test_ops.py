import pytest
import torch
import torch.nn.functional as F

from shufflenet.ops import ChannelShuffle, channel_shuffle, concat_shuffle


@pytest.mark.parametrize("groups", [1, 2, 3, 4, 8])
def test_channel_shuffle_equals_torch(groups):
    x = torch.randn(2, 24, 5, 7)
    assert torch.equal(channel_shuffle(x, groups), F.channel_shuffle(x, groups))


@pytest.mark.parametrize("groups", [2, 3, 8])
def test_channel_shuffle_channels_last_kept(groups):
    x = torch.randn(2, 48, 6, 5).to(memory_format=torch.channels_last)
    out = channel_shuffle(x, groups)
    assert torch.equal(out, F.channel_shuffle(x.contiguous(), groups))
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert not out.is_contiguous()


def test_channel_shuffle_is_the_paper_permutation():
    # Section 3.1: reshape (g, n), transpose, flatten -> channel k*g + j comes from group j, slot k.
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]
    assert channel_shuffle(x, 3).flatten().tolist() == [0, 2, 4, 1, 3, 5]


def test_channel_shuffle_gradient_is_inverse_permutation():
    x = torch.randn(1, 6, 2, 2, requires_grad=True)
    weights = torch.arange(6.0).view(1, 6, 1, 1)
    (channel_shuffle(x, 3) * weights).sum().backward()
    expected = channel_shuffle(torch.ones(1, 6, 2, 2) * weights, 2)  # inverse of g=3 on 6 channels is g=2
    assert torch.equal(x.grad, expected)


def test_channel_shuffle_rejects_indivisible_channels():
    with pytest.raises(ValueError, match=r"100 not divisible by groups 3; nearest valid: 99 or 102"):
        channel_shuffle(torch.randn(1, 100, 2, 2), 3)


def test_channel_shuffle_rejects_non_4d():
    with pytest.raises(ValueError, match="NCHW"):
        channel_shuffle(torch.randn(6, 2), 3)


def test_channel_shuffle_module():
    module = ChannelShuffle(4)
    x = torch.randn(1, 8, 3, 3)
    assert torch.equal(module(x), F.channel_shuffle(x, 4))
    assert "groups=4" in repr(module)


@pytest.mark.parametrize("channels_last", [False, True])
def test_concat_shuffle_equals_cat_then_shuffle_values_layout_and_gradients(channels_last):
    x = torch.randn(2, 16, 5, 6)
    computed = torch.randn(2, 8, 5, 6)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        computed = computed.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    computed.requires_grad_(True)
    kept = x.chunk(2, dim=1)[0]  # a channel slice, as in a stride-1 ShuffleNet V2 unit
    out = concat_shuffle(kept, computed)
    reference = channel_shuffle(torch.cat((kept, computed), dim=1), 2)
    assert torch.equal(out, reference)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    weights = torch.randn_like(reference)
    grads = torch.autograd.grad((out * weights).sum(), (x, computed))
    expected = torch.autograd.grad((reference * weights).sum(), (x, computed))
    assert all(torch.equal(got, want) for got, want in zip(grads, expected, strict=True))
    # The branch's gradient is dense in its layout, not a stride-2 view (what makes its backward fast).
    seen = []
    branch = computed * 1.0
    branch.register_hook(seen.append)
    torch.autograd.grad((concat_shuffle(kept, branch) * weights).sum(), (x, computed))
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert seen[0].is_contiguous(memory_format=layout)


def test_concat_shuffle_rejects_mismatched_halves():
    with pytest.raises(ValueError, match="two NCHW tensors of one shape"):
        concat_shuffle(torch.randn(1, 4, 2, 2), torch.randn(1, 6, 2, 2))

"""Combinators and leaf layers against plain torch."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

import refiners_core as rc


def test_parallel_distribute_sum_residual_concatenate_passthrough() -> None:
    x = torch.randn(2, 3)
    y = torch.randn(2, 3)
    double, triple = rc.Multiply(2.0), rc.Multiply(3.0)
    assert all(torch.equal(a, b) for a, b in zip(rc.Parallel(double, triple)(x), (2 * x, 3 * x), strict=True))
    out = rc.Distribute(rc.Multiply(2.0), rc.Multiply(3.0))(x, y)
    assert torch.equal(out[0], 2 * x) and torch.equal(out[1], 3 * y)
    with pytest.raises(ValueError, match="2 children but got 1"):
        rc.Distribute(rc.Identity(), rc.Identity())(x)
    assert torch.allclose(rc.Sum(rc.Multiply(2.0), rc.Multiply(3.0))(x), 5 * x)
    assert torch.allclose(rc.Residual(rc.Multiply(2.0))(x), 3 * x)
    assert torch.equal(rc.Concatenate(rc.Identity(), rc.Multiply(2.0), dim=1)(x), torch.cat([x, 2 * x], dim=1))
    seen: list[torch.Tensor] = []
    assert torch.equal(rc.Passthrough(rc.Multiply(5.0), rc.Lambda(seen.append))(x), x)
    assert torch.equal(seen[0], 5 * x)


def test_leaf_layers_match_torch() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 8, 6, 6)
    assert torch.equal(rc.SiLU()(x), F.silu(x))
    assert torch.equal(rc.ReLU()(x), F.relu(x))
    assert torch.equal(rc.GeLU()(x), F.gelu(x))
    assert torch.equal(rc.GeLU("tanh")(x), F.gelu(x, approximate="tanh"))
    assert torch.allclose(rc.ApproximateGeLU()(x), x * torch.sigmoid(1.702 * x))
    assert torch.equal(rc.Sigmoid()(x), torch.sigmoid(x)) and torch.equal(rc.Tanh()(x), torch.tanh(x))
    assert torch.equal(rc.Softmax(1)(x), torch.softmax(x, 1))
    norm = rc.GroupNorm(8, 4)
    assert torch.equal(norm(x), F.group_norm(x, 4, norm.weight, norm.bias, norm.eps))
    conv = rc.Conv2d(8, 4, 3, padding=1)
    assert torch.equal(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1))
    tconv = rc.ConvTranspose2d(8, 4, 2, stride=2)
    assert tconv(x).shape == (2, 4, 12, 12)
    assert rc.Flatten(2)(x).shape == (2, 8, 36)
    assert rc.Unflatten(2, (3, 12))(rc.Flatten(2)(x)).shape == (2, 8, 3, 12)
    assert rc.Reshape(8, 36)(x).shape == (2, 8, 36)
    assert rc.Transpose(1, 2)(x).shape == (2, 6, 8, 6)
    assert rc.Permute(0, 2, 3, 1)(x).shape == (2, 6, 6, 8)
    assert rc.Unsqueeze(0)(x).shape == (1, 2, 8, 6, 6) and rc.Squeeze(0)(rc.Unsqueeze(0)(x)).shape == x.shape
    assert torch.equal(rc.Slicing(dim=1, start=2, end=4)(x), x[:, 2:4])
    a, b = rc.Chunk(2, dim=1)(x)
    assert torch.equal(rc.Cat(dim=1)(a, b), x)
    assert torch.equal(rc.Multiply(2.0, 1.0)(x), 2 * x + 1)
    assert torch.equal(rc.Cos()(x), torch.cos(x)) and torch.equal(rc.Sin()(x), torch.sin(x))
    assert rc.Converter(dtype=torch.float16)(x).dtype == torch.float16
    assert rc.Interpolate()(x).shape == (2, 8, 12, 12)
    assert rc.Interpolate()(x, torch.Size([2, 8, 11, 13])).shape == (2, 8, 11, 13)
    assert rc.Upsample(8)(x).shape == (2, 8, 12, 12)
    assert rc.Downsample(8)(x).shape == (2, 8, 3, 3)
    assert rc.Downsample(8, use_conv=False)(x).shape == (2, 8, 3, 3)
    glu = rc.GLU(rc.GeLU())
    assert torch.equal(glu(x), x.chunk(2, -1)[0] * F.gelu(x.chunk(2, -1)[1]))
    emb = rc.Embedding(10, 4)
    assert torch.equal(emb(torch.tensor([1, 2])), emb.weight[[1, 2]])
    assert rc.Parameter(3, 4)(x).shape == (2, 3, 4)
    assert rc.LayerNorm(6)(x).shape == x.shape
    rc.Dropout(0.5).eval()
    assert torch.equal(rc.Dropout(0.5).eval()(x), x)


def test_attention_matches_torch_multihead_attention() -> None:
    torch.manual_seed(0)
    attention = rc.SelfAttention(embedding_dim=16, num_heads=4)
    reference = torch.nn.MultiheadAttention(16, 4, batch_first=True)
    q, k, v = attention.Attention.Distribute
    with torch.no_grad():
        reference.in_proj_weight.copy_(torch.cat([q.weight, k.weight, v.weight]))
        reference.in_proj_bias.copy_(torch.cat([q.bias, k.bias, v.bias]))
        reference.out_proj.weight.copy_(attention.Attention.Linear.weight)
        reference.out_proj.bias.copy_(attention.Attention.Linear.bias)
    x = torch.randn(2, 5, 16)
    expected, _ = reference(x, x, x, need_weights=False)
    assert torch.allclose(attention(x), expected, atol=1e-6)
    cross = rc.Attention(16, num_heads=2, key_embedding_dim=8, value_embedding_dim=8, qkv_bias=False)
    assert cross(x, torch.randn(2, 3, 8), torch.randn(2, 3, 8)).shape == (2, 5, 16)
    with pytest.raises(ValueError, match="not divisible"):
        rc.Attention(10, num_heads=3)
    causal = rc.ScaledDotProductAttention(num_heads=2, is_causal=True)
    out = causal(x, x, x)
    # the first token only attends to itself
    assert torch.allclose(out[:, 0], x[:, 0], atol=1e-6)


def test_spatial_size_and_contiguous() -> None:
    x = torch.randn(2, 3, 4, 5)
    assert rc.SpatialSize()(x) == torch.Size([4, 5])
    view = x.flatten(2).transpose(1, 2)  # [B, HW, C], not contiguous
    assert not view.is_contiguous()
    assert rc.Contiguous()(view).is_contiguous() and torch.equal(rc.Contiguous()(view), view)
    tokens = view.contiguous()  # [B, HW, C] as attention layers produce them
    image = rc.Unflatten(2)(tokens.transpose(1, 2), torch.Size([4, 5]))  # back to an image: a strided view
    assert not image.is_contiguous() and rc.Contiguous()(image).is_contiguous()
    assert rc.Contiguous()(x) is x  # no copy when already contiguous


def test_weighted_leaves_initialise_like_torch_and_skip_init_on_meta(monkeypatch: pytest.MonkeyPatch) -> None:
    for ours, theirs, args in (
        (rc.Linear, torch.nn.Linear, (6, 4)),
        (rc.Conv2d, torch.nn.Conv2d, (3, 4, 3)),
        (rc.Embedding, torch.nn.Embedding, (5, 4)),
    ):
        torch.manual_seed(0)
        mine = ours(*args)
        torch.manual_seed(0)
        reference = theirs(*args)
        assert torch.equal(mine.weight, reference.weight)
    calls: list[int] = []
    monkeypatch.setattr(torch.nn.init, "kaiming_uniform_", lambda *a, **k: calls.append(1))
    rc.Linear(6, 4, device="meta")
    rc.Conv2d(3, 4, 3, device="meta")
    assert calls == []  # nothing to initialise on meta: weights are assigned when loaded
    rc.Linear(6, 4)
    assert calls == [1]

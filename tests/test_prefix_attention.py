"""Attention over a shared prefix equals attention over the concatenated keys, and the
tiny model's scores are the same whichever way the prefix reaches the batch."""

from __future__ import annotations

import types

import pytest


def _reference(query, keys, values, mask, scale):
    import torch

    g = query.shape[1] // keys.shape[1]
    keys, values = keys.repeat_interleave(g, 1), values.repeat_interleave(g, 1)
    return torch.nn.functional.scaled_dot_product_attention(
        query, keys, values, attn_mask=mask, scale=scale).transpose(1, 2)


@pytest.mark.parametrize("heads,kv_heads", [(4, 2), (3, 3)])
def test_shared_prefix_attention_equals_attention_over_the_concatenated_keys(heads, kv_heads):
    import torch

    from tunewise.backends.prefix_attention import attention

    torch.manual_seed(1)
    B, T, P, d = 3, 5, 7, 8
    q = torch.randn(B, heads, T, d)
    k, v = torch.randn(B, kv_heads, T, d), torch.randn(B, kv_heads, T, d)
    pk, pv = torch.randn(1, kv_heads, P, d), torch.randn(1, kv_heads, P, d)
    allowed = torch.rand(B, 1, T, T) > 0.4
    allowed[0, :, :2] = False  # rows that see none of their own keys: the prefix only
    rows_mask = torch.zeros(B, 1, T, T).masked_fill_(~allowed, torch.finfo(torch.float32).min)
    module = types.SimpleNamespace(layer_idx=1)
    out, _ = attention(module, q, k, v, rows_mask, scaling=0.3,
                       shared_prefix=[None, (pk, pv)])
    full_mask = torch.cat([torch.zeros(B, 1, T, P), rows_mask], -1)
    want = _reference(q, torch.cat([pk.expand(B, -1, -1, -1), k], 2),
                      torch.cat([pv.expand(B, -1, -1, -1), v], 2), full_mask, 0.3)
    assert out.shape == (B, T, heads, d)
    assert torch.allclose(out, want, atol=1e-5)
    # without the prefix it is SDPA itself
    plain, _ = attention(types.SimpleNamespace(layer_idx=0, is_causal=False), q, q, q,
                         None, scaling=0.3)
    assert torch.allclose(plain, _reference(q, q, q, None, 0.3), atol=1e-5)


def test_tiny_model_scores_equal_with_shared_or_copied_prefix(tiny_backend):
    system = {"role": "system", "content": "Pick one. " * 12}
    prompts = [[system, {"role": "user", "content": x}]
               for x in ("a rash", "a cough that will not stop", "blurred vision", "tinnitus")]
    labels = [["skin", "lungs", "eyes and vision"]] * len(prompts)
    shared = tiny_backend.score(prompts, labels)
    assert tiny_backend._prefix_attention() is True
    tiny_backend.share_prefix_attention = False
    copied = tiny_backend.score(prompts, labels)
    assert tiny_backend._prefix_attention() is False
    naive = tiny_backend.score_naive(prompts, labels)
    for s, c, n in zip(shared, copied, naive, strict=True):
        assert max(abs(a - b) for a, b in zip(s.logprobs, c.logprobs, strict=True)) < 1e-4
        assert max(abs(a - b) for a, b in zip(s.logprobs, n, strict=True)) < 1e-4

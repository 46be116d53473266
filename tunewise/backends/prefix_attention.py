"""Attention over a key/value prefix shared by every row of a batch, without copying it.

Scoring hands a batch of B rows the cached keys and values of the prompt prefix they all
share. Appending each row's keys to that cache (what transformers' cache does) copies the
prefix B times in every layer, and the score matrix then runs as B small products. Here the
prefix stays one tensor: the queries of all rows and heads of one key/value head are stacked
into one matrix and multiplied with the prefix keys in a single product per head, the rows'
own keys (under the tree mask) in a second product, and the two parts are joined with the
usual running-maximum softmax. The result equals attention over the concatenated keys.

The function is registered with transformers' ``AttentionInterface`` and acts only when a
forward pass is given ``shared_prefix=``; every other call (generation, training) goes to
transformers' own SDPA attention unchanged.
"""

from __future__ import annotations

from typing import Any

NAME = "tunewise_shared_prefix"


def attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
              scaling: float | None = None, dropout: float = 0.0,
              **kwargs: Any) -> tuple[Any, None]:
    """``query`` (B, H, T, d) over the shared prefix's keys (1, Hkv, P, d) and the rows' own
    ``key`` (B, Hkv, T, d) under ``attention_mask`` (B, 1, T, T, additive)."""
    import torch

    prefix = kwargs.pop("shared_prefix", None)
    if prefix is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      dropout=dropout, scaling=scaling, **kwargs)
    prefix_keys, prefix_values = prefix[module.layer_idx]
    B, H, T, d = query.shape
    hkv = key.shape[1]
    g = H // hkv
    scale = scaling if scaling is not None else d ** -0.5
    q = query.reshape(B, hkv, g, T, d)
    stacked = q.permute(1, 0, 2, 3, 4).reshape(hkv, B * g * T, d)  # the only copy: queries
    on_prefix = torch.bmm(stacked, prefix_keys[0].transpose(1, 2)).mul_(scale)  # hkv,BgT,P
    on_rows = torch.matmul(q, key[:, :, None].transpose(-1, -2)).mul_(scale)    # B,hkv,g,T,T
    if attention_mask is not None:
        on_rows.add_(attention_mask[:, :, None, :, -T:])
    top = torch.maximum(on_prefix.amax(-1).view(hkv, B, g, T).permute(1, 0, 2, 3),
                        on_rows.amax(-1))                                       # B,hkv,g,T
    on_prefix.sub_(top.permute(1, 0, 2, 3).reshape(hkv, B * g * T, 1)).exp_()
    on_rows.sub_(top[..., None]).exp_()
    total = on_prefix.sum(-1).view(hkv, B, g, T).permute(1, 0, 2, 3) + on_rows.sum(-1)
    out = torch.bmm(on_prefix, prefix_values[0]).view(hkv, B, g, T, d).permute(1, 0, 2, 3, 4)
    out = torch.matmul(on_rows, value[:, :, None]).add_(out).div_(total[..., None])
    return out.reshape(B, H, T, d).transpose(1, 2).contiguous(), None


def enable(model: Any) -> bool:
    """Route ``model``'s attention through :func:`attention` (which hands every call
    without ``shared_prefix=`` to SDPA). False, and the model untouched, where the layout
    differs: another attention implementation, sliding windows, soft-capped logits."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) not in ("sdpa", NAME):
        return False
    if getattr(config, "sliding_window", None) or getattr(config, "attn_logit_softcapping",
                                                           None):
        return False
    if config._attn_implementation == NAME:
        return True
    try:
        from transformers import AttentionInterface

        AttentionInterface.register(NAME, attention)
        model.set_attn_implementation(NAME)
    except Exception:  # noqa: BLE001 - an older transformers: keep the copying path
        return False
    return getattr(model.config, "_attn_implementation", None) == NAME

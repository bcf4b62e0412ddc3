"""The varlen attention for packed rows equals SDPA with the dense block-diagonal causal mask."""

import torch
import torch.nn.functional as F

from vistune.model.attention import cu_seqlens_from_positions, varlen_sdpa_forward


class _Module(torch.nn.Module):
    is_causal = True
    num_key_value_groups = 2


def test_varlen_equals_dense_block_mask():
    torch.manual_seed(0)
    lens = [5, 1, 9, 3]
    pos = torch.cat([torch.arange(n) for n in lens])[None]
    cu = cu_seqlens_from_positions(pos)
    assert cu.tolist() == [0, 5, 6, 15, 18]
    L, H, Hkv, D = sum(lens), 4, 2, 8
    q, k, v = torch.randn(1, H, L, D), torch.randn(1, Hkv, L, D), torch.randn(1, Hkv, L, D)
    out, _ = varlen_sdpa_forward(_Module(), q, k, v, None, scaling=D**-0.5, cu_seq_lens_q=cu)
    seg = torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens))
    mask = (seg[:, None] == seg[None, :]) & torch.ones(L, L, dtype=torch.bool).tril()
    ref = F.scaled_dot_product_attention(
        q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), attn_mask=mask
    )
    assert torch.allclose(out, ref.transpose(1, 2), atol=1e-6)


def test_single_sample_rows_are_not_varlen():
    assert cu_seqlens_from_positions(torch.arange(7)[None]) is None
    assert cu_seqlens_from_positions(torch.stack([torch.arange(4), torch.arange(4)])) is None

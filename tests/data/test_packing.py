"""Packed and padded training agree: same loss sum, same supervised-token count, same gradients."""

import torch

from tests.conftest import noise
from vistune.data.packing import collate_packed, collate_padded, plan_packs


def _items(model, proc):
    texts = [
        ("<image>\nWhat colour is it? It is red.", [noise(40, 64, 1)]),
        ("Tell me a story about seven circles.", []),
        ("<image> and <image>: two views of one scene.", [noise(30, 30, 2), noise(50, 20, 3)]),
        ("<image>\nCount: three.", [noise(90, 31, 4)]),
    ]
    items = []
    for t, ims in texts:
        processed = [proc.preprocess_image(im, single_view=len(ims) > 1) for im in ims]
        ids = proc.tokenizer(t, add_special_tokens=False)["input_ids"]
        labels = [i if k % 3 else -100 for k, i in enumerate(ids)]  # an arbitrary supervised subset
        ids, labels = proc.expand_image_tokens(ids, [p.plan for p in processed], labels)
        items.append(
            {
                "input_ids": ids,
                "labels": labels,
                "pixel_values": torch.cat([p.pixel_values for p in processed]) if processed else None,
                "image_sizes": [p.plan.image_hw for p in processed],
                "image_single_view": [p.plan.single_view for p in processed],
            }
        )
    return items


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    kwargs = {k: v for k, v in batch.items() if k not in ("num_tokens", "num_padding", "seq_lens")}
    out = model(**kwargs, return_logits=False)
    out.loss_sum.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.loss_sum.detach(), int(out.num_loss_tokens), grads


def test_packed_equals_padded(tiny):
    model, proc = tiny
    model.train()
    items = _items(model, proc)
    padded = collate_padded(items, proc.tokenizer.pad_token_id)
    packed = collate_packed(items)
    assert packed["input_ids"].shape[0] == 1 and packed["num_padding"] == 0
    l_pad, n_pad, g_pad = _loss_and_grads(model, padded)
    l_pack, n_pack, g_pack = _loss_and_grads(model, packed)
    assert n_pad == n_pack
    assert torch.allclose(l_pad, l_pack, rtol=1e-5, atol=1e-5)
    assert g_pad.keys() == g_pack.keys()
    for k in g_pad:
        assert torch.allclose(g_pad[k], g_pack[k], rtol=1e-4, atol=1e-6), k


def test_packing_isolates_samples(tiny):
    """Changing sample A must not change the loss of sample B when both share a pack."""
    model, proc = tiny
    items = _items(model, proc)
    other = dict(items[1])
    other["input_ids"] = list(other["input_ids"])
    other["input_ids"][2] = (other["input_ids"][2] + 7) % 900
    other["labels"] = [-100] * len(other["input_ids"])  # sample A unsupervised: only B's loss counts
    second = dict(items[0])  # supervised, and placed AFTER the changed sample (causality alone won't hide it)

    def loss(pack):
        batch = {
            k: v
            for k, v in collate_packed(pack).items()
            if k not in ("num_tokens", "num_padding", "seq_lens")
        }
        with torch.no_grad():
            return model(**batch, return_logits=False).loss_sum

    a = loss([{**items[1], "labels": other["labels"]}, second])
    b = loss([other, second])
    assert torch.allclose(a, b, atol=1e-6)
    # and without isolation (one long sample: positions continue) the loss would differ
    joined = collate_packed([{**items[1], "labels": other["labels"]}, second])
    joined["position_ids"] = torch.arange(joined["input_ids"].shape[1])[None]
    batch = {k: v for k, v in joined.items() if k not in ("num_tokens", "num_padding", "seq_lens")}
    with torch.no_grad():
        c = model(**batch, return_logits=False).loss_sum
    assert not torch.allclose(a, c, atol=1e-4)


def test_plan_packs_respects_budget():
    lengths = [5, 9, 3, 7, 2, 8, 12, 1]
    packs = plan_packs(lengths, 12)
    assert sorted(i for p in packs for i in p) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in p) <= 12 for p in packs)
    assert len(packs) <= 5
    assert plan_packs([20, 3], 10) == [[0], [1]]

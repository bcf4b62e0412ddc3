"""The lean paths equal the plain ones: chunked cross-entropy vs full logits, and one batched encoder call for
all crops of all images vs encoding each image alone."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tests.conftest import noise
from vistune.model.loss import chunked_cross_entropy


def test_chunked_cross_entropy_equals_full_logits_loss_and_grads():
    torch.manual_seed(0)
    hidden = torch.randn(3, 11, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    bias = torch.randn(50, requires_grad=True)
    targets = torch.randint(0, 50, (3, 11))
    targets[0, :4] = -100
    targets[2, 7:] = -100
    # full: materialise every logit
    logits = F.linear(hidden, weight, bias).float()
    full = F.cross_entropy(logits.reshape(-1, 50), targets.reshape(-1), ignore_index=-100, reduction="sum")
    g_full = torch.autograd.grad(full, (hidden, weight, bias))
    for chunk in (4, 7, 4096):  # several chunks under checkpointing, and one chunk
        total, n = chunked_cross_entropy(hidden, weight, targets, bias=bias, chunk_size=chunk)
        assert int(n) == int((targets != -100).sum())
        assert torch.allclose(total, full, atol=1e-5, rtol=1e-6)
        g = torch.autograd.grad(total, (hidden, weight, bias))
        for a, b in zip(g, g_full, strict=True):
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
    # nothing supervised: zero loss that still backpropagates
    total, n = chunked_cross_entropy(hidden, weight, torch.full((3, 11), -100))
    assert int(n) == 0 and float(total) == 0.0 and total.requires_grad


def test_one_encoder_call_for_all_crops_equals_image_by_image(tiny):
    model, proc = tiny
    model.eval()
    images = [noise(40, 64, 1), noise(90, 31, 2), noise(33, 33, 3)]
    processed = [proc.preprocess_image(im) for im in images]
    plans = [p.plan for p in processed]
    assert sum(p.num_views for p in plans) > len(images)  # AnyRes crops, not one view per image
    with torch.no_grad():
        batched = model.encode_images(torch.cat([p.pixel_values for p in processed]), plans)
        alone = [model.encode_images(p.pixel_values, [p.plan])[0] for p in processed]
    for a, b, plan in zip(batched, alone, plans, strict=True):
        assert a.shape == b.shape == (plan.num_tokens, a.shape[-1])
        assert torch.allclose(a, b, atol=1e-5)

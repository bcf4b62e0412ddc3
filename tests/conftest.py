import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def tiny():
    """A fresh tiny model + processor (SigLIP-style 32 px encoder, Qwen2 LLM), seeded."""
    from vistune import load_pretrained

    torch.manual_seed(0)
    return load_pretrained("tiny")


def solid(h, w, color=(120, 30, 200)):
    from PIL import Image

    return Image.new("RGB", (w, h), color)


def noise(h, w, seed=0):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))

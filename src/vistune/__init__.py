"""vistune: build, train, evaluate and ablate LLaVA-NeXT-style large multimodal models.

Public entry points::

    import vistune
    model, processor = vistune.load_pretrained("path/or/preset")

Coordinate convention: every size in vistune is ``(height, width)`` — images, grids (rows, cols),
feature maps. The official LLaVA code uses ``(width, height)``; conversion happens only at the import
boundary (``vistune.model.interop``).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load_pretrained", "build_model"]


def load_pretrained(path, **kwargs):
    """Load a vistune checkpoint, an HF ``llava_onevision`` / ``llava_next`` folder, or a built-in preset.

    Returns ``(model, processor)``. See :func:`vistune.model.lmm.load_pretrained`.
    """
    from vistune.model.lmm import load_pretrained as _load

    return _load(path, **kwargs)


def build_model(config, **kwargs):
    """Build a model (and processor) from a :class:`vistune.config.ModelConfig` or a dict."""
    from vistune.model.lmm import build_model as _build

    return _build(config, **kwargs)

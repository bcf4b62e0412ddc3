"""A pretrained connector for each world model: the world's analogue of a released ``mm_projector``.

LLaVA users rarely train the projector from scratch: Stage-2 starts from a published Stage-1 projector
(``--pretrain_mm_mlp_adapter``). The world ships one per model preset, made the cheap and exact way the
world allows: **distillation through the two backbones' own vocabularies**.

The world encoder was pretrained with linear per-patch heads (ink colour, object colour / shape / position,
character — :mod:`vistune.data.synthetic.pretrain`), and the world LM was pretrained on *text renderings* of
images, where each visual position is the sum of the LM's embeddings of its patch words (``" red" +
" circle" + " top" + " left"``, ``"K"``, ``" "``). So there is a known target for every encoder feature: read
the patch with the encoder's heads (no ground truth — what the encoder *believes* is there), write those words
as the LM's embeddings, sum. :func:`align_connector` fits the connector (``mlp2x_gelu``) to that target with
a mean-squared error on a few hundred train-split images — seconds on a CPU — and sets the image newline to
the LM's ``"\\n"`` embedding, exactly the token the renderings put at row ends.

Measured on ``world-s`` (2-core CPU): 5 s of fitting; the connector's output is nearest to its own target
among the 332 distinct patch targets for 98 % of patches; evaluated straight after, with no LLaVA stage at
all, the model scores about what the full 2-minute demo reached with a randomly initialised connector (see
``docs/demo.md``). The demo's Stage-1 then starts from this connector, as a LLaVA Stage-2 starts from a
released projector.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from vistune.data.synthetic.config import WorldConfig

#: the file inside a connector backbone folder
CONNECTOR_FILE = "connector.safetensors"


@dataclass
class ConnectorSettings:
    """Which backbones a world connector joins and how it is fitted."""

    name: str = "connector-world-s"
    vision: str = "world-vit-32"
    llm: str = "world-lm-s"
    #: train-split images whose views are encoded (every patch of every view is one training vector)
    images: int = 300
    steps: int = 1000
    batch_size: int = 1024
    lr: float = 3e-3
    mix: dict[str, float] = field(
        default_factory=lambda: {"color": 2.0, "count": 2.0, "docvqa": 1.0, "chart": 0.5}
    )


@torch.no_grad()
def _patch_targets(
    model: Any,
    processor: Any,
    heads: Any,
    vocab: Any,
    settings: ConnectorSettings,
    cfg: WorldConfig,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder features of every patch of ``settings.images`` train images and their rendering embeddings."""
    from vistune.data.synthetic.pretrain import HEAD_NAMES, FamilyStream, world_visual

    emb = model.llm.get_input_embeddings().weight.detach().float()
    stream = FamilyStream(settings.mix, seed, cfg, world_visual(), processor.geometry, "align")
    feats, targets = [], []
    table: dict[tuple[int, ...], torch.Tensor] = {}
    for _ in range(settings.images):
        item = next(stream)
        pix = processor.preprocess_image(item.image).pixel_values
        f = model.vision(pix).float()  # (views, tokens, hidden)
        logits, _ = heads(f)
        labels = torch.stack([logits[k].argmax(-1) for k in HEAD_NAMES], -1).reshape(-1, len(HEAD_NAMES))
        for lab in labels.tolist():
            words = vocab.patch(lab)
            if words not in table:
                table[words] = emb[list(words)].sum(0)
            targets.append(table[words])
        feats.append(f.reshape(-1, f.shape[-1]))
    return torch.cat(feats), torch.stack(targets)


def _nearest_target_accuracy(out: torch.Tensor, target: torch.Tensor) -> float:
    """Share of vectors whose output is nearest (L2) to their own target among all distinct targets."""
    uniq, inv = torch.unique(target, dim=0, return_inverse=True)
    return float((torch.cdist(out, uniq).argmin(1) == inv).float().mean())


def align_connector(
    out_dir: str | Path,
    settings: ConnectorSettings | None = None,
    root: str | Path | None = None,
    cfg: WorldConfig | None = None,
    seed: int = 0,
    threads: int | None = 1,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Fit a world connector (see the module docstring); write ``out_dir/connector.safetensors`` + manifest.

    ``root`` is the backbones folder holding ``settings.vision`` and ``settings.llm`` (default: the shipped
    ones). Returns the manifest (settings, seed, fit metrics, wall time).
    """
    from safetensors.torch import load_file, save_file

    from vistune import build_model
    from vistune.data.synthetic.backbones import world_model_config
    from vistune.data.synthetic.pretrain import PatchHeads, RenderVocab, git_commit, source_sha256
    from vistune.fsutil import atomic_dir

    settings = settings or ConnectorSettings()
    cfg = cfg or WorldConfig()
    say = log or (lambda _m: None)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    # the preset's model with a fresh connector (the one being made)
    model_cfg = world_model_config(settings.vision, settings.llm, root)
    model, processor = build_model(model_cfg)
    heads_file = Path(model_cfg["vision"]["path"]) / "heads.safetensors"
    if not heads_file.is_file():
        raise FileNotFoundError(
            f"{heads_file}: the encoder's pretraining heads are needed to align a connector"
        )
    heads = PatchHeads(model.vision.hidden_size)
    heads.load_state_dict({k: v.float() for k, v in load_file(str(heads_file)).items()})
    vocab = RenderVocab(processor.tokenizer)
    x, y = _patch_targets(model, processor, heads, vocab, settings, cfg, seed)
    say(f"{settings.name}: {x.shape[0]} patch vectors from {settings.images} images")
    conn = model.connector.float().train()
    opt = torch.optim.Adam(conn.parameters(), lr=settings.lr)
    g = torch.Generator().manual_seed(seed)
    history = []
    for step in range(settings.steps):
        idx = torch.randint(0, x.shape[0], (settings.batch_size,), generator=g)
        loss = torch.nn.functional.mse_loss(conn(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == settings.steps - 1:
            history.append({"step": step, "loss": round(loss.item(), 7)})
    conn.eval()
    with torch.no_grad():
        sub = torch.arange(0, x.shape[0], max(1, x.shape[0] // 8000))
        out = conn(x[sub])
        metrics = {
            "mse": round(float(torch.nn.functional.mse_loss(out, y[sub])), 7),
            "target_rms": round(float(y.pow(2).mean().sqrt()), 5),
            "nearest_target_accuracy": round(_nearest_target_accuracy(out, y[sub]), 4),
            "patch_vectors": int(x.shape[0]),
        }
        newline = model.llm.get_input_embeddings().weight[vocab.newline].detach().float().clone()
    # stored in fp16 like the other world backbones (restored to the model's dtype on load)
    state = {f"connector.{k}": v.detach().half().contiguous() for k, v in conn.state_dict().items()}
    state["image_newline"] = newline.half().contiguous()
    wall = round(time.perf_counter() - t0, 1)
    manifest = {
        "kind": "connector",
        "name": settings.name,
        "seed": seed,
        "settings": asdict(settings),
        "world": cfg.model_dump(mode="json"),
        "vision": settings.vision,
        "llm": settings.llm,
        "metrics": metrics,
        "history": history,
        "final_loss": history[-1]["loss"] if history else None,
        "parameters": sum(v.numel() for v in state.values()),
        "threads": torch.get_num_threads(),
        "wall_time_s": wall,
        "commit": git_commit(),
        "source_sha256": source_sha256(),
    }
    with atomic_dir(Path(out_dir)) as tmp:
        save_file(state, str(tmp / CONNECTOR_FILE), metadata={"format": "vistune-connector"})
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    say(
        f"{settings.name}: mse {metrics['mse']}, nearest-target {metrics['nearest_target_accuracy']}, {wall}s"
    )
    return manifest

"""Backbone pretraining: patch facts, text renderings, a few-second pretraining smoke run, and loading the
results (and the shipped backbones) through the ordinary path-loading code."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from vistune.data.synthetic import WorldConfig
from vistune.data.synthetic import pretrain as P
from vistune.data.synthetic.backbones import (
    BACKBONES,
    SHIPPED_DIR,
    WORLD_MODELS,
    BackboneNotFound,
    backbone_path,
    world_model_config,
    world_model_presets,
)
from vistune.model.anyres import EncoderGeometry
from vistune.model.tokenizer import load_tiny_tokenizer

CFG = WorldConfig()
GEO = EncoderGeometry(32, 8)
VISUAL = P.world_visual()


@pytest.fixture(scope="module")
def vocab():
    return P.RenderVocab(load_tiny_tokenizer())


def _facts_in(labels: np.ndarray, head: int) -> list[int]:
    return [int(x) for x in labels[..., head].ravel() if x]


def test_document_characters_sit_one_per_grid_patch():
    item = P.make_item("docvqa", 0, 3, CFG, VISUAL, GEO)
    assert item.plan is not None and item.plan.grid == (3, 3)
    # base view: a squashed document is a blur, no characters
    assert not _facts_in(item.labels[0], 3)
    grid = P.token_grid(item.plan, item.labels, GEO)
    rows, row = [], []
    for lab in grid[16:]:
        if lab is None:
            rows.append(row)
            row = []
        else:
            row.append(P.CHAR_CLASSES[int(lab[3])] if lab[3] else " ")
    assert len(rows) == 12 and all(len(r) == 12 for r in rows)
    doc = item.content
    for line in doc.lines:
        text = "".join(rows[line.row][line.col : line.col + len(line.text)])
        assert text == line.text
    printed = sum(len(line.text.replace(" ", "")) for line in doc.lines)
    assert sum(ch != " " for r in rows for ch in r) == printed


def test_scene_objects_own_one_base_patch_each():
    for i in range(30):
        item = P.make_item("color", 0, i, CFG, VISUAL, GEO)
        base = item.labels[0]
        got = sorted(
            (P.COLORS[int(c) - 1], P.SHAPE_CLASSES[int(s)], P.POSITION_CLASSES[int(p)])
            for c, s, p in zip(base[..., 1].ravel(), base[..., 2].ravel(), base[..., 4].ravel(), strict=True)
            if c
        )
        # the base view shows the whole image: an object's position in the view is its layout position
        want = sorted((o.color, o.shape, o.position) for o in item.content.objects)
        assert got == want, i
        assert item.counts[0] == len(want)
        # a crop only names objects it shows whole
        for win, lab in zip(P.view_windows(item.plan, GEO)[1:], item.labels[1:], strict=True):
            whole = [
                o
                for o in item.content.objects
                if o.cy - o.size / 2 >= win.top - 0.5
                and o.cy + o.size / 2 <= win.bottom + 0.5
                and o.cx - o.size / 2 >= win.left - 0.5
                and o.cx + o.size / 2 <= win.right + 0.5
            ]
            assert len(_facts_in(lab, 2)) == len(whole)


def test_chart_labels_and_ink(vocab):
    item = P.make_item("chart", 0, 1, CFG, VISUAL, GEO)
    digits = "".join(str(b.value) for b in item.content.bars)
    chars = sorted(P.CHAR_CLASSES[c] for lab in item.labels[1:] for c in _facts_in(lab, 3))
    # glyphs cut by a crop border may be lost, but nothing is invented
    assert set(chars) <= set(digits) and len(chars) >= len(digits) - 2
    inks = {P.INK_CLASSES[c] for lab in item.labels for c in _facts_in(lab, 0)}
    assert {b.color for b in item.content.bars if b.value >= 8} <= inks


@pytest.mark.parametrize("family", ["color", "docvqa", "chart", "count"])
def test_rendering_follows_the_visual_token_layout(family, vocab):
    item = P.make_item(family, 0, 0, CFG, VISUAL, GEO)
    toks = P.render_tokens(item, vocab, GEO)
    assert len(toks) == item.plan.num_tokens
    rows, cols = item.plan.final_hw
    # base view first (16 positions), then `rows` rows of `cols` patches each closed by a newline
    newlines = [i for i, t in enumerate(toks) if t == (vocab.newline,)]
    assert newlines == [16 + (cols + 1) * (r + 1) - 1 for r in range(rows)]


def test_rendering_refuses_pooled_or_capped_layouts():
    item = P.make_item("docvqa", 0, 0, CFG, P.world_visual(max_tokens="4 tiles"), GEO)
    with pytest.raises(ValueError, match="uncapped"):
        P.token_grid(item.plan, item.labels, GEO)


def test_lm_example_masks_everything_but_answers(vocab):
    tok = load_tiny_tokenizer()
    item = P.make_item("instruct", 0, 5, P._lm_cfg(CFG, P.LMSettings()), VISUAL, GEO)
    ids, labels = P.lm_example(item, vocab, GEO, tok, 0.0, random.Random(0))
    assert len(ids) == len(labels)
    supervised = tok.decode([t for t, lab in zip(ids, labels, strict=True) if lab != -100 for t in t])
    for qa in item.turns:
        assert qa.answer in supervised
    n_vis = item.plan.num_tokens if item.plan else 0
    assert sum(1 for t in ids if len(t) >= 2) <= n_vis
    alt = P.make_item("alt", 0, 0, CFG, VISUAL, GEO)
    ids, labels = P.lm_example(alt, vocab, GEO, tok, 0.0, random.Random(0))
    # plain template: image first, then the caption; nothing else
    assert len(ids) == alt.plan.num_tokens + len(tok(alt.turns[0].answer + "\n")["input_ids"])


def test_encoder_and_lm_pretraining_smoke(tmp_path):
    """A few steps of each objective lower its loss; the folders load through the path-loading code."""
    from vistune.data.processor import VistuneProcessor
    from vistune.model.lmm import build_model

    enc = P.EncoderSettings(
        name="t-vit",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        steps=12,
        views_per_step=48,
        lr=3e-3,
        warmup=2,
        eval_items=6,
    )
    m = P.pretrain_encoder(tmp_path / "world-vit-32", enc, seed=1, progress=False, threads=1)
    first = np.mean([h["loss"] for h in m["history"][:3]])
    assert m["final_loss"] < first
    assert {"seed", "settings", "metrics", "commit", "wall_time_s"} <= set(m)
    assert 0 <= m["metrics"]["ink_acc"] <= 1
    lm = P.LMSettings(
        name="t-lm",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        steps=12,
        batch_size=6,
        lr=3e-3,
        warmup=2,
        eval_items=2,
    )
    m2 = P.pretrain_lm(tmp_path / "world-lm-s", lm, seed=1, progress=False, threads=1)
    assert m2["final_loss"] < m2["history"][0]["loss"]
    assert set(m2["metrics"]["perfect_rendering_scores"]["32/8"]) >= {"synth_color", "synth_ocr"}
    saved = json.loads((tmp_path / "world-lm-s" / "manifest.json").read_text())
    assert saved["seed"] == 1 and saved["kind"] == "language_model"

    cfg = world_model_config("world-vit-32", "world-lm-s", root=tmp_path)
    model, processor = build_model(cfg)
    assert isinstance(processor, VistuneProcessor)
    assert model.vision.geometry == GEO
    assert model.llm.dtype == torch.float32  # stored fp16, restored fp32
    item = P.make_item("color", 0, 0, CFG, VISUAL, GEO)
    batch = processor(text="<image>\nWhat color is the circle?", images=[item.image])
    out = model(**batch)
    assert out.logits.shape[1] == batch["input_ids"].shape[1]
    # the LM's tokenizer is the tiny one, saved beside the weights
    assert (tmp_path / "world-lm-s" / "tokenizer.json").is_file()

    # a connector aligned to these two backbones: it fits its targets, and the preset picks it up
    from vistune.data.synthetic.align import ConnectorSettings, align_connector

    st = ConnectorSettings(images=6, steps=60, batch_size=64)
    man = align_connector(tmp_path / "connector-world-s", st, root=tmp_path, seed=1, threads=1)
    assert man["kind"] == "connector" and man["history"][-1]["loss"] < man["history"][0]["loss"]
    assert 0 <= man["metrics"]["nearest_target_accuracy"] <= 1
    cfg = world_model_config("world-vit-32", "world-lm-s", root=tmp_path, connector="connector-world-s")
    assert cfg["connector"]["path"].endswith("connector.safetensors")
    aligned, _ = build_model(cfg)
    assert not torch.equal(aligned.connector.linear_1.weight, model.connector.linear_1.weight)
    newline_id = processor.tokenizer("\n", add_special_tokens=False)["input_ids"][0]
    assert torch.allclose(aligned.image_newline, aligned.llm.get_input_embeddings().weight[newline_id])
    assert (
        world_model_config("world-vit-32", "world-lm-s", root=tmp_path, connector="connector-world-m")[
            "connector"
        ].get("path")
        is None
    )  # no such connector in this folder: a fresh one


def test_pretraining_is_deterministic(tmp_path):
    enc = P.EncoderSettings(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        steps=3,
        views_per_step=24,
        warmup=1,
        eval_items=4,
    )
    a = P.pretrain_encoder(tmp_path / "a", enc, seed=3, progress=False, threads=1)
    b = P.pretrain_encoder(tmp_path / "b", enc, seed=3, progress=False, threads=1)
    assert a["history"] == b["history"] and a["metrics"] == b["metrics"]


def test_missing_backbones_say_how_to_make_them(tmp_path):
    with pytest.raises(BackboneNotFound, match="vistune world pretrain"):
        backbone_path("world-lm-s", root=tmp_path)
    with pytest.raises(KeyError):
        backbone_path("world-lm-xl", root=tmp_path)
    assert world_model_presets(root=tmp_path) == {}


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_shipped_backbones_load_and_carry_a_manifest(name):
    path = backbone_path(name, root=SHIPPED_DIR)
    man = json.loads((path / "manifest.json").read_text())
    assert man["name"] == name and man["seed"] == 0 and man["commit"] and man["source_sha256"]
    assert man["wall_time_s"] > 0 and man["metrics"]
    size = sum(f.stat().st_size for f in path.iterdir())
    assert size < 8e6


@pytest.mark.parametrize("preset", sorted(WORLD_MODELS))
def test_world_model_presets_build(preset):
    from vistune.model.lmm import build_model

    cfg = world_model_presets(root=SHIPPED_DIR)[preset]
    model, processor = build_model(cfg)
    item = P.make_item("docvqa", 0, 0, CFG, VISUAL, EncoderGeometry(model.vision.geometry.image_size, 8))
    batch = processor(text="<image>\nWhat is the ID?", images=[item.image])
    assert model(**batch).logits.isfinite().all()


@pytest.mark.slow
def test_shipped_encoder_reproduces_from_its_manifest(tmp_path):
    """`vistune world pretrain` reproduces the shipped encoder: its first logged steps, bit for bit."""
    import shutil

    copy = tmp_path / "world-vit-32"
    shutil.copytree(backbone_path("world-vit-32", root=SHIPPED_DIR), copy)
    res = P.verify_backbone(copy)
    assert res["compared"] >= 2 and res["match"], res


def test_shipped_connector_refits_bit_for_bit(tmp_path):
    """`vistune world pretrain` reproduces the shipped connector from its manifest (a few seconds)."""
    import shutil

    for name in ("world-vit-32", "world-lm-s", "connector-world-s"):
        shutil.copytree(backbone_path(name, root=SHIPPED_DIR), tmp_path / name)
    res = P.verify_backbone(tmp_path / "connector-world-s")
    assert res["compared"] >= 10 and res["match"] and res["max_abs_diff"] == 0.0, res


def test_answer_weighted_loss_weighs_every_answer_equally():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 5)
    labels = torch.tensor([[-100, 1, 2, -100, 3, -100], [-100, -100, 4, 4, 4, -100]])
    per = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, 5), labels[:, 1:].reshape(-1), ignore_index=-100, reduction="none"
    ).view(2, 5)
    # three answers: [1, 2] and [3] in row 0, [4, 4, 4] in row 1
    want = ((per[0, 0] + per[0, 1]) / 2 + per[0, 3] + per[1, 1:4].mean()) / 3
    assert torch.allclose(P.answer_weighted_loss(logits, labels), want)
    assert P.answer_weighted_loss(logits, torch.full((2, 6), -100)) == 0


def test_world_pretrain_command(tmp_path):
    """`vistune world pretrain` (registered on the world command group) writes backbones and an index."""
    import typer
    from typer.testing import CliRunner

    from vistune.data.synthetic.cli import register

    app = typer.Typer()
    register(app)

    @app.command("noop")
    def _noop() -> None:  # a second command keeps typer from collapsing the group
        pass

    out = tmp_path / "bb"
    res = CliRunner().invoke(
        app,
        [
            "world",
            "pretrain",
            "--output",
            str(out),
            "--only",
            "world-vit-32",
            "--scale",
            "0.002",
            "--jobs",
            "1",
        ],
    )
    assert res.exit_code == 0, res.output
    index = json.loads((out / "manifest.json").read_text())
    assert list(index["backbones"]) == ["world-vit-32"]
    assert (out / "world-vit-32" / "model.safetensors").is_file()


@pytest.mark.parametrize("family", ["qa-docvqa", "qa-color", "ocr", "qa-chart"])
def test_text_layout_families_ask_the_same_questions_over_text(family, vocab):
    """``txt-<family>`` = the same content and questions as ``<family>``, the image replaced by its facts as text."""
    tok = load_tiny_tokenizer()
    img = P.make_item(family, 0, 5, CFG, VISUAL, GEO)
    txt = P.make_item(P.TEXT_PREFIX + family, 0, 5, CFG, VISUAL, GEO)
    assert txt.image is None and txt.plan is None and img.image is not None
    assert txt.content == img.content and [t.question for t in txt.turns] == [t.question for t in img.turns]
    _, messages = P.conversation(txt)
    layout = P.text_layout(txt.content)
    assert messages[0]["content"].startswith(layout + "\n") and "<image>" not in messages[0]["content"]
    ids, labels = P.lm_example(txt, vocab, GEO, tok, 0.0, random.Random(0))
    assert all(len(t) == 1 for t in ids) and any(x != -100 for x in labels)
    if family in ("qa-docvqa", "ocr"):  # the answer is in the context: a copy
        assert txt.turns[0].answer in layout.replace("\n", " ")
    if family == "qa-color":  # scene words carry the same tokens as in a rendering
        obj = txt.content.objects[0]
        assert (
            vocab.color[list(P.COLORS).index(obj.color)] in tok(layout, add_special_tokens=False)["input_ids"]
        )


def test_copy_curriculum_draws_the_first_steps_from_the_copy_mixture(tmp_path):
    """``copy_steps`` > 0: the first steps train on text-only copy examples (far shorter than renderings)."""
    base = P.LMSettings(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
        steps=4, batch_size=2, length_groups=1, eval_every=0, mix={"qa-docvqa": 1.0}, copy_steps=0,
    )  # fmt: skip
    plain = P.pretrain_lm(tmp_path / "a", base, progress=False, threads=1, stop_after=2)["history"]
    import dataclasses

    cur = dataclasses.replace(base, copy_steps=2, copy_mix={"txt-ocr": 1.0})
    copied = P.pretrain_lm(tmp_path / "b", cur, progress=False, threads=1, stop_after=2)["history"]
    assert all(c["tokens"] * 2 < p["tokens"] for c, p in zip(copied, plain, strict=True))

"""Parity with transformers' LLaVA-OneVision / LLaVA-NeXT: import, export, token counts, processors, logits.

Every test builds tiny random transformers models (real token geometry, tiny widths), saves them the way a
Hugging Face folder looks, and compares vistune against transformers itself. torchvision is not installed, so
the PIL-backend image processors are used on both sides; transformers' OneVision processor insists on a video
processor (torchvision), so the tests use a subclass that accepts ``video_processor=None`` (images only).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vistune import load_pretrained
from vistune.config import ConfigError, VisualConfig
from vistune.model.anyres import EncoderGeometry, plan_image
from vistune.model.interop.hf import (
    InteropError,
    export_hf,
    grids_to_pinpoints,
    hf_chat_template,
    hf_model_config,
    parse_anyres_max,
    pinpoints_to_grids,
)
from vistune.model.tokenizer import load_tiny_tokenizer

transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    AutoImageProcessor,
    AutoTokenizer,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessorPil,
    LlavaOnevisionProcessor,
)

OV_S, OV_P = 64, 8  # SigLIP views of 64 px, 8 px patches -> 8x8 tokens per view
NX_S, NX_P = 48, 8  # CLIP views of 48 px, 8 px patches -> 6x6 tokens (+ CLS, dropped)
QWEN_PROMPT = "<|im_start|>user\n<image>\nWhat is shown in the image?<|im_end|>\n<|im_start|>assistant\n"
VICUNA_PROMPT = "USER: <image>\nWhat is shown in the image? ASSISTANT:"

#: (height, width): 1x1-grid sizes, tiny images, 1:8 and 8:1, around the anyres_max cap threshold (OneVision
#: tiny geometry: grid area 16x18=288 stays, 16x20=320 > 1.21*256 is resized), odd and exact-tile sizes
OV_SIZES = [
    (40, 50),
    (64, 64),
    (1, 1),
    (63, 65),
    (30, 240),
    (240, 30),
    (37, 91),
    (129, 65),
    (110, 130),
    (115, 140),
    (128, 192),
    (255, 256),
    (97, 333),
    (20, 300),
]
NX_SIZES = [
    (30, 40),
    (48, 48),
    (3, 2),
    (47, 49),
    (24, 192),
    (192, 24),
    (37, 91),
    (91, 37),
    (95, 97),
    (101, 47),
    (143, 49),
    (333, 97),
]


def noise(h: int, w: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed + 7919 * h + w)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


class ImageOnlyOVProcessor(LlavaOnevisionProcessor):
    """transformers' OneVision processor without its (torchvision-only) video processor."""

    def check_argument_for_proper_class(self, argument_name, argument):
        if argument_name == "video_processor" and argument is None:
            return None
        return super().check_argument_for_proper_class(argument_name, argument)


def tiny_tokenizer():
    tok = load_tiny_tokenizer()
    tok.add_tokens(["<image>", "<video>"], special_tokens=True)  # already there: a no-op
    tok.padding_side = "left"
    return tok


def auto_image_processor(folder: Path):
    """``AutoImageProcessor`` on the exported folder; transformers < 5.2x needs torchvision for the Auto class
    itself, so without it load the class the folder names (what the Auto class would pick)."""
    try:
        return AutoImageProcessor.from_pretrained(str(folder), backend="pil")
    except ImportError:
        kind = json.loads((folder / "preprocessor_config.json").read_text())["image_processor_type"]
        return getattr(transformers, kind).from_pretrained(str(folder))


def hf_ov_processor(folder: Path) -> LlavaOnevisionProcessor:
    attrs = json.loads((folder / "processor_config.json").read_text())
    tok = AutoTokenizer.from_pretrained(str(folder))
    tok.padding_side = "left"
    return ImageOnlyOVProcessor(
        image_processor=auto_image_processor(folder),
        tokenizer=tok,
        video_processor=None,
        num_image_tokens=attrs["num_image_tokens"],
        vision_feature_select_strategy=attrs["vision_feature_select_strategy"],
        vision_aspect_ratio=attrs["vision_aspect_ratio"],
    )


def hf_next_processor(folder: Path) -> LlavaNextProcessor:
    try:
        proc = transformers.AutoProcessor.from_pretrained(str(folder), backend="pil")
    except ImportError:  # see auto_image_processor
        attrs = json.loads((folder / "processor_config.json").read_text())
        attrs = {k: v for k, v in attrs.items() if k in ("patch_size", "vision_feature_select_strategy")}
        proc = LlavaNextProcessor(
            image_processor=auto_image_processor(folder),
            tokenizer=AutoTokenizer.from_pretrained(str(folder)),
            **attrs,
        )
    proc.tokenizer.padding_side = "left"
    return proc


def make_ov_folder(root: Path) -> Path:
    tok = tiny_tokenizer()
    S = OV_S
    pins = grids_to_pinpoints([(r, c) for r in range(1, 5) for c in range(1, 5)], S)
    cfg = LlavaOnevisionConfig(
        vision_config={
            "model_type": "siglip_vision_model",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": S,
            "patch_size": OV_P,
            "vision_use_head": False,
        },
        text_config={
            "model_type": "qwen2",
            "hidden_size": 48,
            "intermediate_size": 96,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "vocab_size": 1024,
            "max_position_embeddings": 2048,
            "tie_word_embeddings": True,
            "initializer_range": 0.2,
        },
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=pins,
        vision_aspect_ratio="anyres_max_4",
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlavaOnevisionForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # a newline vector and projector that matter
        model.model.image_newline.normal_(0, 1.0)
        for p in model.model.multi_modal_projector.parameters():
            p.mul_(4.0)
    folder = root / "ov"
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    LlavaOnevisionImageProcessorPil(
        size={"height": S, "width": S}, image_grid_pinpoints=pins, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(str(folder))
    attrs = {
        "processor_class": "LlavaOnevisionProcessor",
        "image_token": "<image>",
        "video_token": "<video>",
        "num_image_tokens": (S // OV_P) ** 2,
        "vision_feature_select_strategy": "full",
        "vision_aspect_ratio": "anyres_max_4",
    }
    (folder / "processor_config.json").write_text(json.dumps(attrs))
    return folder


def make_next_folder(root: Path, vocab_size: int = 1024, name: str = "next") -> Path:
    tok = tiny_tokenizer()
    S = NX_S
    pins = [[S, 2 * S], [2 * S, S], [2 * S, 2 * S], [3 * S, S], [S, 3 * S]]
    cfg = LlavaNextConfig(
        vision_config={
            "model_type": "clip_vision_model",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "image_size": S,
            "patch_size": NX_P,
            "projection_dim": 32,
        },
        text_config={
            "model_type": "llama",
            "hidden_size": 48,
            "intermediate_size": 96,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "vocab_size": vocab_size,
            "max_position_embeddings": 2048,
            "tie_word_embeddings": False,
            "initializer_range": 0.2,
        },
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pins,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        image_seq_length=(S // NX_P) ** 2,
    )
    torch.manual_seed(1)
    model = LlavaNextForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        model.model.image_newline.normal_(0, 1.0)
        for p in model.model.multi_modal_projector.parameters():
            p.mul_(4.0)
    folder = root / name
    model.save_pretrained(str(folder))
    ip = LlavaNextImageProcessorPil(
        size={"shortest_edge": S}, crop_size={"height": S, "width": S}, image_grid_pinpoints=pins
    )
    LlavaNextProcessor(
        image_processor=ip,
        tokenizer=tok,
        patch_size=NX_P,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    ).save_pretrained(str(folder))  # transformers 5 layout: image processor nested in processor_config.json
    return folder


@pytest.fixture(scope="module")
def ov(tmp_path_factory):
    folder = make_ov_folder(tmp_path_factory.mktemp("hf"))
    model, proc = load_pretrained(folder)
    hf = LlavaOnevisionForConditionalGeneration.from_pretrained(str(folder)).eval()
    return folder, model, proc, hf, hf_ov_processor(folder)


@pytest.fixture(scope="module")
def nx(tmp_path_factory):
    folder = make_next_folder(tmp_path_factory.mktemp("hf"))
    model, proc = load_pretrained(folder)
    hf = LlavaNextForConditionalGeneration.from_pretrained(str(folder)).eval()
    return folder, model, proc, hf, hf_next_processor(folder)


def _hf_pixels(hb, i: int, n: int) -> torch.Tensor:
    pv = hb["pixel_values"]
    return pv[i, :n] if pv.dim() == 5 else pv[:n]


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(-1) - 1).clamp_min(0)


def _compare_single(pair, size, prompt):
    _, model, proc, hf, hproc = pair
    img = noise(*size)
    vb = proc(text=[prompt], images=[img])
    hb = hproc(images=[img], text=[prompt], return_tensors="pt")
    assert vb["input_ids"].tolist() == hb["input_ids"].tolist()
    n_views = vb["pixel_values"].shape[0]
    torch.testing.assert_close(vb["pixel_values"], _hf_pixels(hb, 0, n_views), atol=2e-6, rtol=0)
    assert vb["image_sizes"].tolist() == hb["image_sizes"].tolist()
    with torch.no_grad():
        ours = model(**vb).logits
        theirs = hf(**hb).logits
    diff = (ours - theirs).abs().max().item()
    assert diff < 1e-4, f"{size}: max |logit diff| = {diff:.2e}"
    return diff


# --------------------------------------------------------------------------------------------------------------
# config mapping
# --------------------------------------------------------------------------------------------------------------
def test_hf_model_config_onevision(ov):
    folder = ov[0]
    cfg = hf_model_config(folder)
    v = cfg.visual
    assert v.grids == tuple((r, c) for r in range(1, 5) for c in range(1, 5))
    assert (v.cap, v.max_tokens, v.cap_slack, v.base_view, v.unpad, v.newline) == (
        "total",
        "4 tiles",
        1.1,
        "squash",
        True,
        True,
    )
    assert cfg.vision.type == "siglip" and cfg.vision.feature_layer == -1 and not cfg.vision.keep_cls
    assert cfg.vision.image_mean == (0.5, 0.5, 0.5)
    assert cfg.connector.type == "mlp2x_gelu" and cfg.connector.bias
    assert cfg.llm.hf_config["model_type"] == "qwen2" and cfg.llm.hf_config["tie_word_embeddings"] is True
    assert cfg.chat_template == "qwen_1_5" and cfg.image_token == "<image>"


def test_hf_model_config_next_and_geometry(nx):
    from vistune.model.lmm import model_geometry

    folder, model, *_ = nx
    cfg = hf_model_config(folder)
    assert cfg.visual.cap == "none" and cfg.visual.grids == ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))
    assert cfg.vision.type == "clip" and cfg.vision.feature_layer == -2 and not cfg.vision.keep_cls
    assert cfg.connector.type == "mlp2x_gelu"
    geo, visual = model_geometry(folder)
    assert geo == EncoderGeometry(NX_S, NX_P, 0) and visual == cfg.visual
    # vision_feature_layer=-2 of a 3-layer tower: the last layer is never run, so it is not kept
    assert model.vision.num_layers == 2 and model.vision.num_layers_full == 3


def test_pinpoint_and_aspect_helpers():
    assert pinpoints_to_grids([[384, 768], [1152, 384]], 384) == ((1, 2), (3, 1))
    assert grids_to_pinpoints([(1, 2), (3, 1)], 384) == [[384, 768], [1152, 384]]
    with pytest.raises(InteropError, match=r"\[384, 700\] is not a whole number of 384-pixel tiles"):
        pinpoints_to_grids([[384, 700]], 384)
    assert parse_anyres_max("anyres_max_9") == 9
    for bad in ("anyres", "anyres_max_0", "square"):
        with pytest.raises(InteropError, match="vision_aspect_ratio"):
            parse_anyres_max(bad)


@pytest.mark.parametrize(
    "edit, match",
    [
        ({"vision_feature_layer": [-2, -5]}, "vision_feature_layer"),
        ({"vision_feature_select_strategy": "default"}, "would drop a real image patch"),
        ({"projector_hidden_act": "gelu_pytorch_tanh"}, "projector_hidden_act"),
        ({"image_grid_pinpoints": [[64, 100]]}, "image_grid_pinpoints"),
        ({"vision_aspect_ratio": "anyres"}, "vision_aspect_ratio"),
    ],
)
def test_import_refuses_what_vistune_cannot_express(ov, tmp_path, edit, match):
    folder = ov[0]
    raw = json.loads((folder / "config.json").read_text())
    raw.update(edit)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(InteropError, match=match):
        hf_model_config(tmp_path)


def test_import_refuses_inconsistent_processor_files(ov, tmp_path):
    folder = ov[0]
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    attrs = json.loads((folder / "processor_config.json").read_text())
    (tmp_path / "processor_config.json").write_text(
        json.dumps({**attrs, "vision_aspect_ratio": "anyres_max_9"})
    )
    with pytest.raises(InteropError, match="vision_aspect_ratio"):
        hf_model_config(tmp_path)
    ip = json.loads((folder / "preprocessor_config.json").read_text())
    (tmp_path / "processor_config.json").write_text(json.dumps(attrs))
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({**ip, "size": {"height": 32, "width": 32}})
    )
    with pytest.raises(InteropError, match="size"):
        hf_model_config(tmp_path)


# --------------------------------------------------------------------------------------------------------------
# logits / ids / pixels parity
# --------------------------------------------------------------------------------------------------------------
def test_size_lists_cover_the_interesting_cases(ov, nx):
    ov_model, nx_model = ov[1], nx[1]
    plans = [ov_model.plan([s])[0] for s in OV_SIZES]
    assert any(p.grid == (1, 1) for p in plans)
    assert any(p.final_hw != p.unpadded_hw for p in plans), "no size above the anyres_max cap"
    assert any(p.final_hw == p.unpadded_hw and p.grid[0] * p.grid[1] > 4 for p in plans), "no size just below"
    grid_area = {s: p.unpadded_hw[0] * p.unpadded_hw[1] for s, p in zip(OV_SIZES, plans, strict=True)}
    assert grid_area[(110, 130)] <= 1.21 * 256 < grid_area[(115, 140)]
    assert {p.grid for p in (nx_model.plan([s])[0] for s in NX_SIZES)} == {
        (1, 2),
        (2, 1),
        (2, 2),
        (3, 1),
        (1, 3),
    }


@pytest.mark.parametrize("size", OV_SIZES, ids=[f"{h}x{w}" for h, w in OV_SIZES])
def test_onevision_single_image_parity(ov, size):
    _compare_single(ov, size, QWEN_PROMPT)


@pytest.mark.parametrize("size", NX_SIZES, ids=[f"{h}x{w}" for h, w in NX_SIZES])
def test_next_single_image_parity(nx, size):
    _compare_single(nx, size, VICUNA_PROMPT)


def _batched(pair, sizes, prompts):
    _, model, proc, hf, hproc = pair
    imgs = [noise(*s, seed=3) for s in sizes]
    vb = proc(text=prompts, images=imgs, padding_side="left")
    hb = hproc(images=imgs, text=prompts, padding=True, return_tensors="pt")
    assert vb["input_ids"].tolist() == hb["input_ids"].tolist()
    assert vb["attention_mask"].tolist() == hb["attention_mask"].tolist()
    offset = 0
    for i, s in enumerate(sizes):
        n = model.plan([s])[0].num_views
        torch.testing.assert_close(
            vb["pixel_values"][offset : offset + n], _hf_pixels(hb, i, n), atol=2e-6, rtol=0
        )
        offset += n
    mask = vb["attention_mask"].bool()
    with torch.no_grad():
        ours = model(**vb).logits
        theirs = hf(**hb, position_ids=_positions(hb["attention_mask"])).logits
        assert (ours - theirs)[mask].abs().max().item() < 1e-4
        # left padding changes nothing: each row equals the sample run alone
        for i in range(len(sizes)):
            single = proc(text=[prompts[i]], images=[imgs[i]])
            alone = model(**single).logits[0]
            assert (ours[i][mask[i]] - alone).abs().max().item() < 1e-4
        gen_ours = model.generate(**vb, max_new_tokens=20)
        gen_theirs = hf.generate(**hb, max_new_tokens=20, do_sample=False)[:, hb["input_ids"].shape[1] :]
    eos = model.tokenizer.eos_token_id
    for a, b in zip(gen_ours.tolist(), gen_theirs.tolist(), strict=True):
        a = a[: a.index(eos) + 1] if eos in a else a
        b = b[: b.index(eos) + 1] if eos in b else b
        assert a == b
        assert len(a) >= 5
    return gen_ours


def test_onevision_batched_parity_and_greedy_generation(ov):
    prompts = [QWEN_PROMPT, "<image>\nDescribe it.", "<|im_start|>user\nColor? <image><|im_end|>\n"]
    _batched(ov, [(128, 192), (40, 50), (30, 240)], prompts)


def test_next_batched_parity_and_greedy_generation(nx):
    prompts = [VICUNA_PROMPT, "<image>\nDescribe it.", "USER: What color? <image> ASSISTANT:"]
    _batched(nx, [(95, 97), (30, 40), (192, 24)], prompts)


def test_multi_image_prompt_onevision_parity(ov):
    """A prompt with several images: one padded square view + newline per image on both sides."""
    _, model, proc, hf, hproc = ov
    imgs = [noise(50, 90), noise(120, 40)]
    text = "<|im_start|>user\n<image><image>\nCompare.<|im_end|>\n"
    vb = proc(text=[text], images=[imgs])
    hb = hproc(images=[imgs], text=[text], return_tensors="pt")
    assert vb["input_ids"].tolist() == hb["input_ids"].tolist()
    torch.testing.assert_close(vb["pixel_values"], hb["pixel_values"].flatten(0, 1)[:2], atol=2e-6, rtol=0)
    with torch.no_grad():
        diff = (model(**vb).logits - hf(**hb).logits).abs().max().item()
    assert diff < 1e-4


# --------------------------------------------------------------------------------------------------------------
# token counts against transformers' own processors at real geometries (no weights)
# --------------------------------------------------------------------------------------------------------------
def _sizes(n: int, seed: int, top: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    out = [
        (1, 1),
        (top, top),
        (top, 1),
        (1, top),
        (336, 336),
        (384, 384),
        (383, 385),
        (1080, 1920),
        (1920, 1080),
    ]
    while len(out) < n:
        if rng.random() < 0.2:  # extreme aspect ratios
            short, long = rng.randint(1, 80), rng.randint(200, top)
            out.append((short, long) if rng.random() < 0.5 else (long, short))
        else:
            out.append((rng.randint(1, top), rng.randint(1, top)))
    return out


def test_token_counts_equal_transformers_onevision_siglip384():
    proc = ImageOnlyOVProcessor(
        image_processor=LlavaOnevisionImageProcessorPil(),
        tokenizer=tiny_tokenizer(),
        video_processor=None,
        num_image_tokens=729,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
    )
    geo, visual = EncoderGeometry(384, 14), VisualConfig()  # OneVision defaults: (1x1),...,(6x6), 9 tiles
    sizes = _sizes(3000, 0, 4000)
    theirs = proc._get_num_multimodal_tokens(image_sizes=sizes)["num_image_tokens"]
    ours = [plan_image(s, visual, geo).num_tokens for s in sizes]
    bad = [(s, a, b) for s, a, b in zip(sizes, ours, theirs, strict=True) if a != b]
    assert not bad, f"{len(bad)} sizes disagree, e.g. {bad[:5]}"
    # multi-image samples: one square view + one newline
    assert plan_image((300, 900), visual, geo, single_view=True).num_tokens == proc.num_image_tokens + 1


def _next_clip336_processor() -> LlavaNextProcessor:
    return LlavaNextProcessor(
        image_processor=LlavaNextImageProcessorPil(
            size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}
        ),
        tokenizer=tiny_tokenizer(),
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )


NEXT_VISUAL = VisualConfig(grids="llava_next", cap="none", max_tokens=None)


def _transformers_unpads_to_nothing(size, pinpoints, image_size: int, side: int) -> bool:
    """True when transformers' unpad keeps zero rows (or columns) of the grid map for this image: slivers
    thinner than one feature row of the chosen canvas."""
    from transformers.image_processing_utils import select_best_resolution

    h, w = size
    bh, bw = select_best_resolution([h, w], pinpoints)
    ch, cw = bh // image_size * side, bw // image_size * side
    if w / h > cw / ch:
        return int(round(h * (cw / w), 7)) == 0
    return int(round(w * (ch / h), 7)) == 0


def test_token_counts_equal_transformers_next_clip336():
    proc = _next_clip336_processor()
    geo = EncoderGeometry(336, 14, 0)
    pins = proc.image_processor.image_grid_pinpoints
    assert [list(g) for g in NEXT_VISUAL.grids] == [[r // 336, c // 336] for r, c in pins]
    sizes = [s for s in _sizes(3000, 1, 3000) if not _transformers_unpads_to_nothing(s, pins, 336, 24)]
    assert len(sizes) > 2700 and sum(max(s) > 20 * min(s) for s in sizes) > 50  # extremes remain
    theirs = proc._get_num_multimodal_tokens(image_sizes=sizes)["num_image_tokens"]
    ours = [plan_image(s, NEXT_VISUAL, geo).num_tokens for s in sizes]
    bad = [(s, a, b) for s, a, b in zip(sizes, ours, theirs, strict=True) if a != b]
    assert not bad, f"{len(bad)} sizes disagree, e.g. {bad[:5]}"


SLIVER_REASON = (
    "vistune.model.anyres.unpad_box keeps at least one feature row/column of an image sliver; transformers "
    "keeps none (the grid then contributes only newline tokens). Proposed fix: a VisualConfig switch, set by "
    "the HF importer, that drops the max(1, ...) clamp (see the interop report)."
)


def test_sliver_images_token_counts_next_clip336():
    proc = _next_clip336_processor()
    sizes = [(3000, 1), (1, 3000), (9, 1244), (2860, 4)]
    pins = proc.image_processor.image_grid_pinpoints
    assert all(_transformers_unpads_to_nothing(s, pins, 336, 24) for s in sizes)
    theirs = proc._get_num_multimodal_tokens(image_sizes=sizes)["num_image_tokens"]  # [600, 576, 576, 648]
    ours = [
        plan_image(s, NEXT_VISUAL, EncoderGeometry(336, 14, 0)).num_tokens for s in sizes
    ]  # 648, 674, ...
    assert ours == theirs


def test_sliver_image_model_parity_next(nx):
    _compare_single(nx, (1, 400), VICUNA_PROMPT)


# --------------------------------------------------------------------------------------------------------------
# export: round trips and refusals
# --------------------------------------------------------------------------------------------------------------
def _preset(name: str, **changes):
    from vistune import build_model
    from vistune.model.presets import model_preset

    cfg = model_preset(name)
    for section, values in changes.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    torch.manual_seed(0)
    return build_model(cfg)


@pytest.mark.parametrize(
    "preset, fmt, visual, sizes",
    [
        ("tiny", "llava_onevision", {}, [(40, 50), (100, 37), (64, 300), (90, 90)]),
        ("tiny", "llava_onevision", {"cap": "none", "max_tokens": None}, [(90, 90), (20, 170)]),
        ("tiny-clip-llama", "llava_next", {}, [(40, 50), (100, 37), (64, 150)]),
    ],
)
def test_export_round_trip_same_logits(tmp_path, preset, fmt, visual, sizes):
    model, proc = _preset(preset, visual=visual)
    with torch.no_grad():
        model.image_newline.normal_(0, 1.0)
    folder = export_hf(model, proc, tmp_path / "hf", fmt)
    cls = (
        LlavaOnevisionForConditionalGeneration
        if fmt == "llava_onevision"
        else LlavaNextForConditionalGeneration
    )
    hf, info = cls.from_pretrained(str(folder), output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    hproc = hf_ov_processor(folder) if fmt == "llava_onevision" else hf_next_processor(folder)
    for size in sizes:
        _compare_single((folder, model, proc, hf.eval(), hproc), size, QWEN_PROMPT)
    # and back: importing the exported folder gives the same model again
    again, again_proc = load_pretrained(folder)
    assert again.config.connector == model.config.connector
    img = noise(*sizes[0])
    with torch.no_grad():
        a = model(**proc(text=[QWEN_PROMPT], images=[img])).logits
        b = again(**again_proc(text=[QWEN_PROMPT], images=[img])).logits
    assert (a - b).abs().max().item() < 1e-5
    files = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "processor_config.json"} <= files
    assert isinstance(
        auto_image_processor(folder),
        LlavaOnevisionImageProcessorPil | LlavaNextImageProcessorPil,
    )


def test_export_cap_none_onevision_never_resizes(tmp_path):
    model, proc = _preset("tiny", visual={"cap": "none", "max_tokens": None})
    folder = export_hf(model, proc, tmp_path / "hf", "llava_onevision")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["vision_aspect_ratio"] == "anyres_max_9"  # the largest grid (3x3) can never exceed it
    assert cfg["vision_feature_layer"] == -1 and cfg["vision_feature_select_strategy"] == "full"


@pytest.mark.parametrize(
    "fmt, changes, knob",
    [
        (
            "llava_onevision",
            {"visual": {"cap": "per_grid", "max_tokens": "(4+1)*64"}},
            "visual.cap='per_grid'",
        ),
        ("llava_onevision", {"visual": {"pool_position": "before"}}, "visual.pool_position"),
        ("llava_onevision", {"visual": {"pool_method": "adaptive_avg"}}, "visual.pool_method"),
        ("llava_onevision", {"visual": {"pool_ratio": 0.5}}, "visual.pool_ratio"),
        ("llava_onevision", {"visual": {"base_view": "pad"}}, "visual.base_view"),
        ("llava_onevision", {"visual": {"base_view": "none"}}, "visual.base_view"),
        ("llava_onevision", {"visual": {"min_long_edge_tiles": 2}}, "visual.min_long_edge_tiles"),
        ("llava_onevision", {"visual": {"unpad": False}}, "visual.unpad"),
        ("llava_onevision", {"visual": {"newline": False}}, "visual.newline"),
        ("llava_onevision", {"visual": {"unpad_rounding": "official"}}, "visual.unpad_rounding"),
        ("llava_onevision", {"visual": {"cap_slack": 1.3}}, "visual.cap_slack"),
        ("llava_onevision", {"visual": {"max_tokens": "2.5 tiles"}}, "visual.max_tokens"),
        ("llava_onevision", {"visual": {"max_tokens": 300}}, "visual.max_tokens"),
        ("llava_onevision", {"visual": {"anyres": False}}, "visual.anyres"),
        ("llava_next", {}, "visual.cap='total'"),
        ("llava_onevision", {"connector": {"type": "linear"}}, "connector.type"),
    ],
)
def test_export_refuses_what_transformers_cannot_express(tmp_path, fmt, changes, knob):
    model, proc = _preset("tiny", **changes)
    with pytest.raises(InteropError, match=knob.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")):
        export_hf(model, proc, tmp_path / "out", fmt)
    assert not (tmp_path / "out").exists()


def test_export_refuses_kept_cls_and_lists_every_problem(tmp_path):
    model, proc = _preset("tiny-clip-llama", vision={"keep_cls": True}, visual={"newline": False})
    with pytest.raises(InteropError) as err:
        export_hf(model, proc, tmp_path / "out", "llava_next")
    assert "vision.keep_cls" in str(err.value) and "visual.newline" in str(err.value)
    with pytest.raises(InteropError, match="format"):
        export_hf(model, proc, tmp_path / "out", "llava")


def test_import_keeps_checkpoint_vocab_when_vistune_adds_a_token(tmp_path):
    """A checkpoint without spare embedding rows and without the video token (like Vicuna-based LLaVA-NeXT):
    vistune adds the token, the checkpoint's rows are copied and the logits agree on its vocabulary."""
    tok_len = len(tiny_tokenizer())
    folder = make_next_folder(tmp_path, vocab_size=tok_len, name="full_vocab")
    attrs = json.loads((folder / "processor_config.json").read_text())
    (folder / "processor_config.json").write_text(json.dumps({**attrs, "video_token": "<clip>"}))
    model, proc = load_pretrained(folder)
    assert model.llm.get_input_embeddings().num_embeddings == tok_len + 1
    hf = LlavaNextForConditionalGeneration.from_pretrained(str(folder)).eval()
    img = noise(95, 97)
    with torch.no_grad():
        ours = model(**proc(text=[VICUNA_PROMPT], images=[img])).logits
        theirs = hf(
            **hf_next_processor(folder)(images=[img], text=[VICUNA_PROMPT], return_tensors="pt")
        ).logits
    assert (ours[..., :tok_len] - theirs).abs().max().item() < 1e-4


def test_import_with_visual_overrides(ov):
    folder = ov[0]
    model, proc = load_pretrained(folder, visual_overrides={"max_tokens": "2 tiles"})
    assert model.visual.max_tokens == "2 tiles" and proc.visual is model.visual
    assert model.plan([(255, 256)])[0].tokens.grid <= 2 * 64 * 1.21


# --------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------
def test_cli_convert_both_ways(ov, tmp_path):
    import typer
    from typer.testing import CliRunner

    from vistune.model.interop.cli import register

    app = typer.Typer()
    register(app)

    @app.command()
    def _unused() -> None:  # a second command keeps typer from collapsing the app into `convert`
        pass

    runner = CliRunner()
    folder, model, proc, *_ = ov
    res = runner.invoke(app, ["convert", str(folder), str(tmp_path / "native"), "--to", "vistune"])
    assert res.exit_code == 0, res.output
    native, nproc = load_pretrained(tmp_path / "native")
    img = noise(100, 130)
    with torch.no_grad():
        a = model(**proc(text=[QWEN_PROMPT], images=[img])).logits
        b = native(**nproc(text=[QWEN_PROMPT], images=[img])).logits
    assert (a - b).abs().max().item() < 1e-5

    res = runner.invoke(
        app,
        [
            "convert",
            "tiny",
            str(tmp_path / "hf"),
            "--to",
            "hf",
            "--format",
            "llava_onevision",
            "--set",
            "visual.max_tokens=3 tiles",
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["vision_aspect_ratio"] == "anyres_max_3"

    res = runner.invoke(
        app, ["convert", "tiny", str(tmp_path / "bad"), "--to", "hf", "--set", "visual.cap=per_grid"]
    )
    assert isinstance(res.exception, ConfigError) and "per_grid" in str(res.exception)
    res = runner.invoke(app, ["convert", "tiny", str(tmp_path / "x"), "--to", "onnx"])
    assert res.exit_code != 0 and "--to" in res.output
    res = runner.invoke(app, ["convert", str(tmp_path / "native"), str(tmp_path / "y"), "--to", "vistune"])
    assert isinstance(res.exception, ConfigError) and "config.json" in str(res.exception)


# --------------------------------------------------------------------------------------------------------------
# chat templates
# --------------------------------------------------------------------------------------------------------------
CONVERSATIONS = [
    [{"role": "user", "content": "<image>\nWhat is this?"}],
    [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]},
        {"role": "assistant", "content": "A red circle."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "And"}, {"type": "text", "text": "the color?"}],
        },
    ],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi <image>"},
        {"role": "assistant", "content": "Hello."},
    ],
    [
        {"role": "system", "content": ""},
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Hm"}]},
    ],
]


@pytest.mark.parametrize("name", ["qwen_1_5", "vicuna_v1", "llama_3"])
@pytest.mark.parametrize("conv", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("gen", [False, True])
def test_exported_chat_template_renders_like_vistune(name, conv, gen):
    from vistune.data.templates import get_template

    tok = tiny_tokenizer()
    jinja = hf_chat_template(name)
    messages = CONVERSATIONS[conv]
    theirs = tok.apply_chat_template(messages, chat_template=jinja, tokenize=False, add_generation_prompt=gen)
    assert theirs == get_template(name).render(messages, add_generation_prompt=gen)


def test_exported_chat_template_marks_the_supervised_tokens():
    from vistune.data.templates import get_template

    tok = tiny_tokenizer()
    messages = CONVERSATIONS[1][:2]
    out = tok.apply_chat_template(
        messages,
        chat_template=hf_chat_template("qwen_1_5"),
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    ids, mask = out["input_ids"], out["assistant_masks"]
    supervised = "".join(t for t, sup in get_template("qwen_1_5").segments(messages) if sup)
    assert tok.decode([i for i, m in zip(ids, mask, strict=True) if m]) == supervised
    assert hf_chat_template("plain") is None


# --------------------------------------------------------------------------------------------------------------
# official LLaVA-NeXT config keys ((width, height) convention)
# --------------------------------------------------------------------------------------------------------------
def test_official_pinpoints_are_width_first():
    from vistune.model.interop.official import official_pinpoints_to_grids

    # range syntax: widths outer, heights inner, first factor = width
    assert official_pinpoints_to_grids("(1x1),...,(2x3)", 384) == (
        (1, 1),
        (2, 1),
        (3, 1),
        (1, 2),
        (2, 2),
        (3, 2),
    )
    assert official_pinpoints_to_grids([[768, 384], [384, 768], [768, 384]], 384) == ((1, 2), (2, 1))
    assert official_pinpoints_to_grids("[(672, 336), (336, 1008)]", 336) == ((1, 2), (3, 1))
    with pytest.raises(InteropError, match="width, height"):
        official_pinpoints_to_grids([[400, 384]], 384)


def test_official_asymmetric_pinpoints_pick_the_same_canvas():
    """The official (w, h) selection over the raw list equals vistune's (h, w) selection over the converted
    grids (the May-2024 "super high" lists only have w <= h entries, so a swap would change the result)."""
    from vistune.model.anyres import select_best_resolution
    from vistune.model.interop.official import official_pinpoints_to_grids

    pins_wh = [[384, 768], [384, 1152], [768, 1152], [384, 384], [768, 768], [1152, 2304]]
    grids = official_pinpoints_to_grids(pins_wh, 384)
    rng = random.Random(3)
    for _ in range(500):
        w, h = rng.randint(1, 2500), rng.randint(1, 2500)
        # the official rule in (width, height)
        best, best_eff, best_waste = None, -1, math.inf
        for cw, ch in pins_wh:
            scale = min(cw / w, ch / h)
            eff = min(int(w * scale) * int(h * scale), w * h)
            if eff > best_eff or (eff == best_eff and cw * ch - eff < best_waste):
                best, best_eff, best_waste = (cw, ch), eff, cw * ch - eff
        ours = select_best_resolution((h, w), [(r * 384, c * 384) for r, c in grids])
        assert ours == (best[1], best[0])


@pytest.mark.parametrize(
    "cfg, expect",
    [
        (
            {
                "image_aspect_ratio": "anyres_max_9",
                "mm_patch_merge_type": "spatial_unpad",
                "image_grid_pinpoints": "(1x1),...,(6x6)",
            },
            {"cap": "total", "max_tokens": "9 tiles", "unpad": True, "newline": True, "base_view": "squash"},
        ),
        (
            {
                "image_aspect_ratio": "anyres_max_9",
                "mm_patch_merge_type": "spatial",
                "image_grid_pinpoints": [[384, 768]],
            },
            {"cap": "none", "unpad": False, "newline": False, "grids": [[2, 1]]},
        ),
        (
            {
                "image_aspect_ratio": "anyres",
                "mm_patch_merge_type": "spatial_unpad_nobase",
                "image_grid_pinpoints": [[768, 384]],
            },
            {"cap": "none", "base_view": "none", "grids": [[1, 2]], "unpad_rounding": "official"},
        ),
        (
            {"image_aspect_ratio": "pad", "mm_patch_merge_type": "flat"},
            {"anyres": False, "base_view": "pad", "newline": False},
        ),
        (
            {"image_aspect_ratio": "square", "mm_patch_merge_type": "spatial_unpad"},
            {"anyres": False, "newline": True},
        ),
    ],
)
def test_official_visual_config(cfg, expect):
    from vistune.model.interop.official import official_visual_config

    out = official_visual_config(cfg, 384, "siglip")
    VisualConfig(**out)  # valid
    assert {k: out[k] for k in expect} == expect


@pytest.mark.parametrize(
    "cfg, encoder, match",
    [
        (
            {
                "image_aspect_ratio": "anyres",
                "mm_patch_merge_type": "flat",
                "image_grid_pinpoints": [[384, 384]],
            },
            "siglip",
            "flat",
        ),
        (
            {"image_aspect_ratio": "anyres", "mm_patch_merge_type": "maxpool2x2"},
            "siglip",
            "mm_patch_merge_type",
        ),
        ({"image_aspect_ratio": "square", "mm_patch_merge_type": "flat"}, "clip", "centre-crops"),
        ({"image_aspect_ratio": "highres", "mm_patch_merge_type": "flat"}, "siglip", "image_aspect_ratio"),
    ],
)
def test_official_visual_config_refusals(cfg, encoder, match):
    from vistune.model.interop.official import official_visual_config

    with pytest.raises(InteropError, match=match):
        official_visual_config(cfg, 384, encoder)


def test_official_model_config(tmp_path):
    from vistune.model.interop.official import official_model_config

    tower = tmp_path / "siglip"
    tower.mkdir()
    (tower / "config.json").write_text(
        json.dumps({"model_type": "siglip_vision_model", "image_size": 384, "patch_size": 14})
    )
    cfg = {
        "mm_vision_tower": str(tower),
        "mm_vision_select_layer": -2,
        "mm_projector_type": "mlp2x_gelu",
        "image_aspect_ratio": "anyres_max_9",
        "mm_patch_merge_type": "spatial_unpad",
        "image_grid_pinpoints": "(1x1),...,(6x6)",
    }
    mc = official_model_config(cfg, llm_path=tmp_path / "llm")
    assert mc.vision.type == "siglip" and mc.vision.drop_last_layer and mc.vision.feature_layer == -1
    assert mc.connector.type == "mlp2x_gelu" and mc.visual.cap == "total" and len(mc.visual.grids) == 36
    clip = official_model_config(
        {**cfg, "mm_vision_select_feature": "cls_patch", "mm_projector_type": "linear"},
        llm_path="llm",
        vision_path="openai/clip-vit-large-patch14-336",
        encoder="clip",
        image_size=336,
    )
    assert clip.vision.feature_layer == -2 and clip.vision.keep_cls and clip.connector.type == "linear"
    with pytest.raises(InteropError, match="mm_vision_select_feature"):
        official_model_config({**cfg, "mm_vision_select_feature": "slicefour_patch"}, llm_path="llm")
    with pytest.raises(InteropError, match="encoder"):
        official_model_config({**cfg, "mm_vision_tower": "google/siglip"}, llm_path="llm", image_size=384)

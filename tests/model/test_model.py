"""The composed model: forward, token accounting, overrides, generation, persistence."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import noise, solid
from vistune import build_model, load_pretrained
from vistune.config import ConfigError, VisualConfig
from vistune.model.lmm import ImageTokenMismatch

TOKEN_CONFIGS = [
    {},
    {"grids": "llava_next", "cap": "none", "max_tokens": None},
    {"grids": "max:4x4", "cap": "per_grid", "max_tokens": "(4+1)*64"},
    {
        "grids": "max:3x3",
        "base_view": "pad",
        "pool_ratio": 0.5,
        "max_tokens": "2 tiles",
        "pool_position": "before",
    },
    {"grids": "max:4x4", "min_long_edge_tiles": 2, "newline": False, "pool_method": "adaptive_avg"},
    {"grids": "max:6x6", "base_view": "none", "unpad_rounding": "official", "max_tokens": "3 tiles"},
    {"anyres": False},
]


@pytest.fixture(scope="module")
def model_proc():
    torch.manual_seed(0)
    return load_pretrained("tiny")


@settings(max_examples=1100, deadline=None, derandomize=True)
@given(st.integers(1, 260), st.integers(1, 260), st.sampled_from(range(len(TOKEN_CONFIGS))), st.booleans())
def test_predicted_token_count_equals_model_features(model_proc, h, w, ci, single):
    """The pure token-count function agrees with what the model actually produces."""
    model, proc = model_proc
    base = VisualConfig(grids="max:3x3", max_tokens="4 tiles")
    model.visual_state.visual = base.override(**TOKEN_CONFIGS[ci])
    processed = proc.preprocess_image(solid(h, w), single_view=single)
    with torch.no_grad():
        feats = model.encode_images(processed.pixel_values, [processed.plan])
    predicted = proc.count_tokens((h, w), single_view=single)
    assert feats[0].shape == (predicted.total, model.hidden_size)
    assert processed.pixel_values.shape[0] == predicted.views


def test_forward_loss_text_only_and_multi_image(tiny):
    model, proc = tiny
    b = proc(
        text=["<image>\nWhat is this?", "Hello <image> and <image>", "just text"],
        images=[[noise(50, 80)], [noise(100, 30, 1), noise(20, 20, 2)], []],
    )
    plans = model.plan(b["image_sizes"], b["image_single_view"])
    assert [p.single_view for p in plans] == [False, True, True]
    assert b["pixel_values"].shape[0] == sum(p.num_views for p in plans)
    labels = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
    labels = labels.masked_fill(labels == model.image_token_id, -100)
    out = model(**b, labels=labels)
    assert out.logits.shape[:2] == b["input_ids"].shape
    assert torch.isfinite(out.loss)
    # the chunked loss equals plain cross-entropy over the shifted labels
    ref = torch.nn.functional.cross_entropy(
        out.logits[:, :-1].reshape(-1, out.logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    assert torch.allclose(out.loss, ref, atol=1e-5)
    out.loss.backward()
    assert model.connector.linear_1.weight.grad is not None


def test_mismatch_is_a_clear_error(tiny):
    model, proc = tiny
    b = proc(text=["<image>\nhi"], images=[noise(60, 60)])
    model.set_visual(grids="max:1x1")
    with pytest.raises(ImageTokenMismatch, match="different visual settings"):
        model(**b)


def test_inference_override_is_shared_with_processor(tiny):
    model, proc = tiny
    n_before = proc.count_tokens((90, 90)).total
    model.set_visual(grids="max:1x1")
    assert proc.visual.grids == ((1, 1),)
    assert proc.count_tokens((90, 90)).total < n_before
    b = proc(text=["<image>\nhi"], images=[noise(90, 90)])
    assert model(**b).logits.shape[1] == b["input_ids"].shape[1]


def test_batched_generation_equals_one_by_one(tiny):
    model, proc = tiny
    prompts = ["<image>\nDescribe.", "Count the <image> shapes please", "no image here at all, just words"]
    images = [[noise(40, 70, 3)], [noise(90, 33, 4)], []]
    batch = proc(text=prompts, images=images, padding_side="left")
    together = model.generate(**batch, max_new_tokens=12)
    for i, (t, im) in enumerate(zip(prompts, images, strict=True)):
        single = proc(text=[t], images=[im])
        alone = model.generate(**single, max_new_tokens=12)
        n = alone.shape[1]
        assert torch.equal(together[i, :n], alone[0]), i


def test_sampling_is_seeded(tiny):
    model, proc = tiny
    b = proc(text=["<image>\nhi"], images=[noise(40, 40)])
    g1 = model.generate(
        **b,
        max_new_tokens=8,
        do_sample=True,
        temperature=1.5,
        top_p=0.9,
        generator=torch.Generator().manual_seed(1),
    )
    g2 = model.generate(
        **b,
        max_new_tokens=8,
        do_sample=True,
        temperature=1.5,
        top_p=0.9,
        generator=torch.Generator().manual_seed(1),
    )
    assert torch.equal(g1, g2)


def test_save_load_roundtrip(tiny, tmp_path):
    model, proc = tiny
    model.set_visual(grids="max:2x2")
    b = proc(text=["<image>\nhi there"], images=[noise(70, 40)])
    with torch.no_grad():
        ref = model(**b).logits
    model.save_pretrained(tmp_path / "ckpt", processor=proc)
    m2, p2 = load_pretrained(tmp_path / "ckpt")
    assert p2.visual.grids == ((1, 1), (1, 2), (2, 1), (2, 2))
    b2 = p2(text=["<image>\nhi there"], images=[noise(70, 40)])
    assert torch.equal(b["input_ids"], b2["input_ids"])
    with torch.no_grad():
        assert torch.allclose(m2(**b2).logits, ref, atol=1e-6)
    # inference-time override without editing the checkpoint
    m3, p3 = load_pretrained(tmp_path / "ckpt", visual_overrides={"grids": "max:1x1"})
    assert p3.visual.grids == ((1, 1),)


def test_partial_checkpoint_holds_only_trainable_parts(tiny, tmp_path):
    from safetensors.torch import load_file

    model, _ = tiny
    model.save_pretrained(tmp_path / "s1", parts=["connector", "newline"])
    keys = set(load_file(str(tmp_path / "s1" / "model.safetensors")))
    assert keys and all(k.startswith("connector.") or k == "image_newline" for k in keys)
    # a partial checkpoint never silently fills the missing parts with random weights
    with pytest.raises(ConfigError, match="partial.*base="):
        load_pretrained(tmp_path / "s1")
    torch.manual_seed(0)
    m2, _ = load_pretrained(tmp_path / "s1", base="tiny")  # same seed -> same base weights as `model`
    for k, v in model.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k]), k


@pytest.mark.parametrize(
    "patch, field",
    [
        ({"vision": {"preset": "tiny-nonexistent"}}, "vision.preset"),
        ({"connector": {"type": "mlp9x"}}, "connector.type"),
        ({"visual": {"max_tokens": 10}}, "visual.max_tokens"),
        ({"vision": {"preset": "tiny-siglip", "feature_layer": -9}}, "vision.feature_layer"),
        ({"llm": {"path": "/definitely/not/here"}}, "llm.path"),
    ],
)
def test_bad_configs_name_the_field(patch, field):
    from vistune.model.presets import model_preset

    cfg = model_preset("tiny")
    for k, v in patch.items():
        cfg[k] = v
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        build_model(cfg)


def test_clip_llama_preset_and_feature_layer():
    torch.manual_seed(0)
    model, proc = load_pretrained("tiny-clip-llama")
    assert model.vision.num_layers == 2 and model.vision.num_layers_full == 3  # -2: last layer never runs
    b = proc(text=["USER: <image>\nWhat? ASSISTANT:"], images=[noise(30, 60)])
    out = model(**b)
    assert out.logits.shape[1] == b["input_ids"].shape[1]


def test_keep_cls_adds_one_base_token():
    from vistune.model.presets import model_preset

    cfg = model_preset("tiny-clip-llama")
    cfg["vision"]["keep_cls"] = True
    torch.manual_seed(0)
    model, proc = build_model(cfg)
    p = proc.plan((40, 70))
    assert p.tokens.base == 64 + 1
    pi = proc.preprocess_image(noise(40, 70))
    assert model.encode_images(pi.pixel_values, [pi.plan])[0].shape[0] == p.num_tokens


def test_static_cache_generation_equals_dynamic(tiny):
    model, proc = tiny
    batch = proc(
        text=["<image>\nDescribe.", "Count the <image> shapes", "words only"],
        images=[[noise(40, 70, 3)], [noise(90, 33, 4)], []],
        padding_side="left",
    )
    dyn = model.generate(**batch, max_new_tokens=10)
    sta = model.generate(**batch, max_new_tokens=10, cache_implementation="static")
    assert torch.equal(dyn, sta)

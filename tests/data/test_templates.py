"""Chat templates: rendered text, supervision masks (golden strings) and exact tokenization."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vistune.data.schema import Message
from vistune.data.templates import (
    IGNORE_INDEX,
    ChatMLTemplate,
    NoSupervisedTokens,
    TokenizationSkip,
    TooLong,
    available_templates,
    format_token_mask,
    get_template,
    placeholder_id,
    register_template,
    tokenize_conversation,
    tokenize_prompt,
)
from vistune.model.tokenizer import load_tiny_tokenizer

TEMPLATES = ["qwen_1_5", "vicuna_v1", "llama_3", "plain"]

CHAT = [
    {"role": "user", "content": "<image>\nWhat is it?"},
    {"role": "assistant", "content": "A red circle."},
    {"role": "user", "content": "How many?"},
    {"role": "assistant", "content": "One."},
]

VICUNA_SYS = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAMA3_SYS = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the "
    "user provides, and assist the user with a variety of tasks using natural language."
)

# [[...]] marks supervised text: the assistant reply and its end-of-turn marker, nothing else.
GOLDEN = {
    "qwen_1_5": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<image>\nWhat is it?<|im_end|>\n"
        "<|im_start|>assistant\n[[A red circle.<|im_end|>]]\n"
        "<|im_start|>user\nHow many?<|im_end|>\n"
        "<|im_start|>assistant\n[[One.<|im_end|>]]\n"
    ),
    "vicuna_v1": (
        f"<s>{VICUNA_SYS} USER: <image>\nWhat is it? ASSISTANT:[[ A red circle.</s>]]"
        "USER: How many? ASSISTANT:[[ One.</s>]]"
    ),
    "llama_3": (
        f"<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{LLAMA3_SYS}<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat is it?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n[[A red circle.<|eot_id|>]]"
        "<|start_header_id|>user<|end_header_id|>\n\nHow many?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n[[One.<|eot_id|>]]"
    ),
    "plain": "<image>[[A red circle.\nOne.\n]]",
}


@pytest.fixture(scope="module")
def tok():
    return load_tiny_tokenizer()


# --------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------
def test_registry_exact_names_and_aliases():
    for name in TEMPLATES:
        assert get_template(name).name == name
    assert get_template("chatml") is get_template("qwen_1_5")
    assert get_template("qwen_2") is get_template("qwen_1_5")
    assert get_template("v1") is get_template("vicuna_v1")
    assert get_template("llava_llama_3") is get_template("llama_3")
    tpl = get_template("plain")
    assert get_template(tpl) is tpl


def test_unknown_template_lists_known_ones():
    with pytest.raises(ValueError, match="unknown chat template 'qwen'.*chatml.*plain.*qwen_1_5.*vicuna_v1"):
        get_template("qwen")
    with pytest.raises(ValueError, match="already registered"):
        register_template(ChatMLTemplate("plain"))
    assert set(TEMPLATES) <= set(available_templates())


def test_template_metadata():
    assert get_template("qwen_1_5").default_system == "You are a helpful assistant."
    assert get_template("qwen_1_5").stop_strings == ("<|im_end|>",)
    assert get_template("vicuna_v1").stop_strings == ("</s>",)
    assert get_template("llama_3").stop_strings == ("<|eot_id|>",)
    assert get_template("plain").stop_strings == ("\n",)
    assert get_template("plain").default_system is None


# --------------------------------------------------------------------------------------------------------
# Rendering and masks
# --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", TEMPLATES)
def test_golden_supervision_mask(name):
    tpl = get_template(name)
    assert tpl.mark_supervised(CHAT) == GOLDEN[name]
    assert tpl.render(CHAT) == GOLDEN[name].replace("[[", "").replace("]]", "")
    assert "".join(t for t, _ in tpl.segments(CHAT)) == tpl.render(CHAT)


@pytest.mark.parametrize(
    ("name", "suffix"),
    [
        ("qwen_1_5", "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
        ("vicuna_v1", " USER: Hi ASSISTANT:"),
        (
            "llama_3",
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
        ),
        ("plain", ""),
    ],
)
def test_generation_prompt(name, suffix):
    text = get_template(name).render([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    assert text.endswith(suffix)


def test_system_message_replaces_default_and_with_system_none_drops_it():
    msgs = [{"role": "system", "content": "Be terse."}, *CHAT[:2]]
    qwen = get_template("qwen_1_5")
    assert qwen.render(msgs).startswith("<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\n")
    hf_style = qwen.with_system(None)  # the Hugging Face OneVision template has no default system
    assert (
        hf_style.render(CHAT[:2])
        == "<|im_start|>user\n<image>\nWhat is it?<|im_end|>\n<|im_start|>assistant\nA red circle.<|im_end|>\n"
    )
    assert qwen.default_system == "You are a helpful assistant."  # original untouched
    assert get_template("vicuna_v1").with_system("").render(CHAT[:2]).startswith("<s>USER: <image>")
    assert get_template("plain").render(msgs) == "<image>A red circle.\n"  # plain has no system


def test_hf_content_lists_render_media_first():
    msgs = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Compare."}, {"type": "image"}, {"type": "image"}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "Same."}]},
    ]
    text = get_template("qwen_1_5").with_system(None).render(msgs)
    assert (
        text
        == "<|im_start|>user\n<image>\n<image>\nCompare.<|im_end|>\n<|im_start|>assistant\nSame.<|im_end|>\n"
    )
    assert get_template("plain").render(msgs) == "<image><image>Same.\n"


def test_messages_accept_message_objects():
    msgs = [Message("user", "Hi"), Message("assistant", "Yo")]
    assert get_template("llama_3").render(msgs) == get_template("llama_3").render([m.to_dict() for m in msgs])


def test_bad_messages_are_rejected():
    with pytest.raises(ValueError, match=r"messages\[1\]: a system message is only allowed first"):
        get_template("qwen_1_5").render([CHAT[0], {"role": "system", "content": "x"}])
    with pytest.raises(ValueError, match=r"messages\[0\]: role must be"):
        get_template("qwen_1_5").render([{"role": "human", "content": "x"}])
    with pytest.raises(ValueError, match=r"messages\[0\].content"):
        get_template("qwen_1_5").render([{"role": "user", "content": None}])


def test_bos_variant_via_replace():
    plain_llama = dataclasses.replace(get_template("plain"), bos="<s>")
    assert plain_llama.mark_supervised(CHAT[:2]) == "<s><image>[[A red circle.\n]]"


# --------------------------------------------------------------------------------------------------------
# Tokenization
# --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", TEMPLATES)
def test_token_mask_matches_character_mask(name, tok):
    ids, labels = tokenize_conversation(name, CHAT, tok)
    assert len(ids) == len(labels)
    assert format_token_mask(ids, labels, tok) == GOLDEN[name]
    # for this byte-level BPE the segment-wise ids equal tokenizing the joined text
    assert ids == tok(get_template(name).render(CHAT), add_special_tokens=False)["input_ids"]
    image_id = placeholder_id(tok)
    assert ids.count(image_id) == 1
    assert labels[ids.index(image_id)] == IGNORE_INDEX


def test_placeholder_is_one_token_even_when_glued_to_text(tok):
    msgs = [{"role": "user", "content": "a<image>b<image><video>"}, {"role": "assistant", "content": "x"}]
    ids, labels = tokenize_conversation("qwen_1_5", msgs, tok)
    img, vid = placeholder_id(tok, "<image>"), placeholder_id(tok, "<video>")
    assert ids.count(img) == 2 and ids.count(vid) == 1
    assert all(lab == IGNORE_INDEX for t, lab in zip(ids, labels, strict=True) if t in (img, vid))


def test_missing_placeholder_token_gives_clear_error(tok):
    with pytest.raises(ValueError, match="the tokenizer has no '<audio>' token; add it first"):
        placeholder_id(tok, "<audio>")


def test_official_qwen_masking_is_opt_in(tok):
    ids, labels = tokenize_conversation("qwen_1_5", CHAT[:2], tok, official_qwen_masking=True)
    assert format_token_mask(ids, labels, tok) == (
        "[[<|im_start|>]]system[[\n]]You are a helpful assistant.[[<|im_end|>\n<|im_start|>]]user[[\n]]"
        "<image>[[\n]]What is it?[[<|im_end|>\n<|im_start|>assistant\nA red circle.<|im_end|>\n]]"
    )
    with pytest.raises(ValueError, match="applies to ChatML"):
        tokenize_conversation("vicuna_v1", CHAT, tok, official_qwen_masking=True)


def test_no_reply_raises_no_supervised_tokens(tok):
    with pytest.raises(NoSupervisedTokens, match="no assistant reply"):
        tokenize_conversation("qwen_1_5", CHAT[:1], tok)
    assert issubclass(NoSupervisedTokens, TokenizationSkip) and issubclass(TooLong, TokenizationSkip)


def test_truncation_drops_whole_trailing_exchanges(tok):
    full_ids, full_labels = tokenize_conversation("qwen_1_5", CHAT, tok)
    one_ids, one_labels = tokenize_conversation("qwen_1_5", CHAT[:2], tok)
    for limit in range(len(one_ids), len(full_ids)):
        ids, labels = tokenize_conversation("qwen_1_5", CHAT, tok, max_length=limit)
        assert (ids, labels) == (one_ids, one_labels)
    assert tokenize_conversation("qwen_1_5", CHAT, tok, max_length=len(full_ids)) == (full_ids, full_labels)
    with pytest.raises(NoSupervisedTokens, match="not even its first exchange fits"):
        tokenize_conversation("qwen_1_5", CHAT, tok, max_length=len(one_ids) - 1)


def test_drop_overflow_raises_too_long(tok):
    full_ids, _ = tokenize_conversation("llama_3", CHAT, tok)
    with pytest.raises(TooLong) as info:
        tokenize_conversation("llama_3", CHAT, tok, max_length=len(full_ids) - 1, overflow="drop")
    assert (info.value.length, info.value.max_length) == (len(full_ids), len(full_ids) - 1)
    back = pickle.loads(pickle.dumps(info.value))
    assert (back.length, back.max_length, str(back)) == (
        info.value.length,
        info.value.max_length,
        str(info.value),
    )
    with pytest.raises(ValueError, match="overflow must be"):
        tokenize_conversation("llama_3", CHAT, tok, overflow="cut")  # type: ignore[arg-type]


def test_truncation_counts_expanded_placeholders_and_never_cuts_one(tok):
    msgs = [
        {"role": "user", "content": "<image>\nA?"},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "<image>\nB?"},
        {"role": "assistant", "content": "b"},
    ]
    img = placeholder_id(tok)
    full_ids, _ = tokenize_conversation("qwen_1_5", msgs, tok)
    # each image expands to 50 positions: the text fits, the expanded second exchange does not
    ids, labels = tokenize_conversation(
        "qwen_1_5", msgs, tok, max_length=len(full_ids) + 60, placeholder_lengths=[50, 50]
    )
    assert ids.count(img) == 1 and ids == tokenize_conversation("qwen_1_5", msgs[:2], tok)[0]
    with pytest.raises(TooLong):
        tokenize_conversation(
            "qwen_1_5",
            msgs,
            tok,
            max_length=len(full_ids) + 60,
            placeholder_lengths=[50, 50],
            overflow="drop",
        )
    with pytest.raises(ValueError, match="placeholder_lengths has 1 entries for 2 placeholders"):
        tokenize_conversation("qwen_1_5", msgs, tok, placeholder_lengths=[3])


@pytest.mark.parametrize("name", TEMPLATES)
def test_tokenize_prompt_matches_render(name, tok):
    msgs = CHAT[:3]
    ids = tokenize_prompt(name, msgs, tok)
    assert tok.decode(ids, skip_special_tokens=False) == get_template(name).render(
        msgs, add_generation_prompt=True
    )
    train_ids, _ = tokenize_conversation(name, CHAT, tok)
    if name != "plain":  # the prompt is a prefix of the training sequence
        assert train_ids[: len(ids)] == ids


def test_format_token_mask_checks_lengths(tok):
    with pytest.raises(ValueError, match="2 input ids but 1 labels"):
        format_token_mask([1, 2], [1], tok)


# --------------------------------------------------------------------------------------------------------
# Property: for any conversation, the token labels reproduce exactly the supervised text
# --------------------------------------------------------------------------------------------------------
_pieces = [*"ab A1 .,\n\t?é中", "<image>", "USER:", "</s>", "<|im_end|>", " ASSISTANT:"]
_text = st.lists(st.sampled_from(_pieces), max_size=10).map("".join)


@st.composite
def conversations(draw):
    msgs = []
    if draw(st.booleans()):
        msgs.append({"role": "system", "content": draw(_text)})
    for _ in range(draw(st.integers(1, 3))):
        msgs.append({"role": "user", "content": draw(_text)})
        msgs.append({"role": "assistant", "content": draw(_text)})
    return msgs


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(conversations(), st.sampled_from(TEMPLATES))
def test_labels_reproduce_supervised_text(tok, msgs, name):
    tpl = get_template(name)
    ids, labels = tokenize_conversation(tpl, msgs, tok)
    assert tok.decode(ids, skip_special_tokens=False) == tpl.render(msgs)
    supervised = [t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX]
    assert all(lab in (IGNORE_INDEX, t) for t, lab in zip(ids, labels, strict=True))
    expected = "".join(t for t, sup in tpl.segments(msgs) if sup)
    assert tok.decode(supervised, skip_special_tokens=False) == expected.replace("<image>", "")
    img = placeholder_id(tok)
    assert all(lab == IGNORE_INDEX for t, lab in zip(ids, labels, strict=True) if t == img)

"""Sample schema: normalisation rules, placeholder handling and located errors."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vistune.data.schema import (
    IMAGE_TOKEN,
    VIDEO_TOKEN,
    Message,
    SampleError,
    flatten_content,
    parse_sample,
    resolve_media_path,
)

SRC = "/data/llava.json"


def conv(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"from": f, "value": v} for f, v in pairs]


def parse(raw, **kw):
    return parse_sample(raw, source=SRC, row=7, **kw)


def error_of(raw, **kw) -> SampleError:
    with pytest.raises(SampleError) as info:
        parse(raw, **kw)
    err = info.value
    assert err.file == SRC and err.row == 7
    return err


# --------------------------------------------------------------------------------------------------------
# Basic normalisation
# --------------------------------------------------------------------------------------------------------
def test_llava_row_normalises_roles_and_fields():
    s = parse(
        {"id": 12, "image": "a.jpg", "conversations": conv(("human", "<image>\nWhat?"), ("gpt", "A cat."))}
    )
    assert s.id == "12"
    assert s.images == ["a.jpg"] and s.video is None and s.modality == "image"
    assert s.messages == [Message("user", "<image>\nWhat?"), Message("assistant", "A cat.")]
    assert (s.source, s.row) == (SRC, 7)
    assert s.to_chat() == [
        {"role": "user", "content": "<image>\nWhat?"},
        {"role": "assistant", "content": "A cat."},
    ]


def test_role_content_form_and_system_turn():
    raw = {
        "id": "x",
        "conversations": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
        ],
    }
    s = parse(raw)
    assert [m.role for m in s.messages] == ["system", "user", "assistant"]
    assert s.modality == "text" and s.images == []


def test_missing_id_defaults_to_file_stem_and_row():
    s = parse({"conversations": conv(("human", "Hi"), ("gpt", "Yo"))})
    assert s.id == "llava:7"


def test_extra_keys_are_kept_aside():
    s = parse({"id": "a", "source_dataset": "coco", "conversations": conv(("human", "Hi"), ("gpt", "Yo"))})
    assert s.extra == {"source_dataset": "coco"}


def test_hf_content_list_is_flattened_like_the_onevision_template():
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image"},
        {"type": "text", "text": "Be short."},
    ]
    assert flatten_content(content) == "<image>\nWhat is this?\nBe short."
    assert flatten_content([{"type": "video"}, {"type": "image"}]) == "<image>\n<video>\n"
    with pytest.raises(ValueError, match="unknown type 'audio'"):
        flatten_content([{"type": "audio"}])
    with pytest.raises(ValueError, match="needs a string 'text'"):
        flatten_content([{"type": "text", "text": 3}])
    s = parse(
        {
            "image": "a.png",
            "conversations": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Yo"}]},
            ],
        }
    )
    assert s.messages[0].content == "<image>\nHi" and s.messages[1].content == "Yo"


# --------------------------------------------------------------------------------------------------------
# Placeholder rules
# --------------------------------------------------------------------------------------------------------
def test_missing_placeholder_is_inserted_at_first_user_turn():
    s = parse({"image": "a.jpg", "conversations": conv(("system", "S"), ("human", "What?"), ("gpt", "A"))})
    assert s.messages[1].content == "<image>\nWhat?"
    s = parse({"image": ["a.jpg", "b.jpg"], "conversations": conv(("human", "Compare."), ("gpt", "Same"))})
    assert s.messages[0].content == "<image>\n<image>\nCompare."


def test_single_mid_text_placeholder_moves_to_front():
    raw = {"image": "a.jpg", "conversations": conv(("human", "Look at <image> please "), ("gpt", "ok"))}
    assert parse(raw).messages[0].content == "<image>\nLook at  please"
    assert parse(raw, move_image_to_front=False).messages[0].content == "Look at <image> please "
    # already in front: untouched (even without the newline), as in the reference
    raw2 = {"image": "a.jpg", "conversations": conv(("human", "<image>What?"), ("gpt", "ok"))}
    assert parse(raw2).messages[0].content == "<image>What?"
    # only the tag: no trailing newline left over
    raw3 = {"image": "a.jpg", "conversations": conv(("human", " <image> "), ("gpt", "ok"))}
    assert parse(raw3).messages[0].content == "<image>"


def test_multi_image_placement_is_kept():
    text = "First <image> then <image>, which is bigger?"
    s = parse({"image": ["a.jpg", "b.jpg"], "conversations": conv(("human", text), ("gpt", "b"))})
    assert s.messages[0].content == text


def test_placeholders_across_turns_count_together():
    c = conv(("human", "<image>\nA?"), ("gpt", "a"), ("human", "<image>\nB?"), ("gpt", "b"))
    s = parse({"image": ["a.jpg", "b.jpg"], "conversations": c})
    assert [m.content for m in s.messages] == ["<image>\nA?", "a", "<image>\nB?", "b"]


def test_placeholder_count_mismatch_names_the_field():
    err = error_of(
        {"image": ["a.jpg", "b.jpg"], "conversations": conv(("human", "<image>\nX"), ("gpt", "y"))}
    )
    assert err.field == "conversations" and "1 <image> placeholder(s) but the sample has 2 image(s)" in str(
        err
    )
    err = error_of({"conversations": conv(("human", "<image>\nX"), ("gpt", "y"))})
    assert "but the sample has 0 image(s)" in err.reason


def test_placeholder_in_assistant_turn_is_rejected():
    err = error_of({"image": "a.jpg", "conversations": conv(("human", "<image>"), ("gpt", "see <image>"))})
    assert err.field == "conversations[1].value"


def test_video_sample_uses_video_placeholder():
    s = parse({"video": "v.mp4", "conversations": conv(("human", "<image>\nWhat happens?"), ("gpt", "x"))})
    assert s.modality == "video" and s.video == "v.mp4" and s.images == []
    assert s.messages[0].content == "<video>\nWhat happens?"
    s = parse({"video": "v.mp4", "conversations": conv(("human", "What happens?"), ("gpt", "x"))})
    assert s.messages[0].content == VIDEO_TOKEN + "\nWhat happens?"
    err = error_of({"video": "v.mp4", "conversations": conv(("human", "<video><image>"), ("gpt", "x"))})
    assert err.field == "conversations"
    err = error_of({"image": "a.jpg", "video": "v.mp4", "conversations": conv(("human", "x"), ("gpt", "y"))})
    assert err.field == "video"
    err = error_of({"image": "a.jpg", "conversations": conv(("human", "<video>\n<image>"), ("gpt", "y"))})
    assert err.field == "conversations[0].value" and "no video" in err.reason


# --------------------------------------------------------------------------------------------------------
# Turn structure and field validation
# --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("turns", "field"),
    [
        ([("gpt", "a"), ("human", "b")], "conversations[0].from"),
        ([("human", "a"), ("human", "b"), ("gpt", "c")], "conversations[1].from"),
        ([("human", "a"), ("gpt", "b"), ("system", "c"), ("gpt", "d")], "conversations[2].from"),
        ([("human", "a"), ("gpt", "b"), ("human", "c")], "conversations[2].from"),
        ([("system", "s")], "conversations"),
    ],
)
def test_turns_must_alternate_and_end_with_assistant(turns, field):
    assert error_of({"conversations": conv(*turns)}).field == field


def test_final_user_turn_allowed_for_non_training_rows():
    s = parse(
        {"conversations": conv(("human", "a"), ("gpt", "b"), ("human", "c"))}, require_final_assistant=False
    )
    assert s.messages[-1] == Message("user", "c")


@pytest.mark.parametrize(
    ("raw", "field", "text"),
    [
        ([1, 2], "<row>", "expected a JSON object"),
        ({"id": "a"}, "conversations", "missing"),
        ({"conversations": []}, "conversations", "non-empty list"),
        ({"conversations": ["hi"]}, "conversations[0]", "expected an object"),
        ({"conversations": [{"text": "hi"}]}, "conversations[0]", "needs 'from'"),
        (
            {"conversations": [{"from": "user", "value": "hi"}]},
            "conversations[0].from",
            "unknown speaker 'user'",
        ),
        ({"conversations": [{"role": "human", "content": "hi"}]}, "conversations[0].role", "unknown speaker"),
        ({"conversations": [{"from": "human"}]}, "conversations[0].value", "missing"),
        ({"conversations": [{"from": "human", "value": 3}]}, "conversations[0].value", "expected a string"),
        ({"id": True, "conversations": conv(("human", "a"), ("gpt", "b"))}, "id", "string or an integer"),
        ({"image": 3, "conversations": conv(("human", "a"), ("gpt", "b"))}, "image", "path or a list"),
        (
            {"image": ["a.jpg", ""], "conversations": conv(("human", "a"), ("gpt", "b"))},
            "image[1]",
            "non-empty",
        ),
        ({"image": " ", "conversations": conv(("human", "a"), ("gpt", "b"))}, "image", "non-empty"),
        (
            {"video": ["v.mp4"], "conversations": conv(("human", "a"), ("gpt", "b"))},
            "video",
            "non-empty path",
        ),
    ],
)
def test_malformed_rows_name_file_row_and_field(raw, field, text):
    err = error_of(raw)
    assert err.field == field
    assert text in err.reason
    assert str(err).startswith(f"{SRC}: row 7: field {field!r}: ")


def test_sample_error_mentions_line_and_pickles():
    err = SampleError("bad", file="a.jsonl", row=4, field="image", line=5)
    assert str(err) == "a.jsonl: row 4 (line 5): field 'image': bad"
    back = pickle.loads(pickle.dumps(err))
    assert (back.file, back.row, back.field, back.line, str(back)) == ("a.jsonl", 4, "image", 5, str(err))


def test_media_paths_resolve_against_folders():
    raw = {
        "image": ["rel/a.jpg", "/abs/b.jpg", "s3://bucket/c.jpg"],
        "conversations": conv(("human", "x"), ("gpt", "y")),
    }
    s = parse(raw, image_folder="/imgs")
    assert s.images == ["/imgs/rel/a.jpg", "/abs/b.jpg", "s3://bucket/c.jpg"]
    assert parse(raw).images[0] == "rel/a.jpg"
    s = parse({"video": "v.mp4", "conversations": conv(("human", "x"), ("gpt", "y"))}, video_folder="/vids")
    assert s.video == "/vids/v.mp4"
    assert resolve_media_path("a.jpg", None) == "a.jpg"


# --------------------------------------------------------------------------------------------------------
# Property: after normalisation the placeholder count always equals the media count
# --------------------------------------------------------------------------------------------------------
_words = st.text(alphabet="ab <>\n?", max_size=12).map(lambda t: t.replace("<", "").replace(">", ""))


@st.composite
def llava_rows(draw):
    n_images = draw(st.integers(0, 3))
    n_pairs = draw(st.integers(1, 3))
    tagged = draw(st.booleans())
    users = [[draw(_words)] for _ in range(n_pairs)]  # pieces; tags go between pieces, never inside a tag
    if tagged and n_images:
        for _ in range(n_images):
            k = draw(st.integers(0, n_pairs - 1))
            users[k].insert(draw(st.integers(0, len(users[k]))), IMAGE_TOKEN)
    turns = []
    for u in users:
        turns += [("human", "".join(u)), ("gpt", draw(_words))]
    return {"image": [f"{i}.jpg" for i in range(n_images)], "conversations": conv(*turns)}, tagged


@settings(max_examples=150, deadline=None)
@given(llava_rows(), st.booleans())
def test_placeholder_count_always_matches_images(case, move):
    raw, tagged = case
    s = parse(raw, move_image_to_front=move)
    n = len(raw["image"])
    assert sum(m.content.count(IMAGE_TOKEN) for m in s.messages) == n
    assert all(IMAGE_TOKEN not in m.content for m in s.messages if m.role == "assistant")
    if n == 1 and (move or not tagged):
        assert any(m.content.startswith(IMAGE_TOKEN) for m in s.messages)
    if n > 1 and tagged:  # user placement kept verbatim
        assert [m.content for m in s.messages] == [t["value"] for t in raw["conversations"]]

"""Sequence assembly, truncation at text boundaries, skip counting per reason, strict mode, collation."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from tests.conftest import noise
from vistune.data.mixture import Mixture
from vistune.data.schema import parse_sample
from vistune.data.templates import IGNORE_INDEX, get_template
from vistune.train.dataset import (
    BadSampleError,
    Collator,
    Example,
    SequenceBuilder,
    SkipLog,
    Skipped,
    SkipSample,
    TrainDataset,
)


@pytest.fixture(scope="module")
def proc():
    from vistune import load_pretrained

    torch.manual_seed(0)
    model, processor = load_pretrained("tiny")
    return processor


def _sample(tmp_path, turns, images=(), row=0):
    paths = []
    for k, (h, w) in enumerate(images):
        p = tmp_path / f"im{row}_{k}.png"
        noise(h, w, seed=k).save(p)
        paths.append(str(p))
    raw = {"id": f"s{row}", "conversations": turns}
    if paths:
        raw["image"] = paths if len(paths) > 1 else paths[0]
    return parse_sample(raw, source=str(tmp_path / "data.jsonl"), row=row)


def _qa(q, a):
    return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]


def test_assembly_expands_images_and_masks_them(tmp_path, proc):
    s = _sample(tmp_path, _qa("<image>\nWhat is it?", "A red square."), images=[(50, 90)])
    ex = SequenceBuilder(proc, "qwen_1_5", 4096).build(s, 7)
    plan = proc.plan((50, 90))
    img = [i for i, t in enumerate(ex.input_ids) if t == proc.image_token_id]
    assert len(img) == plan.num_tokens == ex.num_visual_tokens
    assert img == list(range(img[0], img[0] + len(img)))  # one contiguous block
    assert all(ex.labels[i] == IGNORE_INDEX for i in img)
    assert ex.pixel_values.shape[0] == plan.num_views and ex.image_sizes == [(50, 90)]
    assert ex.single_view == [False] and ex.index == 7 and not ex.truncated
    sup = [t for t, lab in zip(ex.input_ids, ex.labels, strict=True) if lab != IGNORE_INDEX]
    assert proc.tokenizer.decode(sup) == "A red square.<|im_end|>"


def test_multi_image_samples_use_single_views(tmp_path, proc):
    s = _sample(tmp_path, _qa("<image> and <image>: same?", "No."), images=[(40, 40), (30, 70)])
    ex = SequenceBuilder(proc, "qwen_1_5", 4096).build(s)
    assert ex.single_view == [True, True] and ex.pixel_values.shape[0] == 2
    assert ex.num_visual_tokens == sum(proc.count_tokens(hw, True).total for hw in [(40, 40), (30, 70)])


def test_truncation_keeps_whole_exchanges_and_drops_their_images(tmp_path, proc):
    # 3 exchanges, the second one shows an image; max_length fits only the first exchange
    turns = _qa("Hello there, how are you today?", "Fine.") + _qa("<image>\nAnd this?", "A cat.")
    turns += _qa("Thanks!", "You are welcome.")
    s = parse_sample(
        {"id": "t", "image": str(tmp_path / "a.png"), "conversations": turns},
        source="x.jsonl",
        row=3,
        move_image_to_front=False,
    )
    noise(64, 64).save(tmp_path / "a.png")
    full = SequenceBuilder(proc, "qwen_1_5", 4096).build(s)
    n_img = proc.plan((64, 64)).num_tokens
    first_len = len(full.input_ids) - n_img  # generous bound: everything but the image fits
    short = SequenceBuilder(proc, "qwen_1_5", first_len).build(s)
    assert short.truncated and len(short.input_ids) <= first_len
    assert proc.image_token_id not in short.input_ids and short.pixel_values is None
    assert short.input_ids == full.input_ids[: len(short.input_ids)]  # a prefix: cut between turns
    assert proc.tokenizer.decode(short.input_ids).endswith("Fine.<|im_end|>\n")
    with pytest.raises(SkipSample) as e:
        SequenceBuilder(proc, "qwen_1_5", first_len, overflow="drop").build(s)
    assert e.value.reason == "too_long"
    # nothing fits -> counted as too long, never a cut through the image
    img_first = _sample(tmp_path, _qa("<image>\nWhat?", "x"), images=[(64, 64)], row=9)
    with pytest.raises(SkipSample) as e:
        SequenceBuilder(proc, "qwen_1_5", n_img // 2).build(img_first)
    assert e.value.reason == "too_long"


def test_no_supervised_tokens_and_video_are_skip_reasons(tmp_path, proc):
    silent = dataclasses.replace(get_template("plain"), name="silent", end_of_turn="")
    s = _sample(tmp_path, _qa("hi", ""))
    with pytest.raises(SkipSample) as e:
        SequenceBuilder(proc, silent, 4096).build(s)
    assert e.value.reason == "no_supervised_tokens"
    v = parse_sample(
        {"video": "clip.mp4", "conversations": _qa("<image>\nWhat happens?", "x")}, source="v.jsonl", row=0
    )
    with pytest.raises(SkipSample) as e:
        SequenceBuilder(proc, "qwen_1_5", 4096).build(v)
    assert e.value.reason == "video_unsupported"


def test_bad_rows_are_counted_per_reason_with_file_and_row(bad_toy_data, proc):
    mix = Mixture.from_path(bad_toy_data["instruct"], image_folder=bad_toy_data["root"])
    ds = TrainDataset(mix, SequenceBuilder(proc, "qwen_1_5", 1024))
    log = SkipLog(first_n=2, logger=None)
    items = [ds[i] for i in range(len(ds))]
    for it in items:
        if isinstance(it, Skipped):
            log.add(it)
    assert dict(log.counts) == {"image_missing": 1, "image_corrupt": 1, "malformed_row": 1, "too_long": 1}
    assert sum(isinstance(x, Example) for x in items) == 12
    assert len(log.first) == 2
    assert log.first[0]["where"] == f"{bad_toy_data['instruct']}, row 12, field 'image'"
    bad = next(x for x in items if isinstance(x, Skipped) and x.reason == "malformed_row")
    assert bad.row == 14 and bad.field == "conversations[0].from"
    # state round trip and merge (ranks / resume add up)
    other = SkipLog()
    other.load_state_dict(log.state_dict())
    other.merge(log.state_dict())
    assert other.counts["image_missing"] == 2 and other.total == 8
    # --strict fails fast on broken data with the location, but still only counts too-long samples
    strict = TrainDataset(mix, SequenceBuilder(proc, "qwen_1_5", 1024), strict=True)
    with pytest.raises(BadSampleError, match=r"image_missing.*row 12, field 'image'.*--strict"):
        strict[12]
    assert isinstance(strict[15], Skipped) and strict[15].reason == "too_long"


def test_collator_pads_right_and_batches_views(tmp_path, proc):
    b1 = SequenceBuilder(proc, "qwen_1_5", 4096)
    exs = [
        b1.build(_sample(tmp_path, _qa("<image>\nQ?", "A."), images=[(40, 80)], row=1), 1),
        b1.build(_sample(tmp_path, _qa("Just text, a longer question here?", "Yes."), row=2), 2),
        b1.build(_sample(tmp_path, _qa("<image> <image> two?", "ok"), images=[(30, 30), (60, 20)], row=3), 3),
    ]
    skip = Skipped(9, "image_missing", "gone", "f.jsonl", 9, "image")
    batch = Collator(pad_token_id=0)([exs[0], skip, exs[1], exs[2]])
    L = max(len(e.input_ids) for e in exs)
    assert batch.input_ids.shape == (3, L) and batch.skips == [skip]
    for b, e in enumerate(exs):
        n = len(e.input_ids)
        assert batch.input_ids[b, :n].tolist() == e.input_ids
        assert batch.attention_mask[b].tolist() == [1] * n + [0] * (L - n)
        assert (batch.labels[b, n:] == IGNORE_INDEX).all()
    assert batch.pixel_values.shape[0] == sum(
        e.pixel_values.shape[0] for e in exs if e.pixel_values is not None
    )
    assert batch.image_sizes.tolist() == [[40, 80], [30, 30], [60, 20]]
    assert batch.image_single_view.tolist() == [False, True, True]
    assert batch.num_loss_tokens == sum(sum(x != IGNORE_INDEX for x in e.labels[1:]) for e in exs)
    assert batch.indices == [1, 2, 3] and batch.num_samples == 3
    empty = Collator(0)([skip])
    assert empty.is_dummy and empty.skips == [skip] and empty.num_samples == 0


def test_dataset_json_error_is_a_malformed_row(tmp_path, proc):
    f = tmp_path / "d.jsonl"
    good = {"conversations": _qa("hi", "yo")}
    f.write_text(json.dumps(good) + "\n{not json\n" + json.dumps(good) + "\n")
    ds = TrainDataset(Mixture.from_path(f), SequenceBuilder(proc, "qwen_1_5", 256))
    out = [ds[i] for i in range(3)]
    assert isinstance(out[0], Example) and isinstance(out[2], Example)
    assert out[1].reason == "malformed_row" and out[1].row == 1 and "invalid JSON" in out[1].message

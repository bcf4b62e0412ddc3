"""Lazy mixtures: file indexes, sampling strategies, seeded selection, weights, paths and errors."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import pickle
import re
import time
from collections import Counter
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vistune.data.mixture as mixture_mod
from vistune.data.mixture import (
    MODALITIES,
    Mixture,
    MixtureError,
    SamplingStrategy,
    expand_braces,
    index_file,
    index_json_array,
    index_jsonl,
    modality_of_raw,
    parse_sampling_strategy,
)
from vistune.data.schema import SampleError


def row(i: int, image: str | list[str] | None = None, video: str | None = None) -> dict:
    r: dict = {
        "id": f"r{i}",
        "conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}],
    }
    if image is not None:
        r["image"] = image
    if video is not None:
        r["video"] = video
    return r


def write_json(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def ids(m: Mixture) -> list[str]:
    return [m[i].id for i in range(len(m))]


def write_yaml(path: Path, entries: list[dict]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"datasets": entries}), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------------------
# Sampling strategy parser
# --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, SamplingStrategy()),
        ("all", SamplingStrategy()),
        ("first:10", SamplingStrategy("first", count=10)),
        ("end:0", SamplingStrategy("end", count=0)),
        (" random : 25% ", SamplingStrategy("random", percent=Fraction(25))),
        ("first:12.5%", SamplingStrategy("first", percent=Fraction(25, 2))),
        ("end:100%", SamplingStrategy("end", percent=Fraction(100))),
    ],
)
def test_parse_sampling_strategy(spec, expected):
    assert parse_sampling_strategy(spec) == expected


@pytest.mark.parametrize(
    "spec", ["", "First:1", "first", "first:", "first:1.5", "first:-3", "first:101%", "top:3", "all:3", 5]
)
def test_parse_sampling_strategy_rejects(spec):
    with pytest.raises(ValueError, match="sampling_strategy"):
        parse_sampling_strategy(spec)


def test_percent_rounds_up_like_the_reference():
    assert parse_sampling_strategy("first:1%").resolve(150) == 2  # ceil(1.5)
    assert parse_sampling_strategy("first:10%").resolve(100) == 10
    assert parse_sampling_strategy("first:33.3%").resolve(1000) == 333
    assert parse_sampling_strategy("first:0%").resolve(1000) == 0
    assert parse_sampling_strategy("end:5000").resolve(10) == 10


_kinds = st.sampled_from(["first", "end", "random"])


@settings(max_examples=200, deadline=None)
@given(_kinds, st.integers(0, 10**9), st.integers(0, 10**7))
def test_count_strategy_properties(kind, k, n):
    s = parse_sampling_strategy(f"{kind}:{k}")
    assert s.resolve(n) == min(k, n)
    assert parse_sampling_strategy(str(s)) == s


@settings(max_examples=200, deadline=None)
@given(_kinds, st.integers(0, 10000), st.integers(0, 10000), st.integers(0, 10**6))
def test_percent_strategy_properties(kind, p100a, p100b, n):
    lo, hi = sorted((p100a, p100b))
    a = parse_sampling_strategy(f"{kind}:{lo / 100:.2f}%")
    b = parse_sampling_strategy(f"{kind}:{hi / 100:.2f}%")
    assert a.resolve(n) == math.ceil(Fraction(lo, 100) * n / 100)
    assert 0 <= a.resolve(n) <= b.resolve(n) <= n
    assert parse_sampling_strategy(str(b)) == b


# --------------------------------------------------------------------------------------------------------
# File indexes
# --------------------------------------------------------------------------------------------------------
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='ab"\\[]{},:\n é\t\x00'),
    lambda kids: (
        st.lists(kids, max_size=3)
        | st.dictionaries(st.text(alphabet='k"\\[]{},', max_size=4), kids, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(_json_values, max_size=6), st.sampled_from(["", " ", "\n  "]), st.integers(1, 9), st.booleans()
)
def test_json_array_index_matches_json_loads(tmp_path_factory, rows, ws, chunk, ascii_only):
    # tiny chunks exercise the string/escape/depth carry between reads
    path = tmp_path_factory.mktemp("j") / "rows.json"
    text = (
        ws + "[" + ws + ("," + ws).join(json.dumps(r, ensure_ascii=ascii_only) for r in rows) + ws + "]" + ws
    )
    path.write_text(text, encoding="utf-8")
    old = mixture_mod._CHUNK
    mixture_mod._CHUNK = chunk
    try:
        index = index_json_array(path)
    finally:
        mixture_mod._CHUNK = old
    assert len(index) == len(rows)
    assert [index.decode(i) for i in range(len(index))] == rows


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"a": 1}', "expected a JSON array"),
        ('[{"a": "b}]', "unterminated string"),
        ('[{"a": 1}', "not closed"),
        ('[{"a": 1}]]', "unbalanced closing bracket"),
        ('[{"a": 1}] [2]', "unexpected content after"),
        ('[{"a": 1}] x', "unexpected content after"),
        ('[{"a": 1},]', "empty element 1"),
        ("[1,,2]", "empty element 1"),
        ('[{"a": 1}}', "closed by '}'"),
    ],
)
def test_broken_json_array_structure(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text("\n" + text)
    with pytest.raises(MixtureError, match=message) as info:
        index_json_array(path)
    assert str(path) in str(info.value) and "line" in str(info.value)


def test_empty_arrays_and_files(tmp_path):
    for text in ["[]", " [ \n ] ", ""]:
        p = tmp_path / "e.json"
        p.write_text(text)
        assert len(index_file(p)) == 0
    p = tmp_path / "e.jsonl"
    p.write_text("\n\n")
    assert len(index_jsonl(p)) == 0


def test_jsonl_blank_lines_crlf_bom_and_missing_final_newline(tmp_path):
    p = tmp_path / "rows.jsonl"
    lines = [json.dumps(row(0)), "", "   ", json.dumps(row(1)) + "\r", json.dumps(row(2))]
    p.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode())
    index = index_jsonl(p)
    assert len(index) == 3
    assert [index.row_number(i) for i in range(3)] == [0, 3, 4]  # 0-based line indices
    assert [index.decode(i)["id"] for i in range(3)] == ["r0", "r1", "r2"]
    assert index_file(p).kind == "jsonl"


def test_json_file_holding_lines_is_detected_by_content(tmp_path):
    p = write_jsonl(tmp_path / "looks_like.json", [row(0), row(1)])
    assert index_file(p).kind == "jsonl"
    p2 = tmp_path / "weird.json"
    p2.write_text('"just a string"')
    with pytest.raises(MixtureError, match="expected a JSON array of rows"):
        index_file(p2)
    with pytest.raises(MixtureError, match="data file not found"):
        index_file(tmp_path / "missing.json")


def test_modality_scan_of_raw_rows():
    assert modality_of_raw(json.dumps(row(0, image="a.jpg")).encode()) == "image"
    assert modality_of_raw(json.dumps(row(0, image=["a.jpg", "b.jpg"])).encode()) == "image"
    assert modality_of_raw(json.dumps(row(0, video="v.mp4")).encode()) == "video"
    assert modality_of_raw(json.dumps(row(0, image=[])).encode()) == "text"
    assert modality_of_raw(b'{"image" : null, "conversations": []}') == "text"
    assert modality_of_raw(b'{"image": "", "conversations": []}') == "text"
    tricky = {"conversations": [{"from": "human", "value": 'the key "image": "x.jpg" in text'}]}
    assert modality_of_raw(json.dumps(tricky).encode()) == "text"  # quotes inside strings are escaped


# --------------------------------------------------------------------------------------------------------
# Mixtures
# --------------------------------------------------------------------------------------------------------
@pytest.fixture
def ten(tmp_path) -> Path:
    return write_json(tmp_path / "ten.json", [row(i) for i in range(10)])


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ("all", [f"r{i}" for i in range(10)]),
        ("first:3", ["r0", "r1", "r2"]),
        ("end:3", ["r7", "r8", "r9"]),
        ("first:25%", ["r0", "r1", "r2"]),  # ceil(2.5)
        ("end:10%", ["r9"]),
        ("first:50", [f"r{i}" for i in range(10)]),
        ("end:0", []),
    ],
)
def test_yaml_strategies(tmp_path, ten, strategy, expected):
    y = write_yaml(tmp_path / "mix.yaml", [{"json_path": "ten.json", "sampling_strategy": strategy}])
    m = Mixture.from_path(y)
    assert ids(m) == expected
    assert m.sources[0].rows == 10 and m.sources[0].selected == len(expected)


def test_random_strategy_is_seeded_and_identical_across_ranks(tmp_path, ten):
    y = write_yaml(tmp_path / "mix.yaml", [{"json_path": "ten.json", "sampling_strategy": "random:40%"}])
    rank0, rank1 = Mixture.from_path(y, seed=3), Mixture.from_path(y, seed=3)
    assert ids(rank0) == ids(rank1)
    assert len(rank0) == 4 and len(set(ids(rank0))) == 4
    picked = [int(i[1:]) for i in ids(rank0)]
    assert picked == sorted(picked)  # file order kept
    draws = {tuple(ids(Mixture.from_path(y, seed=s))) for s in range(8)}
    assert len(draws) > 1  # the seed matters


def test_weights_repeat_rows_deterministically(tmp_path, ten):
    entries = [
        {"json_path": "ten.json", "sampling_strategy": "first:4", "weight": 2},
        {"json_path": "ten.json", "sampling_strategy": "end:4", "weight": 1.5},
        {"json_path": "ten.json", "sampling_strategy": "all", "weight": 0.25},
        {"json_path": "ten.json", "weight": 0},
    ]
    y = write_yaml(tmp_path / "mix.yaml", entries)
    m = Mixture.from_path(y, seed=1)
    assert [s.selected for s in m.sources] == [8, 6, 3, 0]  # round(w * k), half up: 2.5 -> 3
    got = ids(m)
    assert Counter(got[:8]) == {"r0": 2, "r1": 2, "r2": 2, "r3": 2}
    second = Counter(got[8:14])
    assert set(second) == {"r6", "r7", "r8", "r9"} and sorted(second.values()) == [1, 1, 2, 2]
    assert len(set(got[14:17])) == 3
    assert got == ids(Mixture.from_path(y, seed=1))


def test_bad_weight_and_yaml_entries(tmp_path, ten):
    cases = [
        ({"json_path": "ten.json", "weight": -1}, "datasets[0].weight"),
        ({"json_path": "ten.json", "weight": "2"}, "datasets[0].weight"),
        ({"json_path": "ten.json", "sampling_strategy": "first:x"}, "datasets[0].sampling_strategy"),
        ({"json_path": "ten.json", "sample": "all"}, "unknown key"),
        ({"sampling_strategy": "all"}, "datasets[0].json_path"),
        ({"json_path": "nope.json"}, "data file not found"),
        ({"json_path": "ten.json", "image_folder": 3}, "datasets[0].image_folder"),
    ]
    for entry, message in cases:
        y = write_yaml(tmp_path / "bad.yaml", [entry])
        with pytest.raises(MixtureError, match=re.escape(message)):
            Mixture.from_path(y)
    y = tmp_path / "top.yaml"
    y.write_text("datasets: []\n")
    with pytest.raises(MixtureError, match="non-empty list"):
        Mixture.from_path(y)
    y.write_text("data:\n  - json_path: ten.json\n")
    with pytest.raises(MixtureError, match="top-level 'datasets:'"):
        Mixture.from_path(y)
    with pytest.raises(MixtureError, match="mixture file not found"):
        Mixture.from_path(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="seed"):
        Mixture.from_path(ten, seed=-1)


def test_brace_form_and_plain_paths(tmp_path):
    write_json(tmp_path / "a.json", [row(0), row(1)])
    write_jsonl(tmp_path / "b.jsonl", [row(2)])
    assert expand_braces("/d/{a,b}.json") == ["/d/a.json", "/d/b.json"]
    assert expand_braces("/{x,y}/{1,2}") == ["/x/1", "/x/2", "/y/1", "/y/2"]
    with pytest.raises(MixtureError, match="unbalanced braces"):
        expand_braces("/d/{a,b.json")
    m = Mixture.from_path(f"{tmp_path}/{{a.json,b.jsonl}}")
    assert ids(m) == ["r0", "r1", "r2"]
    assert [s.name for s in m.sources] == ["a.json", "b.jsonl"]
    assert ids(Mixture.from_path(tmp_path / "b.jsonl")) == ["r2"]


def test_relative_paths_resolve_against_the_yaml_folder(tmp_path):
    write_json(tmp_path / "data" / "a.json", [row(0, image="cats/1.jpg")])
    write_json(tmp_path / "data" / "b.json", [row(1, image="dogs/2.jpg"), row(2, image="/abs/3.jpg")])
    (tmp_path / "mixes").mkdir()
    y = write_yaml(
        tmp_path / "mixes" / "mix.yaml",
        [
            {"json_path": "../data/a.json", "image_folder": "../images"},
            {"json_path": "../data/b.json"},
        ],
    )
    m = Mixture.from_path(y, image_folder="/default/imgs")
    assert m[0].images == [str(tmp_path / "mixes" / "../images" / "cats/1.jpg")]
    assert m[1].images == ["/default/imgs/dogs/2.jpg"]  # no per-source folder: the argument is the default
    assert m[2].images == ["/abs/3.jpg"]
    assert m.sources[0].image_folder == str(tmp_path / "mixes" / "../images")
    assert Mixture.from_path(y)[1].images == ["dogs/2.jpg"]  # no folder anywhere: kept as written


def test_malformed_rows_name_file_row_and_field(tmp_path):
    bad = row(1)
    bad["conversations"][1]["from"] = "bot"
    p = write_jsonl(tmp_path / "rows.jsonl", [row(0), bad])
    with p.open("a") as f:
        f.write("\n{not json}\n")
    m = Mixture.from_path(p)
    assert len(m) == 3
    with pytest.raises(SampleError) as info:
        m[1]
    err = info.value
    assert (err.file, err.row, err.line, err.field) == (str(p), 1, 2, "conversations[1].from")
    assert m.source_of(1) == (str(p), 1)
    with pytest.raises(SampleError) as info:
        m[2]
    assert (info.value.row, info.value.line, info.value.field) == (3, 4, "<row>")
    assert "invalid JSON" in str(info.value)
    pj = write_json(tmp_path / "rows.json", [row(0), {"id": 1, "image": 7, "conversations": []}])
    with pytest.raises(SampleError) as info:
        Mixture.from_path(pj)[1]
    assert (info.value.file, info.value.row, info.value.line, info.value.field) == (str(pj), 1, None, "image")


def test_indexing_rules(ten):
    m = Mixture.from_path(ten)
    assert m[-1].id == "r9"
    with pytest.raises(IndexError):
        m[10]
    with pytest.raises(TypeError):
        m["0"]  # type: ignore[index]
    assert m.raw(3) == row(3)
    assert "10 rows from 1 source" in repr(m)


def test_length_hints_and_modalities(tmp_path):
    rows = [row(0, image="a.jpg"), row(1), row(2, video="v.mp4"), row(3, image=["a", "b"]), row(4, image=[])]
    p = write_jsonl(tmp_path / "mixed.jsonl", rows)
    y = write_yaml(
        tmp_path / "mix.yaml",
        [{"json_path": "mixed.jsonl"}, {"json_path": "mixed.jsonl", "sampling_strategy": "end:2"}],
    )
    m = Mixture.from_path(y)
    raw_lengths = [len(json.dumps(r)) for r in rows]
    assert [m.length_hint(i) for i in range(len(m))] == raw_lengths + raw_lengths[3:]
    assert m.length_hints().tolist() == raw_lengths + raw_lengths[3:]
    expected = ["image", "text", "video", "image", "text", "image", "text"]
    assert [m.modality(i) for i in range(len(m))] == expected
    assert [MODALITIES[c] for c in m.modalities()] == expected
    assert [m.modality(i) for i in range(len(m))] == expected  # cached path agrees
    assert [m[i].modality for i in range(len(m))] == expected
    assert p.exists()


def test_modalities_across_scan_chunks(tmp_path, monkeypatch):
    rows = [
        row(i, image="a.jpg" if i % 3 == 0 else None, video="v.mp4" if i % 3 == 1 else None)
        for i in range(50)
    ]
    p = write_json(tmp_path / "rows.json", rows)
    monkeypatch.setattr(mixture_mod, "_CHUNK", 100)  # about one row per read
    m = Mixture.from_path(p)
    assert [MODALITIES[c] for c in m.modalities()] == [Mixture.from_path(p)[i].modality for i in range(50)]


def _read_ids(args):
    m, idx = args
    return [m[i].id for i in idx]


def test_mixture_pickles_and_reads_in_forked_workers(ten):
    m = Mixture.from_path(ten)
    m[0]  # open the file descriptor in the parent first
    clone = pickle.loads(pickle.dumps(m))
    assert ids(clone) == ids(m)
    ctx = mp.get_context("fork")
    with ctx.Pool(2) as pool:
        got = pool.map(_read_ids, [(m, range(0, 5)), (m, range(5, 10))])
    assert got[0] + got[1] == ids(m)


def test_large_jsonl_is_indexed_lazily_and_fast(tmp_path, monkeypatch):
    n = 200_000
    line = '{"id": "%d", "image": "coco/%d.jpg", "conversations": [{"from": "human", "value": "<image>\\nWhat?"}, {"from": "gpt", "value": "Thing %d."}]}\n'
    p = tmp_path / "big.jsonl"
    p.write_text("".join(line % (i, i, i) for i in range(n)))

    def no_parsing(*args, **kwargs):
        raise AssertionError("rows must not be decoded while indexing")

    monkeypatch.setattr(mixture_mod.json, "loads", no_parsing)
    t0 = time.perf_counter()
    m = Mixture.from_path(p)
    elapsed = time.perf_counter() - t0
    monkeypatch.undo()
    assert len(m) == n
    assert elapsed < 2.0, f"indexing {n} rows took {elapsed:.2f}s"
    assert m[n - 1].id == str(n - 1) and m[12345].messages[1].content == "Thing 12345."
    assert isinstance(m._files[0].bounds, np.ndarray) and m._files[0].bounds.dtype == np.int64


def test_json_array_is_indexed_without_decoding_rows(tmp_path, monkeypatch):
    n = 50_000
    item = '{"id": "%d", "conversations": [{"from": "human", "value": "Say \\"hi\\" [%d] {x},"}, {"from": "gpt", "value": "hi\\\\"}]}'
    p = tmp_path / "big.json"
    p.write_text("[\n" + ",\n".join(item % (i, i) for i in range(n)) + "\n]\n")

    def no_parsing(*args, **kwargs):
        raise AssertionError("rows must not be decoded while indexing")

    monkeypatch.setattr(mixture_mod.json, "loads", no_parsing)
    monkeypatch.setattr(mixture_mod.json, "load", no_parsing)
    t0 = time.perf_counter()
    m = Mixture.from_path(p)
    elapsed = time.perf_counter() - t0
    monkeypatch.undo()
    assert len(m) == n and elapsed < 2.0, f"indexing {n} rows took {elapsed:.2f}s"
    s = m[n - 7]
    assert s.id == str(n - 7) and s.messages[0].content == f'Say "hi" [{n - 7}] {{x}},'
    assert s.messages[1].content == "hi\\"

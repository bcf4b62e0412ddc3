"""Tests for the LLM-judged tasks (LLaVA-W, Image-DC, Video-DC, MathVista extraction) against a loopback judge."""

from __future__ import annotations

import base64
import io
import json
import math
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from vistune.eval.judge import JudgeClient, JudgeConfigError, JudgeFailedError, prompt_hash
from vistune.eval.task import TASKS, Doc
from vistune.eval.tasks.common import DatasetFormatError
from vistune.eval.tasks.judged import (
    Dc100En,
    Dc200Cn,
    JudgeParseError,
    LlavaInTheWild,
    VideoDetailCaption,
    frame_indices,
    mathvista_extraction_prompt,
    mathvista_judge_extract,
    parse_detail_score,
    parse_final_score,
    parse_llava_score_pair,
)

from .test_judge import FakeJudgeServer, Reply, completion, error, user_text


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("VISTUNE_JUDGE_MODEL", "VISTUNE_JUDGE_CACHE_DIR", "OPENAI_API_KEY", "VISTUNE_JUDGE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name in ("VISTUNE_DATA_LLAVA_IN_THE_WILD", "VISTUNE_DATA_DC100_EN", "VISTUNE_DATA_DC200_CN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("VISTUNE_DATA_VIDEO_DC499", raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")


def png_bytes(color: tuple[int, int, int], size: tuple[int, int] = (6, 8)) -> bytes:
    """PNG of a solid colour; ``size`` is (height, width)."""
    buf = io.BytesIO()
    Image.new("RGB", (size[1], size[0]), color).save(buf, format="PNG")
    return buf.getvalue()


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def client_for(server: FakeJudgeServer, **kw: Any) -> JudgeClient:
    return JudgeClient(server.url, model=kw.pop("model", None), backoff_s=0.0, max_attempts=2, **kw)


# ------------------------------------------------------------------------------------------ LLaVA-in-the-Wild

LLAVA_ROWS = [
    ("1", "conv", "ANS-A", "6 8\nAssistant 2 is better."),
    ("2", "detail", "ANS-B", "8 6\nreason"),
    ("3", "complex", "ANS-C", "10 5"),
    ("4", "conv", "ANS-D", "Scores: 8 9\nno"),  # unparseable first line
    ("5", "detail", "ANS-E", None),  # judge keeps failing with HTTP 500
    ("6", "conv", "ANS-F", "4,4\nsame"),
]


def llava_dataset(root: Path) -> Path:
    folder = root / "llava_in_the_wild"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "pic.png").write_bytes(png_bytes((0, 255, 0)))
    rows = []
    for qid, category, _, _ in LLAVA_ROWS:
        image: Any = "images/pic.png"
        if qid == "2":
            image = "data:image/png;base64," + base64.b64encode(png_bytes((255, 0, 0))).decode()
        elif qid == "3":
            image = {"bytes": base64.b64encode(png_bytes((0, 0, 255))).decode(), "path": None}
        rows.append(
            {
                "question_id": int(qid),
                "question": f"What is in picture {qid}?",
                "image": image,
                "caption": [f"A caption {qid}.", "Second sentence."] if qid == "1" else f"Caption {qid}.",
                "gpt_answer": f"Reference answer {qid}.",
                "category": category,
                "image_id": f"img{qid}",
            }
        )
    write_jsonl(folder / "train.jsonl", rows)
    write_jsonl(folder / "other" / "validation.jsonl", [{"question_id": 99}])  # another split: ignored
    (folder / "dataset_infos.json").write_text('{"default": {}}')  # hub metadata: ignored
    return root


def llava_judge_reply(body: dict[str, Any], n: int) -> Reply:
    text = user_text(body)
    answer = text.split("[Assistant 2]\n", 1)[1].split("\n\n", 1)[0]
    for _, _, ans, reply in LLAVA_ROWS:
        if answer == ans:
            return completion(reply, model="gpt-4-0613-served") if reply is not None else error(500)
    return error(400, text=f"unexpected answer {answer!r}")


def test_llava_w_loads_prompts_and_generation(tmp_path: Path) -> None:
    task = LlavaInTheWild()
    docs = list(task.load(llava_dataset(tmp_path)))
    assert [d.doc_id for d in docs] == [r[0] for r in LLAVA_ROWS]
    assert docs[0].data["caption"] == "A caption 1.\nSecond sentence."
    assert docs[0].target == "Reference answer 1."
    colours = [d.load_images()[0].getpixel((0, 0)) for d in docs[:3]]
    assert colours == [(0, 255, 0), (255, 0, 0), (0, 0, 255)]
    assert docs[0].load_images()[0].size == (8, 6)  # PIL size is (width, height)
    assert task.doc_to_messages(docs[0]) == [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in picture 1?"}]}
    ]
    assert task.generation.max_new_tokens == 32768 and task.generation.temperature == 0.0
    assert task.judged and TASKS["llava_in_the_wild"] is LlavaInTheWild
    assert len(list(task.load(tmp_path, limit=2))) == 2


def test_llava_w_scores_excludes_failed_judgements_and_counts_them(tmp_path: Path) -> None:
    task = LlavaInTheWild()
    docs = list(task.load(llava_dataset(tmp_path)))
    with FakeJudgeServer(respond=llava_judge_reply) as server:
        task.judge = client_for(server)
        records = task.score_many(docs, ["  " + r[2] + "\n" for r in LLAVA_ROWS])
        metrics = task.aggregate(records)

    # prompt layout, rule and sampling parameters as sent over the wire
    first = next(b for b in server.bodies if "ANS-A" in user_text(b))
    assert first["model"] == "gpt-4-0613" and first["temperature"] == 0.2 and first["max_tokens"] == 1024
    assert first["messages"][0] == {
        "role": "system",
        "content": "You are a helpful and precise assistant for checking the quality of the answer.",
    }
    content = first["messages"][1]["content"]
    head, rule = content.split("[System]\n", 1)
    assert head == (
        "[Context]\nA caption 1.\nSecond sentence.\n\n[Question]\nWhat is in picture 1?\n\n"
        "[Assistant 1]\nReference answer 1.\n\n[End of Assistant 1]\n\n"
        "[Assistant 2]\nANS-A\n\n[End of Assistant 2]\n\n"
    )
    assert rule.startswith("We would like to request your feedback on the performance of two AI assistants")
    assert "represented with a few sentences describing the image. \nPlease rate" in rule
    assert "The two scores are separated by a space.\nIn the subsequent line" in rule
    assert rule.endswith("does not affect your judgment.\n\n")

    by_id = {r["doc_id"]: r for r in records}
    assert by_id["1"]["scores"] == [6.0, 8.0] and by_id["1"]["judge_ok"]
    assert by_id["1"]["prediction"] == "ANS-A"  # harness-style strip
    assert by_id["6"]["scores"] == [4.0, 4.0]  # "4,4" → two tokens after comma replacement
    assert by_id["4"]["scores"] is None and not by_id["4"]["judge_ok"]
    assert "unparseable judge reply" in by_id["4"]["judge_failure"]
    assert by_id["4"]["judge_review"].startswith("Scores: 8 9")
    assert by_id["5"]["scores"] is None and "HTTP 500" in by_id["5"]["judge_failure"]
    for r in records:
        assert r["judge_model"] == "gpt-4-0613"
        assert len(r["judge_prompt_hash"]) == 64
    assert by_id["1"]["judge_response_model"] == "gpt-4-0613-served"
    assert by_id["1"]["judge_prompt_hash"] == prompt_hash(first["messages"])
    json.dumps(records)  # records are JSON-serialisable

    # all: ref (6+8+10+4)/4 = 7.0, model (8+6+5+4)/4 = 5.75 → 82.1; failed pairs are excluded, not [-1,-1]
    assert metrics["gpt_eval_llava_all"] == 82.1
    assert metrics["gpt_eval_llava_conv"] == 120.0
    assert metrics["gpt_eval_llava_detail"] == 75.0
    assert metrics["gpt_eval_llava_complex"] == 50.0
    assert metrics["n_judge_failed"] == 2 and metrics["n_scored"] == 4
    assert metrics["n_judge_failed_conv"] == 1 and metrics["n_judge_failed_detail"] == 1
    assert metrics["n_judge_failed_complex"] == 0


def test_score_many_in_chunks_keeps_order(tmp_path: Path) -> None:
    task = LlavaInTheWild()
    task.score_chunk_size = 2
    docs = list(task.load(llava_dataset(tmp_path)))
    with FakeJudgeServer(respond=llava_judge_reply) as server:
        task.judge = client_for(server)
        records = task.score_many(docs, [r[2] for r in LLAVA_ROWS])
    assert [r["doc_id"] for r in records] == [r[0] for r in LLAVA_ROWS]
    assert [r["prediction"] for r in records] == [r[2] for r in LLAVA_ROWS]
    assert task.aggregate(records)["gpt_eval_llava_all"] == 82.1
    with pytest.raises(ValueError, match="2 docs but 1 predictions"):
        task.score_many(docs[:2], ["x"])
    with pytest.raises(TypeError, match="prediction must be str"):
        task.score_many(docs[:1], [None])  # type: ignore[list-item]


def test_llava_w_rounds_category_means_before_the_ratio() -> None:
    task = LlavaInTheWild()
    records = [
        {"category": "conv", "judge_ok": True, "scores": [7.0, 8.0]},
        {"category": "conv", "judge_ok": True, "scores": [8.0, 8.0]},
        {"category": "conv", "judge_ok": True, "scores": [8.0, 9.0]},
    ]
    # means 7.6667 → 7.667 and 8.3333 → 8.333; 100 * 8.333 / 7.667 = 108.686… → 108.7
    assert task.aggregate(records)["gpt_eval_llava_conv"] == 108.7
    all_failed = task.aggregate([{"category": "detail", "judge_ok": False, "scores": None}])
    assert math.isnan(all_failed["gpt_eval_llava_all"]) and all_failed["n_judge_failed"] == 1
    assert "gpt_eval_llava_conv" not in all_failed


def test_judge_configured_model_overrides_task_default_and_describe(tmp_path: Path) -> None:
    task = LlavaInTheWild()
    docs = list(task.load(llava_dataset(tmp_path), limit=1))
    base = task.describe()
    assert base["judge_default_model"] == "gpt-4-0613" and base["judged"]
    assert base["judge_template_hash"] == LlavaInTheWild().judge_template_hash()
    assert base["judge_template_hash"] != Dc100En().judge_template_hash()
    with FakeJudgeServer(respond=llava_judge_reply) as server:
        task.judge = client_for(server, model="local-judge")
        record = task.score(docs[0], "ANS-A")
    assert server.bodies[0]["model"] == "local-judge" and record["judge_model"] == "local-judge"
    assert task.describe()["judge_model"] == "local-judge"


def test_scoring_without_a_judge_is_a_clear_error(tmp_path: Path) -> None:
    task = LlavaInTheWild()
    doc = next(task.load(llava_dataset(tmp_path)))
    with pytest.raises(JudgeConfigError, match="task.judge = JudgeClient"):
        task.score(doc, "x")


def test_judge_results_are_cached_across_runs(tmp_path: Path) -> None:
    task = LlavaInTheWild()
    docs = list(task.load(llava_dataset(tmp_path), limit=3))
    preds = [r[2] for r in LLAVA_ROWS[:3]]
    with FakeJudgeServer(respond=llava_judge_reply) as server:
        task.judge = client_for(server, cache_dir=tmp_path / "cache")
        first = task.aggregate(task.score_many(docs, preds))
        task.judge = client_for(server, cache_dir=tmp_path / "cache")
        records = task.score_many(docs, preds)
        assert server.n_requests == 3
    assert all(r["judge_cached"] for r in records)
    assert task.aggregate(records) == first


# ------------------------------------------------------------------------------------------ dataset loading


def _llava_row(**over: Any) -> dict[str, Any]:
    row = {
        "question_id": 1,
        "question": "q",
        "image": "data:image/png;base64," + base64.b64encode(png_bytes((1, 2, 3))).decode(),
        "caption": "c",
        "gpt_answer": "a",
        "category": "conv",
    }
    row.update(over)
    return {k: v for k, v in row.items() if v is not ...}


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([_llava_row(question=...)], r"train\.jsonl: row 0: field 'question': missing"),
        ([_llava_row(gpt_answer=None)], r"train\.jsonl: row 0: field 'gpt_answer': is null"),
        ([_llava_row(question=[5])], r"field 'question': expected str"),
        ([_llava_row(category="other")], r"field 'category': must be one of conv, detail, complex"),
        ([_llava_row(caption=["a", None])], r"field 'caption': item 1 should be a string"),
        ([_llava_row(), _llava_row()], r"train\.jsonl: row 1: document id '1' repeats"),
        ([_llava_row(image="missing.png")], r"row 0: field 'image': image file 'missing.png' not found"),
        ([_llava_row(image={"path": None})], r"neither bytes nor path"),
        ([_llava_row(question_id=True)], r"field 'question_id': expected a string, got bool"),
    ],
)
def test_malformed_rows_name_file_row_and_field(
    tmp_path: Path, rows: list[dict[str, Any]], message: str
) -> None:
    write_jsonl(tmp_path / "llava_in_the_wild" / "train.jsonl", rows)
    with pytest.raises(DatasetFormatError, match=message):
        list(LlavaInTheWild().load(tmp_path))


def test_invalid_json_line_and_undecodable_images(tmp_path: Path) -> None:
    folder = tmp_path / "llava_in_the_wild"
    folder.mkdir()
    (folder / "train.jsonl").write_text(json.dumps(_llava_row()) + "\n{oops\n")
    with pytest.raises(DatasetFormatError, match=r"train\.jsonl: line 2: invalid JSON"):
        list(LlavaInTheWild().load(tmp_path))
    bad_images = [
        {"bytes": base64.b64encode(b"not an image").decode()},
        "data:image/png;base64,@@@",
        12,
    ]
    write_jsonl(
        folder / "train.jsonl", [_llava_row(question_id=i, image=im) for i, im in enumerate(bad_images)]
    )
    docs = list(LlavaInTheWild().load(tmp_path))
    messages = ["cannot decode image", "malformed data URI", "unsupported image value"]
    for i, (doc, message) in enumerate(zip(docs, messages, strict=True)):
        with pytest.raises(DatasetFormatError, match=rf"train\.jsonl: row {i}: field 'image': {message}"):
            doc.load_images()


def test_dataset_location_hub_name_env_and_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(
        FileNotFoundError, match=r"task 'dc200_cn': no files for split 'test' of lmms-lab/DC200_CN"
    ):
        list(Dc200Cn().load(tmp_path))
    folder = tmp_path / "hub" / "lmms-lab" / "DC200_CN"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "test-00000-of-00001.json").write_text(
        json.dumps(
            [{"question_id": "a", "question": "描述这张图片。", "image": {"bytes": None, "path": "x.png"}}]
        )
    )
    (folder / "x.png").write_bytes(png_bytes((9, 9, 9)))
    docs = list(Dc200Cn().load(tmp_path / "hub"))  # <data_dir>/<owner>/<name> as published
    assert [d.doc_id for d in docs] == ["a"] and docs[0].data["question"] == "描述这张图片。"
    assert docs[0].load_images()[0].getpixel((0, 0)) == (9, 9, 9)
    monkeypatch.setenv("VISTUNE_DATA_DC200_CN", str(folder))
    assert Dc200Cn().data_env == "VISTUNE_DATA_DC200_CN"
    assert [d.doc_id for d in Dc200Cn().load(None)] == ["a"]


def test_parquet_without_pyarrow_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "dc100_en" / "data"
    folder.mkdir(parents=True)
    (folder / "test-00000-of-00001.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(DatasetFormatError, match="pyarrow is not installed"):
        list(Dc100En().load(tmp_path))


def test_parquet_with_embedded_images(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    folder = tmp_path / "dc100_en" / "data"
    folder.mkdir(parents=True)
    table = pa.table(
        {
            "question_id": ["p1", "p2"],
            "question": ["Describe.", "Describe more."],
            "image": [
                {"bytes": png_bytes((10, 20, 30)), "path": None},
                {"bytes": png_bytes((1, 1, 1)), "path": None},
            ],
        }
    )
    pq.write_table(table, folder / "test-00000-of-00001.parquet")
    docs = list(Dc100En().load(tmp_path))
    assert [d.doc_id for d in docs] == ["p1", "p2"]
    assert docs[0].load_images()[0].getpixel((0, 0)) == (10, 20, 30)


# ------------------------------------------------------------------------------------------ Image-DC


def dc_judge_reply(body: dict[str, Any], n: int) -> Reply:
    caption = user_text(body).split("Text Caption: ", 1)[1].split("\n", 1)[0]
    replies = {
        "cap-good": "Detailed and accurate.\nFinal Score: 85",
        "cap-ok": "Some errors.\nFinal Score: 60 (out of 100)",
        "cap-noscore": "I would give it a seventy.",
        "cap-big": "Final Score: 150",
    }
    return completion(replies[caption])


def test_image_dc_rubric_image_and_scores(tmp_path: Path) -> None:
    folder = tmp_path / "dc100_en"
    colours = [(200, 10, 10), (10, 200, 10), (10, 10, 200), (50, 50, 50)]
    rows = [
        {
            "question_id": i,
            "question": "Describe this image in detail.",
            "image": {"bytes": base64.b64encode(png_bytes(c)).decode()},
        }
        for i, c in enumerate(colours)
    ]
    folder.mkdir()
    (folder / "test.json").write_text(json.dumps(rows))
    task = Dc100En()
    docs = list(task.load(tmp_path))
    assert task.doc_to_messages(docs[0])[0]["content"][1]["text"] == "Describe this image in detail."
    with FakeJudgeServer(respond=dc_judge_reply) as server:
        task.judge = client_for(server)
        records = task.score_many(docs, ["cap-good", "cap-ok", "cap-noscore", "cap-big"])
    body = next(b for b in server.bodies if "cap-good" in user_text(b))
    assert (
        body["model"] == "gpt-4-vision-preview" and body["temperature"] == 0.0 and body["max_tokens"] == 1024
    )
    (message,) = body["messages"]
    text_part, image_part = message["content"]
    assert text_part["text"].startswith("Text Caption: cap-good\nFrom 0 to 100, how much do you rate")
    assert 'the rate number at last after "Final Score:".' in text_part["text"]
    url = image_part["image_url"]["url"]
    assert image_part["type"] == "image_url" and url.startswith("data:image/png;base64,")
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.getpixel((0, 0)) == (200, 10, 10) and sent.size == (8, 6)

    assert [r["score"] for r in records] == [85, 60, None, None]
    assert [r["judge_ok"] for r in records] == [True, True, False, False]
    assert "Final Score" in records[2]["judge_failure"] and "outside 0..100" in records[3]["judge_failure"]
    metrics = task.aggregate(records)
    assert metrics == {"gpt_eval_avg_score": 72.5, "n_scored": 2.0, "n_judge_failed": 2.0}
    assert task.avg_scale == 1.0 and task.split == "EN-100" and Dc200Cn().split == "CN-200"
    assert TASKS["dc100_en"] is Dc100En and TASKS["dc200_cn"] is Dc200Cn


# ------------------------------------------------------------------------------------------ Video-DC


def write_video(path: Path, n_frames: int, fmt: str | None = None) -> None:
    """Tiny video whose frame k is solid grey 20·k (so the sampled indices can be read back)."""
    import av
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w", format=fmt) as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for k in range(n_frames):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 20 * k, dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def video_dataset(root: Path) -> Path:
    folder = root / "video_dc499"
    rows = [
        {
            "video_name": "v_mp4",
            "question": "Please provide a detailed description of the video.",
            "answer": "A man.",
        },
        {"video_name": "v_mkv", "question": "Describe.", "answer": "A dog."},
    ]
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "test.json").write_text(json.dumps(rows))
    write_video(folder / "Test_Videos" / "v_mp4.mp4", 10)
    write_video(folder / "Test_Videos" / "v_mkv.mkv", 10, fmt="matroska")
    return root


def test_video_dc_samples_uniform_frames_lazily(tmp_path: Path) -> None:
    pytest.importorskip("av")
    task = VideoDetailCaption(num_frames=4)
    docs = list(task.load(video_dataset(tmp_path)))
    assert [d.doc_id for d in docs] == ["v_mp4", "v_mkv"]
    assert task.split == "4 frames" and len(docs[0].images) == 4
    for doc in docs:  # mp4 reports its frame count; matroska does not, so frames are counted
        frames = doc.load_images()
        greys = [float(np.asarray(f.convert("L")).mean()) for f in frames]
        for grey, index in zip(greys, [0, 3, 6, 9], strict=True):
            assert abs(grey - 20 * index) < 12, (doc.doc_id, greys)
        assert frames[0].mode == "RGB" and frames[0].size == (32, 32)
    assert task.doc_to_messages(docs[0]) == [
        {
            "role": "user",
            "content": [
                {"type": "video"},
                {"type": "text", "text": "Please provide a detailed description of the video."},
            ],
        }
    ]
    clone = pickle.loads(pickle.dumps(docs[0].images))  # picklable for data-loader workers
    assert np.array_equal(np.asarray(clone[1]()), np.asarray(docs[0].images[1]()))
    assert task.generation.do_sample and task.generation.temperature == 0.2
    assert VideoDetailCaption().num_frames == 32 and TASKS["video_dc499"] is VideoDetailCaption


def test_video_dc_judge_prompt_parsing_and_score_cast(tmp_path: Path) -> None:
    pytest.importorskip("av")
    replies = {"P1": "{'score': 4.8}", "P2": "{'score': 3}", "P3": "score: 4", "P4": "{'score': 7}"}
    docs = [
        Doc(doc_id=k, images=[], target=f"truth {k}", data={"question": "Describe the video."})
        for k in replies
    ]

    def respond(body: dict[str, Any], n: int) -> Reply:
        return completion(replies[user_text(body).split("Predicted Answer: ", 1)[1].split("\n", 1)[0]])

    with FakeJudgeServer(respond=respond) as server:
        task = VideoDetailCaption()
        task.judge = client_for(server)
        records = task.score_many(docs, list(replies))
        task_int = VideoDetailCaption(score_cast="int")
        task_int.judge = client_for(server)
        records_int = task_int.score_many(docs, list(replies))
    body = next(b for b in server.bodies if "P1" in user_text(b))
    assert body["model"] == "gpt-3.5-turbo-0613" and body["temperature"] == 0 and body["max_tokens"] == 64
    system, user = body["messages"]
    assert system["role"] == "system" and "evaluating the detail orientation" in system["content"]
    assert "the task:------##INSTRUCTIONS: - Check if the predicted answer" in system["content"]
    assert user["content"].startswith(
        "Please evaluate the following video-based question-answer pair:\n\n"
        "Question: Describe the video.\nCorrect Answer: truth P1\nPredicted Answer: P1\n\n"
    )
    assert user["content"].endswith("For example, your response should look like this: {'score': 4.8}.")
    assert [r["score"] for r in records] == [4.8, 3.0, None, None]
    assert [r["score"] for r in records_int] == [4.0, 3.0, None, None]
    metrics = task.aggregate(records)
    assert metrics["gpt_eval_score"] == pytest.approx(3.9) and metrics["n_judge_failed"] == 2
    assert task.avg_scale == 20.0
    assert task.judge_template_hash() != task_int.judge_template_hash()


def test_video_dc_missing_video_and_missing_pyav(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("av")
    folder = tmp_path / "video_dc499"
    write_jsonl(folder / "test.jsonl", [{"video_name": "nope", "question": "q", "answer": "a"}])
    with pytest.raises(
        DatasetFormatError,
        match=r"test\.jsonl: row 0: field 'video_name': video 'nope' not found .*extract the",
    ):
        list(VideoDetailCaption().load(tmp_path))
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(ImportError, match="PyAV"):
        list(VideoDetailCaption().load(tmp_path))


def test_video_dc_corrupt_video_is_reported_on_access(tmp_path: Path) -> None:
    pytest.importorskip("av")
    folder = tmp_path / "video_dc499"
    write_jsonl(folder / "test.jsonl", [{"video_name": "broken", "question": "q", "answer": "a"}])
    (folder / "videos").mkdir()
    (folder / "videos" / "broken.mp4").write_bytes(b"\x00" * 64)
    doc = next(VideoDetailCaption(num_frames=2).load(tmp_path))
    with pytest.raises(
        DatasetFormatError, match=r"test\.jsonl: row 0: field 'video_name': .*broken\.mp4: cannot"
    ):
        doc.load_images()


@given(st.integers(1, 5000), st.integers(1, 64))
def test_frame_indices_are_uniform_and_in_range(total: int, num: int) -> None:
    idx = frame_indices(total, num)
    assert len(idx) == num and idx == sorted(idx)
    assert idx[0] == 0 and all(0 <= i < total for i in idx)
    if num > 1:
        assert idx[-1] == total - 1


def test_bad_video_task_options() -> None:
    with pytest.raises(ValueError):
        VideoDetailCaption(num_frames=0)
    with pytest.raises(ValueError):
        VideoDetailCaption(score_cast="round")
    with pytest.raises(ValueError):
        frame_indices(0, 4)


# ------------------------------------------------------------------------------------------ reply parsers

_score = st.integers(0, 10) | st.floats(0, 10, allow_nan=False).map(lambda x: round(x, 2))


@given(_score, _score, st.text(max_size=30), st.sampled_from([" ", ","]))
def test_llava_pair_parser_reads_the_first_line(a: float, b: float, rest: str, sep: str) -> None:
    assert parse_llava_score_pair(f"{a}{sep}{b}\n{rest}") == (float(a), float(b))


@given(st.lists(st.integers(0, 10), min_size=0, max_size=5).filter(lambda xs: len(xs) != 2))
def test_llava_pair_parser_needs_exactly_two_numbers(xs: list[int]) -> None:
    with pytest.raises(JudgeParseError):
        parse_llava_score_pair(" ".join(map(str, xs)) + "\nexplanation 9 9")


@pytest.mark.parametrize("text", ["8, 9", "8  9", "Scores: 8 9", "eight nine", "nan 3", "", "\n8 9"])
def test_llava_pair_parser_rejects_reference_failures(text: str) -> None:
    # "8, 9" and "8  9" give three tokens after splitting on single spaces, as in the reference
    if text == "\n8 9":
        assert parse_llava_score_pair(text) == (8.0, 9.0)  # the reply is stripped first
        return
    with pytest.raises(JudgeParseError):
        parse_llava_score_pair(text)


@given(st.integers(0, 100), st.text(alphabet=st.characters(blacklist_characters="F"), max_size=40))
def test_final_score_parser_finds_the_first_score(score: int, prefix: str) -> None:
    assert parse_final_score(f"{prefix}\nFinal Score: {score}\nFinal Score: 3") == score


@pytest.mark.parametrize("text", ["Final score: 80", "Final Score:80", "Score: 80", "Final Score: 101"])
def test_final_score_parser_failures(text: str) -> None:
    with pytest.raises(JudgeParseError):
        parse_final_score(text)


@settings(max_examples=50)
@given(st.floats(0, 5, allow_nan=False), st.sampled_from(["float", "int"]))
def test_detail_score_parser(value: float, cast: str) -> None:
    parsed = parse_detail_score(f"  {{'score': {value!r}}}\n", cast=cast)
    assert parsed == (float(int(value)) if cast == "int" else value)


@pytest.mark.parametrize(
    "text",
    ["{'score': '4'}", "{'grade': 4}", "[4]", "{'score': True}", "{'score': -1}", "{'score': 5.5}", "4", "{"],
)
def test_detail_score_parser_failures(text: str) -> None:
    with pytest.raises(JudgeParseError):
        parse_detail_score(text)


# ------------------------------------------------------------------------------------------ MathVista extraction


def test_mathvista_extraction_prompt_and_call() -> None:
    query = "Question: What is x?\nAnswer the question using a single integer number."
    prompt = mathvista_extraction_prompt(query, "I think x is 7.")
    assert prompt.startswith(
        "Please read the following example. Then extract the answer from the model response"
    )
    assert prompt.endswith(f"Extracted answer: B\n\n{query}\n\nI think x is 7.\n\nExtracted answer: ")
    demo_answers = [
        line.split(": ", 1)[1] for line in prompt.splitlines() if line.startswith("Extracted answer: ")
    ]
    assert demo_answers == ["14", "0.6", "1.45", "[2007, 2008]", "B", ""]  # the last one is left open
    assert "(A) 3/11\n(B) 8/11\n(C) 6/11\n(D) 3/5" in prompt

    with FakeJudgeServer(script=[completion("  7 \n")]) as server:
        extracted = mathvista_judge_extract(query, "I think x is 7.", client_for(server))
    assert extracted == "7"
    (body,) = server.bodies
    assert body["messages"] == [{"role": "user", "content": prompt}]
    assert body["model"] == "gpt-4-0613" and body["temperature"] == 0.0
    assert body["max_tokens"] == 256 and body["n"] == 1


def test_mathvista_extraction_failures_raise() -> None:
    with FakeJudgeServer(script=[completion("   "), error(401, text="bad key")]) as server:
        judge = client_for(server)
        with pytest.raises(JudgeFailedError, match="empty answer"):
            mathvista_judge_extract("q", "r1", judge)
        with pytest.raises(JudgeFailedError, match="HTTP 401") as info:
            mathvista_judge_extract("q", "r2", judge)
    assert not info.value.result.ok and info.value.result.model == "gpt-4-0613"

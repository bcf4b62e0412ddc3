"""Built-in benchmark tasks: loaders on tiny fixtures written in each dataset's published schema, prompts,
scoring records and aggregation."""

from __future__ import annotations

import base64
import io
import json
import pickle
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from vistune.eval.task import Doc, get_task, list_tasks
from vistune.eval.tasks import common
from vistune.eval.tasks.common import DatasetFormatError

BUILTIN = [
    "ai2d",
    "chartqa",
    "docvqa_val",
    "infovqa_val",
    "mathvista_testmini",
    "mme",
    "mmmu_val",
    "scienceqa_img",
    "ok_vqa_val2014",
    "pope",
    "vizwiz_vqa_val",
    "synthdog_en",
    "ocrbench",
    "cmmmu_val",
]

# -- fixture helpers ------------------------------------------------------------------------------------------


def png_bytes(color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (12, 8)) -> bytes:
    """A tiny PNG of ``size`` = (height, width)."""
    buf = io.BytesIO()
    Image.new("RGB", (size[1], size[0]), color).save(buf, format="PNG")
    return buf.getvalue()


def save_png(path: Path, color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (12, 8)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(color, size))
    return path.name


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def with_images(folder: Path, rows: list[dict[str, Any]], field: str = "image") -> list[dict[str, Any]]:
    """Give every row an image file beside the JSON (``images/<i>.png``), as a relative path."""
    for i, row in enumerate(rows):
        save_png(folder / "images" / f"{i}.png", color=(10 * i % 255, 100, 50))
        row[field] = f"images/{i}.png"
    return rows


def user_text(messages: list[dict[str, Any]]) -> str:
    assert len(messages) == 1 and messages[0]["role"] == "user"
    texts = [c["text"] for c in messages[0]["content"] if c["type"] == "text"]
    assert len(texts) == 1
    return texts[0]


def n_images(messages: list[dict[str, Any]]) -> int:
    content = messages[0]["content"]
    n = sum(1 for c in content if c["type"] == "image")
    assert all(c["type"] == "image" for c in content[:n]), "images come before the text"
    return n


def load(name: str, data_dir: Path, **kw: Any) -> tuple[Any, list[Doc]]:
    task = get_task(name)
    return task, list(task.load(data_dir, **kw))


# -- registry ------------------------------------------------------------------------------------------------


def test_all_builtin_tasks_are_registered_with_their_lmms_eval_names() -> None:
    names = list_tasks()
    for name in BUILTIN:
        assert name in names
        task = get_task(name)
        info = task.describe()
        assert info["name"] == name and info["dataset_split"] and task.data_env.startswith("VISTUNE_DATA_")
        assert task.generation.until == []  # the llava plugin never truncates on `until`


# -- AI2D (+ generic loader behaviour) -------------------------------------------------------------------------

AI2D_ROWS = [
    {"question": "Which part is the leaf?", "options": ["root", "leaf", "stem"], "answer": "1"},
    {"question": "What eats grass?", "options": ["cow", "lion", "shark", "hawk"], "answer": "0"},
]


def make_ai2d(data_dir: Path, folder: str = "ai2d") -> Path:
    root = data_dir / folder
    write_jsonl(root / "test.jsonl", with_images(root, [dict(r) for r in AI2D_ROWS]))
    return root


def test_ai2d_prompt_images_scoring(tmp_path: Path) -> None:
    make_ai2d(tmp_path)
    task, docs = load("ai2d", tmp_path)
    assert [d.target for d in docs] == ["B", "A"]
    messages = task.doc_to_messages(docs[0])
    assert n_images(messages) == 1
    assert user_text(messages) == (
        "Which part is the leaf?\nA. root\nB. leaf\nC. stem\n"
        "Answer with the option's letter from the given choices directly."
    )
    (image,) = docs[0].load_images()
    assert image.mode == "RGB" and image.size == (8, 12)  # PIL size is (width, height)
    records = [
        task.score(docs[0], "B. leaf"),
        task.score(docs[0], "(B)"),
        task.score(docs[1], "The answer is A"),
    ]
    assert [r["score"] for r in records] == [1.0, 1.0, 0.0]
    assert records[0]["parsed"] == "B" and records[0]["doc_id"] == "0"
    json.dumps(records)
    assert task.aggregate(records) == {"exact_match": pytest.approx(2 / 3), "n": 3}


def test_loader_limit_and_folder_search(tmp_path: Path) -> None:
    make_ai2d(tmp_path / "hub", folder="lmms-lab/ai2d")
    task, docs = load("ai2d", tmp_path / "hub", limit=1)
    assert len(docs) == 1
    assert list(task.load(tmp_path / "hub", limit=0)) == []
    with pytest.raises(ValueError):
        task.load(tmp_path / "hub", limit=-1)
    # hub cache layout
    make_ai2d(tmp_path / "cache" / "datasets--lmms-lab--ai2d" / "snapshots", folder="0123abc")
    assert len(load("ai2d", tmp_path / "cache")[1]) == 2
    # case-insensitive dataset folder name; a JSON copy beside the JSONL is not read twice
    root = make_ai2d(tmp_path / "ci", folder="AI2D")
    (root / "test.json").write_text(json.dumps([{"unrelated": True}]))
    assert len(load("ai2d", tmp_path / "ci")[1]) == 2


def test_loader_env_var_and_missing_folder_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_ai2d(tmp_path / "somewhere", folder="x")
    task = get_task("ai2d")
    with pytest.raises(FileNotFoundError, match="VISTUNE_DATA_AI2D"):
        task.load(None)
    with pytest.raises(FileNotFoundError, match="looked in") as info:
        task.load(tmp_path / "empty")
    assert "ai2d" in str(info.value)
    with pytest.raises(FileNotFoundError):  # a dataset folder given as data_dir is not guessed to be ai2d
        task.load(root)
    monkeypatch.setenv("VISTUNE_DATA_AI2D", str(root))
    assert len(list(task.load(None))) == 2
    monkeypatch.setenv("VISTUNE_DATA_AI2D", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="not a folder"):
        task.load(None)


def test_loader_errors_name_file_row_and_field(tmp_path: Path) -> None:
    root = tmp_path / "ai2d"
    rows = with_images(root, [dict(r) for r in AI2D_ROWS])
    del rows[1]["options"]
    write_jsonl(root / "test.jsonl", rows)
    with pytest.raises(DatasetFormatError, match=r"test\.jsonl: row 1: field 'options': missing"):
        get_task("ai2d").load(tmp_path)
    rows[1]["options"] = ["a", "b"]
    rows[1]["answer"] = "7"
    write_jsonl(root / "test.jsonl", rows)
    with pytest.raises(DatasetFormatError, match="row 1: field 'answer': option index 7"):
        get_task("ai2d").load(tmp_path)
    rows[1]["answer"] = "0"
    rows[1]["image"] = "images/missing.png"
    write_jsonl(root / "test.jsonl", rows)
    with pytest.raises(
        DatasetFormatError, match=r"row 1: field 'image': image file 'images/missing.png' not found"
    ):
        get_task("ai2d").load(tmp_path)
    good_line = json.dumps({**AI2D_ROWS[0], "image": "images/0.png"})
    (root / "test.jsonl").write_text(good_line + "\n\nnot json\n")  # blank lines are skipped
    with pytest.raises(DatasetFormatError, match="line 3: invalid JSON"):
        get_task("ai2d").load(tmp_path)


def test_embedded_image_bytes_in_json_and_corrupt_images(tmp_path: Path) -> None:
    root = tmp_path / "ai2d"
    good = {"bytes": base64.b64encode(png_bytes(size=(5, 7))).decode(), "path": "a.png"}
    bad = {"bytes": base64.b64encode(b"not an image").decode(), "path": "b.png"}
    write_jsonl(root / "test.jsonl", [{**AI2D_ROWS[0], "image": good}, {**AI2D_ROWS[1], "image": bad}])
    docs = list(get_task("ai2d").load(tmp_path))
    assert docs[0].load_images()[0].size == (7, 5)
    with pytest.raises(DatasetFormatError, match=r"row 1: field 'image': cannot decode image"):
        docs[1].load_images()
    assert pickle.loads(pickle.dumps(docs[0].images[0]))().size == (7, 5)


def test_parquet_without_pyarrow_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "ai2d" / "data"
    root.mkdir(parents=True)
    (root / "test-00000-of-00001.parquet").write_bytes(b"PAR1")
    monkeypatch.setattr(common, "pyarrow_available", lambda: False)
    with pytest.raises(DatasetFormatError, match="pyarrow"):
        get_task("ai2d").load(tmp_path)


def test_parquet_shards_with_embedded_image_structs(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    data = tmp_path / "lmms-lab" / "ai2d" / "data"
    data.mkdir(parents=True)
    for shard, rows in enumerate([AI2D_ROWS[:1], AI2D_ROWS[1:]]):
        table = pa.Table.from_pylist(
            [{**r, "image": {"bytes": png_bytes(size=(6 + shard, 4)), "path": f"{shard}.png"}} for r in rows]
        )
        pq.write_table(table, data / f"test-0000{shard}-of-00002.parquet", row_group_size=1)
    task, docs = load("ai2d", tmp_path)
    assert [d.target for d in docs] == ["B", "A"]
    assert "image" not in docs[0].data  # image bytes are not held with the metadata
    assert [d.load_images()[0].size for d in docs] == [(4, 6), (4, 7)]
    assert pickle.loads(pickle.dumps(docs[1].images[0]))().size == (4, 7)


# -- ChartQA, DocVQA, InfoVQA --------------------------------------------------------------------------------


def test_chartqa(tmp_path: Path) -> None:
    root = tmp_path / "chartqa"
    rows = [
        {"question": "What is the peak?", "answer": "12.5", "type": "human_test"},
        {"question": "Share of A?", "answer": "50", "type": "augmented_test"},
    ]
    write_jsonl(root / "data" / "test-00000-of-00001.jsonl", with_images(root / "data", rows))
    task, docs = load("chartqa", tmp_path)
    assert (
        user_text(task.doc_to_messages(docs[0]))
        == "What is the peak?\nAnswer the question with a single word."
    )
    records = [task.score(docs[0], " 12 "), task.score(docs[1], "50%")]
    assert [r["score"] for r in records] == [1.0, 0.0]
    assert task.aggregate(records) == {
        "relaxed_overall": 0.5,
        "relaxed_human_split": 1.0,
        "relaxed_augmented_split": 0.0,
        "n": 2,
    }


def test_docvqa_and_infovqa_share_one_repo_folder(tmp_path: Path) -> None:
    repo = tmp_path / "DocVQA"
    doc_rows = [{"questionId": 7, "question": "What is the date?", "answers": ["1 May 1990", "May 1, 1990"]}]
    info_rows = [{"questionId": "i1", "question": "How many?", "answers": ["12"]}]
    write_jsonl(repo / "DocVQA" / "validation-00000-of-00001.jsonl", with_images(repo / "DocVQA", doc_rows))
    task, docs = load("docvqa_val", tmp_path)
    assert docs[0].doc_id == "7"
    assert user_text(task.doc_to_messages(docs[0])) == (
        "What is the date?\nAnswer the question using a single word or phrase."
    )
    with pytest.raises(FileNotFoundError):  # InfographicVQA config missing: never read DocVQA rows instead
        get_task("infovqa_val").load(tmp_path)
    write_jsonl(
        repo / "InfographicVQA" / "validation-00000-of-00001.jsonl",
        with_images(repo / "InfographicVQA", info_rows),
    )
    info, info_docs = load("infovqa_val", tmp_path)
    assert [d.doc_id for d in info_docs] == ["i1"]
    r = task.score(docs[0], "1 may 1990")
    assert r["score"] == 1.0 and task.score(docs[0], "June")["score"] == 0.0
    assert task.aggregate([r]) == {"anls": 1.0, "n": 1}


def test_duplicate_document_ids_are_an_error(tmp_path: Path) -> None:
    root = tmp_path / "docvqa_val"
    rows = [
        {"questionId": 1, "question": "q", "answers": ["a"]},
        {"questionId": 1, "question": "q2", "answers": ["b"]},
    ]
    write_jsonl(root / "validation.jsonl", with_images(root, rows))
    with pytest.raises(DatasetFormatError, match="row 1: document id '1' repeats"):
        get_task("docvqa_val").load(tmp_path)


# -- OK-VQA, VizWiz ------------------------------------------------------------------------------------------


def test_ok_vqa_and_vizwiz(tmp_path: Path) -> None:
    ok_root = tmp_path / "OK-VQA"
    write_jsonl(
        ok_root / "data" / "val2014-00000-of-00001.jsonl",
        with_images(
            ok_root / "data",
            [{"question_id": 5, "question": "What sport is this?", "answers": ["tennis"] * 10}],
        ),
    )
    task, docs = load("ok_vqa_val2014", tmp_path)
    assert user_text(task.doc_to_messages(docs[0])) == (
        "What sport is this?\nWhen the provided information is insufficient, respond with 'Unanswerable'.\n"
        "Answer the question using a single word or phrase."
    )
    assert task.score(docs[0], "Tennis.")["score"] == 1.0

    viz_root = tmp_path / "vizwiz_vqa_val"
    answers = [{"answer": "unanswerable", "answer_confidence": "yes"}] * 4 + [{"answer": "a can"}] * 6
    write_jsonl(
        viz_root / "val.jsonl",
        with_images(viz_root, [{"question_id": "v1", "question": "what is THIS?", "answers": answers}]),
    )
    viz, vdocs = load("vizwiz_vqa_val", tmp_path)
    assert user_text(viz.doc_to_messages(vdocs[0])).startswith(
        "What is this?\nWhen the provided"
    )  # str.capitalize
    assert viz.score(vdocs[0], "Unanswerable")["score"] == 1.0
    rec = viz.score(vdocs[0], "can")
    assert rec["parsed"] == "can" and rec["score"] == 1.0  # "a can" → article dropped
    assert viz.aggregate([rec]) == {"exact_match": 1.0, "n": 1}


# -- POPE ----------------------------------------------------------------------------------------------------


def test_pope(tmp_path: Path) -> None:
    root = tmp_path / "POPE"
    rows = [
        {
            "question_id": 1,
            "question": " Is there a dog in the image? ",
            "answer": "yes",
            "category": "adversarial",
        },
        {"question_id": 1, "question": "Is there a cat in the image?", "answer": "no", "category": "random"},
        {"question_id": 2, "question": "Is there a car in the image?", "answer": "Yes", "category": "random"},
    ]
    write_jsonl(root / "data" / "test-00000-of-00001.jsonl", with_images(root / "data", rows))
    task, docs = load("pope", tmp_path)
    assert user_text(task.doc_to_messages(docs[0])) == (
        "Is there a dog in the image?\nAnswer the question using a single word or phrase."
    )
    records = [task.score(docs[0], "Yes"), task.score(docs[1], "No."), task.score(docs[2], "yes")]
    assert [r["score"] for r in records] == [1.0, 0.0, 1.0]  # "no." is not "no"
    out = task.aggregate(records)
    assert out["pope_f1_score"] == 1.0 and out["pope_accuracy"] == pytest.approx(2 / 3)
    assert out["pope_accuracy/random"] == 0.5 and out["pope_f1_score/adversarial"] == 1.0
    rows[1]["answer"] = "maybe"
    write_jsonl(root / "data" / "test-00000-of-00001.jsonl", rows)
    with pytest.raises(DatasetFormatError, match="row 1: field 'answer'"):
        task.load(tmp_path)


# -- MME -----------------------------------------------------------------------------------------------------


def make_mme(data_dir: Path, broken: bool = False) -> None:
    root = data_dir / "MME" / "data"
    q = "Is there a dog in this image? Please answer yes or no."
    rows = [  # pairs deliberately interleaved
        {"question_id": "a.png", "question": q, "answer": "Yes", "category": "existence"},
        {"question_id": "b.png", "question": q, "answer": "Yes", "category": "existence"},
        {"question_id": "a.png", "question": q, "answer": "No", "category": "existence"},
        {"question_id": "b.png", "question": q, "answer": "No", "category": "existence"},
        {"question_id": "c.png", "question": q, "answer": "Yes", "category": "code_reasoning"},
        {"question_id": "c.png", "question": q, "answer": "No", "category": "code_reasoning"},
    ]
    if broken:
        rows.append({"question_id": "c.png", "question": q, "answer": "No", "category": "code_reasoning"})
    write_jsonl(root / "test-00000-of-00001.jsonl", with_images(root, rows))


def test_mme_prompt_scoring_and_aggregation(tmp_path: Path) -> None:
    make_mme(tmp_path)
    task, docs = load("mme", tmp_path)
    assert [d.doc_id for d in docs] == ["a.png#0", "b.png#0", "a.png#1", "b.png#1", "c.png#0", "c.png#1"]
    assert user_text(task.doc_to_messages(docs[0])) == (
        "Is there a dog in this image?\nAnswer the question using a single word or phrase."
    )
    preds = ["Yes", "Yes", "No", "Yes", "No", "Yes"]  # a: both right, b: one right, c: both wrong
    records = [task.score(d, p) for d, p in zip(docs, preds, strict=True)]
    out = task.aggregate(records)
    assert out["mme_category/existence"] == pytest.approx(125.0)  # (200 + 50) / 2
    assert out["mme_category/code_reasoning"] == 0.0
    assert out["mme_perception_score"] == out["mme_percetion_score"] == pytest.approx(125.0)
    assert out["mme_total_score"] == pytest.approx(125.0) and out["mme_accuracy"] == pytest.approx(125 / 2800)
    with pytest.raises(ValueError, match="pairs must never be split"):
        task.aggregate(records[:3])


def test_mme_limit_never_splits_a_pair(tmp_path: Path) -> None:
    make_mme(tmp_path)
    task = get_task("mme")
    assert [d.doc_id for d in task.load(tmp_path, limit=1)] == ["a.png#0", "a.png#1"]
    assert [d.doc_id for d in task.load(tmp_path, limit=3)] == ["a.png#0", "b.png#0", "a.png#1", "b.png#1"]
    assert len(list(task.load(tmp_path, limit=100))) == 6


def test_mme_same_image_name_in_two_categories(tmp_path: Path) -> None:
    root = tmp_path / "mme"
    q = "Is it red?"
    rows = [
        {"question_id": "0001.png", "question": q, "answer": a, "category": c}
        for c in ("color", "OCR")
        for a in ("Yes", "No")
    ]
    write_jsonl(root / "test.jsonl", with_images(root, rows))
    ids = [d.doc_id for d in get_task("mme").load(tmp_path)]
    assert ids == ["color/0001.png#0", "color/0001.png#1", "OCR/0001.png#0", "OCR/0001.png#1"]


def test_mme_broken_pair_is_reported_at_load(tmp_path: Path) -> None:
    make_mme(tmp_path, broken=True)
    with pytest.raises(DatasetFormatError, match=r"'c.png' \(category 'code_reasoning'\) has 3 question"):
        get_task("mme").load(tmp_path)


# -- MMMU ----------------------------------------------------------------------------------------------------


def make_mmmu(data_dir: Path) -> None:
    root = data_dir / "MMMU"
    art = [
        {
            "id": "validation_Art_Theory_1",
            "question": "<image 2> Which animal is drawn next to <image 1>?",
            "options": "['cat', 'dog', 'fish', 'bird']",
            "answer": "B",
            "question_type": "multiple-choice",
        }
    ]
    for row in art:
        row["image_1"] = save_png(root / "Art_Theory" / "i1.png", (1, 2, 3), (4, 4))
        row["image_2"] = save_png(root / "Art_Theory" / "i2.png", (3, 2, 1), (6, 6))
    math_rows = [
        {"id": "validation_Math_2", "question": "<image 1> What is 6*7?", "options": "[]", "answer": "42",
         "question_type": "open", "image_1": save_png(root / "Math" / "m.png")},
        {"id": "validation_Math_3", "question": "Pick one.", "options": "['1', '2', '3']", "answer": "C",
         "question_type": "multiple-choice"},
    ]  # fmt: skip
    write_jsonl(root / "Art_Theory" / "validation-00000-of-00001.jsonl", art)
    write_jsonl(root / "Math" / "validation-00000-of-00001.jsonl", math_rows)
    write_jsonl(root / "Math" / "dev-00000-of-00001.jsonl", [{"id": "dev_Math_1"}])  # other split: ignored


def test_mmmu_prompts_images_and_scoring(tmp_path: Path) -> None:
    make_mmmu(tmp_path)
    task, docs = load("mmmu_val", tmp_path)
    assert [d.doc_id for d in docs] == ["validation_Art_Theory_1", "validation_Math_2", "validation_Math_3"]
    mc = task.doc_to_messages(docs[0])
    assert user_text(mc) == (
        "<image 2> Which animal is drawn next to <image 1>?\nA. cat\nB. dog\nC. fish\nD. bird\n\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert n_images(mc) == 2
    assert [im.size for im in docs[0].load_images()] == [(4, 4), (6, 6)]  # sorted: image_1 then image_2
    assert user_text(task.doc_to_messages(docs[1])) == (
        "<image 1> What is 6*7?\n\nAnswer the question using a single word or phrase."
    )
    assert n_images(task.doc_to_messages(docs[2])) == 0
    r_mc, r_open = task.score(docs[0], "B"), task.score(docs[1], "The answer is 42.")
    assert (r_mc["score"], r_mc["parsed"], r_open["score"], r_open["parsed"]) == (1.0, "B", 1.0, [42.0])
    r_guess = task.score(docs[2], "I cannot tell")
    assert r_guess["random_fallback"] and r_guess["parse_method"] == "random"
    json.dumps([r_mc, r_open, r_guess])
    out = task.aggregate([r_mc, r_open, r_guess])
    assert out["random_fallbacks"] == 1 and out["n"] == 3
    assert out["mmmu_acc/Art_Theory"] == 1.0 and out["mmmu_acc/Art and Design"] == 1.0
    assert out["mmmu_acc"] == round((2 + r_guess["score"]) / 3, 5)


def test_mmmu_fallback_is_stable_across_document_order(tmp_path: Path) -> None:
    make_mmmu(tmp_path)
    task, docs = load("mmmu_val", tmp_path)
    forward = [task.score(d, "no idea at all") for d in docs]
    backward = [task.score(d, "no idea at all") for d in reversed(docs)]
    assert forward == list(reversed(backward))
    fresh = get_task("mmmu_val")
    assert [fresh.score(d, "no idea at all") for d in docs] == forward


def test_mmmu_missing_referenced_image_field(tmp_path: Path) -> None:
    root = tmp_path / "mmmu_val"
    write_jsonl(
        root / "validation.jsonl",
        [{"id": "validation_Art_1", "question": "<image 3>?", "options": "['a','b']", "answer": "A",
          "question_type": "multiple-choice"}],
    )  # fmt: skip
    with pytest.raises(DatasetFormatError, match="row 0: field 'image_3'"):
        get_task("mmmu_val").load(tmp_path)


# -- CMMMU ---------------------------------------------------------------------------------------------------


def test_cmmmu(tmp_path: Path) -> None:
    root = tmp_path / "CMMMU" / "data"
    base = {f"image_{i}_filename": None for i in range(1, 6)} | {"subcategory": "数学", "category": "科学"}
    rows = [
        {**base, "id": "1", "type": "选择", "question": '看<img="p1.png">，选哪个？', "option1": "猫", "option2": "狗",
         "option3": "鱼", "option4": "鸟", "answer": "B", "image_1_filename": "p1.png", "image_1": save_png(root / "p1.png")},
        {**base, "id": "2", "type": "判断", "question": "地球是圆的。", "answer": "对"},
        {**base, "id": "3", "type": "填空", "question": "2+1.5=?", "answer": "3.5"},
    ]  # fmt: skip
    write_jsonl(root / "val-00000-of-00001.jsonl", rows)
    task, docs = load("cmmmu_val", tmp_path)
    mc = task.doc_to_messages(docs[0])
    assert n_images(mc) == 1
    assert user_text(mc) == (
        "请回答以下多项选择题，并选出正确选项。这些题目可能包括单选和多选题型。如果所提供的信息不足以确定一个明确的答案，"
        "那么请根据可用的数据和你的判断来选择最可能正确的选项。\n\n"
        "问题：看<图片 1>，选哪个？\n选项：\n(A) 猫\n(B) 狗\n(C) 鱼\n(D) 鸟\n\n正确答案：\n"
    )
    assert user_text(task.doc_to_messages(docs[1])).endswith("\n\n问题：地球是圆的。\n正确答案：\n")
    records = [
        task.score(docs[0], "(B)"),
        task.score(docs[1], "这个说法是正确的。"),
        task.score(docs[2], "答案是3.5"),
    ]
    assert [r["score"] for r in records] == [1.0, 1.0, 1.0]
    assert records[1]["parsed"]["verdict"] == "对"
    json.dumps(records, ensure_ascii=False)
    out = task.aggregate(records + [task.score(docs[0], "(A)")])
    assert out["cmmmu_acc"] == 0.75 and out["cmmmu_acc/数学"] == 0.75 and out["n"] == 4


# -- MathVista -----------------------------------------------------------------------------------------------


def make_mathvista(data_dir: Path) -> None:
    root = data_dir / "MathVista"
    meta = {
        "category": "math-targeted-vqa",
        "task": "geometry problem solving",
        "skills": ["algebraic reasoning"],
    }
    rows = {
        "1": {"pid": "1", "question": "What fraction of the shape is blue?", "choices": ["3/11", "8/11", "6/11", "3/5"],
              "unit": None, "precision": None, "answer": "8/11", "question_type": "multi_choice",
              "answer_type": "text", "query": "Hint: ...\nQuestion: What fraction of the shape is blue?",
              "metadata": meta},
        "2": {"pid": "2", "question": "How many sides?", "choices": None, "unit": None, "precision": None,
              "answer": "6", "question_type": "free_form", "answer_type": "integer", "query": "q2", "metadata": meta},
        "3": {"pid": "3", "question": "How long is the rod?", "choices": None, "unit": "cm", "precision": 1.0,
              "answer": "2.5", "question_type": "free_form", "answer_type": "float", "query": "q3",
              "metadata": meta},
        "4": {"pid": "4", "question": "Which years?", "choices": None, "unit": "", "precision": None,
              "answer": "[2007, 2008]", "question_type": "free_form", "answer_type": "list", "query": "q4",
              "metadata": meta},
    }  # fmt: skip
    for pid, row in rows.items():
        row["image"] = "images/" + save_png(root / "images" / f"{pid}.jpg")
    (root / "annot_testmini.json").write_text(json.dumps(rows), encoding="utf-8")


def test_mathvista_prompts(tmp_path: Path) -> None:
    make_mathvista(tmp_path)
    task, docs = load("mathvista_testmini", tmp_path)
    texts = [user_text(task.doc_to_messages(d)) for d in docs]
    assert texts == [
        "What fraction of the shape is blue?\nA. 3/11\nB. 8/11\nC. 6/11\nD. 3/5\n"
        "Answer with the option's letter from the given choices directly.",
        "How many sides?\nAnswer the question using a single integer number.",
        "How long is the rod? (Unit: cm)\n"
        "Answer the question using a single floating-point number with one decimal place.",
        "Which years?\nAnswer the question using a Python list.",
    ]


def test_mathvista_rules_and_fallback_without_judge(tmp_path: Path) -> None:
    make_mathvista(tmp_path)
    task, docs = load("mathvista_testmini", tmp_path)
    records = [
        task.score(docs[0], "B"),
        task.score(docs[1], "6"),
        task.score(docs[2], "2.54"),
        task.score(docs[3], "[2007,2008]"),
        task.score(docs[0], "I believe it is the second one"),
    ]
    assert [r["score"] for r in records] == [1.0, 1.0, 1.0, 1.0, 0.0]
    last = records[-1]
    assert last["needs_judge"] and not last["judged"] and last["extraction_method"] == "fallback"
    assert last["extraction"] == "" and last["parsed"] == "3/5"  # upstream: nearest choice to ""
    out = task.aggregate(records)
    assert out["gpt_eval_score"] == 80.0
    assert (out["needs_judge"], out["judged"], out["judge_fallbacks"]) == (1, 0, 1)
    assert out["gpt_eval_score/answer_type=integer"] == 100.0
    assert out["gpt_eval_score/skills=algebraic reasoning"] == 80.0


def test_mathvista_judge_hook_callable_and_failures(tmp_path: Path) -> None:
    make_mathvista(tmp_path)
    task, docs = load("mathvista_testmini", tmp_path)
    prompts: list[str] = []

    def judge(prompt: str) -> str:
        prompts.append(prompt)
        return " B "

    task.judge = judge
    rec = task.score(docs[0], "I believe it is the second one")
    assert rec["judged"] and rec["extraction"] == "B" and rec["score"] == 1.0
    assert prompts[0].endswith(
        "Question: What fraction of the shape is blue?\n\nI believe it is the second one\n\nExtracted answer: "
    )
    assert task.score(docs[0], "B")["needs_judge"] is False and len(prompts) == 1  # rules first

    def broken(prompt: str) -> str:
        raise TimeoutError("no answer")

    task.judge = broken
    failed = task.score(docs[0], "I believe it is the second one")
    assert failed["extraction_method"] == "judge_failed" and "TimeoutError" in failed["judge_error"]
    assert failed["parsed"] == "3/5"
    out = task.aggregate([rec, failed])
    assert (out["needs_judge"], out["judged"], out["judge_fallbacks"]) == (2, 1, 1)


def test_mathvista_judge_client_object(tmp_path: Path) -> None:
    pytest.importorskip("vistune.eval.judge")
    make_mathvista(tmp_path)
    task, docs = load("mathvista_testmini", tmp_path)
    seen = []

    class Result:
        ok, content, model, prompt_hash, error = True, "(B) 8/11", "judge-x", "abc123", None

    class Client:
        def judge(self, request: Any) -> Result:
            seen.append(request)
            return Result()

    task.judge = Client()
    rec = task.score(docs[0], "Probably the second")
    assert rec["judged"] and rec["score"] == 1.0 and rec["judge_model"] == "judge-x"
    request = seen[0]
    assert request.messages[0]["role"] == "user" and request.messages[0]["content"].endswith(
        "Extracted answer: "
    )
    assert (request.temperature, request.max_tokens, request.model, request.params) == (
        0.0,
        256,
        "gpt-4-0613",
        {"n": 1},
    )


def test_mathvista_bad_rows(tmp_path: Path) -> None:
    make_mathvista(tmp_path)
    path = tmp_path / "MathVista" / "annot_testmini.json"
    rows = json.loads(path.read_text())
    rows["1"]["choices"] = None
    path.write_text(json.dumps(rows))
    with pytest.raises(DatasetFormatError, match="annot_testmini.json: row 0: field 'choices'"):
        get_task("mathvista_testmini").load(tmp_path)
    rows["1"]["choices"] = ["a", "b"]
    rows["3"]["precision"] = "one"
    path.write_text(json.dumps(rows))
    with pytest.raises(DatasetFormatError, match="row 2: field 'precision'"):
        get_task("mathvista_testmini").load(tmp_path)


# -- ScienceQA-IMG -------------------------------------------------------------------------------------------


def test_scienceqa_img(tmp_path: Path) -> None:
    root = tmp_path / "ScienceQA" / "ScienceQA-IMG"
    rows = [
        {
            "question": "Which is a mammal?",
            "choices": ["shark", "whale"],
            "answer": 1,
            "hint": "Look closely.",
        },
        {"question": "Which is hot?", "choices": ["ice", "fire", "snow"], "answer": 1, "hint": ""},
    ]
    write_jsonl(root / "test-00000-of-00001.jsonl", with_images(root, rows))
    write_jsonl(tmp_path / "ScienceQA" / "ScienceQA-FULL" / "test-00000-of-00001.jsonl", [{"x": 1}])
    task, docs = load("scienceqa_img", tmp_path)
    assert user_text(task.doc_to_messages(docs[0])) == (
        "Context: Look closely.\nWhich is a mammal?\nA. shark\nB. whale\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert user_text(task.doc_to_messages(docs[1])).startswith("Which is hot?\nA. ice")
    records = [task.score(docs[0], "B"), task.score(docs[1], "B. fire"), task.score(docs[1], "(B)")]
    assert [r["score"] for r in records] == [1.0, 1.0, 0.0]
    assert task.aggregate(records)["exact_match"] == pytest.approx(2 / 3)


# -- SynDOG --------------------------------------------------------------------------------------------------


def test_synthdog(tmp_path: Path) -> None:
    root = tmp_path / "synthdog-en" / "data"
    gts = ["Hello world", "abc"]
    rows = [{"ground_truth": json.dumps({"gt_parse": {"text_sequence": t}})} for t in gts]
    write_jsonl(root / "validation-00000-of-00001.jsonl", with_images(root, rows))
    task, docs = load("synthdog_en", tmp_path)
    assert user_text(task.doc_to_messages(docs[0])).startswith("OCR this image section by section")
    records = [task.score(docs[0], "Hello world"), task.score(docs[1], "abc")]
    assert records[0]["score"] == pytest.approx(1 - 2 / 12) and records[1]["score"] == pytest.approx(0.75)
    out = task.aggregate(records)
    assert out["tree_edit_distance"] == pytest.approx(1 - 2 / 12 + 0.75)  # summed, as the study reports
    assert task.table_value(out) == out["tree_edit_distance"]
    assert task.avg_value(out) == pytest.approx(100 * out["tree_edit_distance_mean"])
    rows[1]["ground_truth"] = json.dumps({"gt_parse": {}})
    write_jsonl(root / "validation-00000-of-00001.jsonl", rows)
    with pytest.raises(DatasetFormatError, match="row 1: field 'ground_truth'"):
        task.load(tmp_path)


# -- OCRBench ------------------------------------------------------------------------------------------------


def test_ocrbench(tmp_path: Path) -> None:
    root = tmp_path / "OCRBench" / "data"
    rows = [
        {"dataset": "IIIT5K", "question": " what is written in the image? ", "question_type": "Regular Text Recognition",
         "answer": ["HELLO"]},
        {"dataset": "HME100k", "question": "Write the expression.", "question_type":
         "Handwritten Mathematical Expression Recognition", "answer": ["x^{2}+Y"]},
    ]  # fmt: skip
    write_jsonl(root / "test-00000-of-00001.jsonl", with_images(root, rows))
    task, docs = load("ocrbench", tmp_path)
    assert user_text(task.doc_to_messages(docs[0])) == "what is written in the image?"
    records = [task.score(docs[0], "The word is hello."), task.score(docs[1], "x ^ { 2 } + Y")]
    assert [r["score"] for r in records] == [1.0, 0.0]  # HME case bug (v0.2.0)
    out = task.aggregate(records)
    assert out["ocrbench_final_score"] == 1 and out["ocrbench_accuracy"] == pytest.approx(0.001)
    rows[0]["question_type"] = "Other"
    write_jsonl(root / "test-00000-of-00001.jsonl", rows)
    with pytest.raises(DatasetFormatError, match="row 0: field 'question_type'"):
        task.load(tmp_path)


# -- rescoring from stored records ---------------------------------------------------------------------------


def test_scoring_works_on_documents_rebuilt_from_json(tmp_path: Path) -> None:
    """The runner re-scores saved samples from ``doc_id``/``target``/``data`` alone (no images)."""
    make_mmmu(tmp_path)
    make_mathvista(tmp_path)
    for name, pred in [("mmmu_val", "B"), ("mathvista_testmini", "B")]:
        task, docs = load(name, tmp_path)
        stored = json.loads(
            json.dumps({"doc_id": docs[0].doc_id, "target": docs[0].target, "data": docs[0].data})
        )
        rebuilt = Doc(doc_id=stored["doc_id"], images=[], target=stored["target"], data=stored["data"])
        assert task.score(rebuilt, pred) == task.score(docs[0], pred)

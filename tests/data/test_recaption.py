import json

import pytest
from typer.testing import CliRunner

from tests.conftest import noise
from vistune.cli import _register_areas, app
from vistune.data.recaption import RECAP_PROMPT, filter_by_quality, recaption

runner = CliRunner()
_register_areas()


def test_recaption_folder_resumes_and_shards(tiny, tmp_path):
    model, proc = tiny
    imgs = tmp_path / "imgs"
    (imgs / "sub").mkdir(parents=True)
    for i in range(5):
        noise(20 + 3 * i, 30, i).save(imgs / ("sub" if i % 2 else ".") / f"im{i}.png")
    (imgs / "broken.png").write_bytes(b"nope")
    out = tmp_path / "recap.jsonl"
    s = recaption(model, proc, imgs, out, batch_size=2, max_new_tokens=4, progress=False, limit=3)
    assert s.written + sum(s.skipped_bad.values()) == 3
    s2 = recaption(model, proc, imgs, out, batch_size=2, max_new_tokens=4, progress=False)
    assert s2.skipped_existing == s.written and s2.skipped_bad.get("corrupt") == 1
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 5 and len({r["id"] for r in rows}) == 5
    assert rows[0]["conversations"][0]["value"] == f"<image>\n{RECAP_PROMPT}"
    assert rows[0]["conversations"][1]["value"] == rows[0]["caption"]
    # shards partition the images
    a = recaption(
        model, proc, imgs, tmp_path / "a.jsonl", shard=0, num_shards=2, max_new_tokens=2, progress=False
    )
    b = recaption(
        model, proc, imgs, tmp_path / "b.jsonl", shard=1, num_shards=2, max_new_tokens=2, progress=False
    )
    assert a.written + b.written == 5
    with pytest.raises(ValueError, match="shard"):
        recaption(model, proc, imgs, tmp_path / "c.jsonl", shard=2, num_shards=2, progress=False)


def test_quality_filter(tmp_path):
    src = tmp_path / "web.jsonl"
    rows = [{"id": i, "quality": q, "conversations": []} for i, q in enumerate([0.2, 0.9, 0.5, 0.9, 0.1])]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    info = filter_by_quality(src, tmp_path / "top.jsonl", top=0.4)
    kept = [json.loads(x)["id"] for x in (tmp_path / "top.jsonl").read_text().splitlines()]
    assert kept == [1, 3] and info["kept"] == 2
    filter_by_quality(src, tmp_path / "thr.jsonl", threshold=0.5)
    assert len((tmp_path / "thr.jsonl").read_text().splitlines()) == 3
    res = runner.invoke(
        app, ["data", "filter", str(src), "--output", str(tmp_path / "c.jsonl"), "--top", "2"]
    )
    assert res.exit_code == 0, res.output  # a count (> 1): the two best rows, in file order
    assert [json.loads(x)["id"] for x in (tmp_path / "c.jsonl").read_text().splitlines()] == [1, 3]
    (tmp_path / "bad.jsonl").write_text('{"id": 1}\n')
    with pytest.raises(ValueError, match="row 0: field 'quality'"):
        filter_by_quality(tmp_path / "bad.jsonl", tmp_path / "x.jsonl", top=1)

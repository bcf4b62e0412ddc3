"""write_world: LLaVA files that load, deterministic bytes, manifest, mixtures; and the gallery."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from vistune.data.synthetic.captions import score_caption
from vistune.data.synthetic.config import WorldConfig, WorldSizes
from vistune.data.synthetic.world import EVAL_TASKS
from vistune.data.synthetic.writer import MIXTURES, STAGE_FILES, render_gallery, write_world

SMALL = WorldConfig(
    sizes=WorldSizes(
        stage1_alt=12,
        stage1_web=20,
        stage15_recap=6,
        stage15_docs=6,
        stage15_charts=6,
        stage2_instruct=20,
        eval=8,
    )
)


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _rows(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("w") / "world"
    return root, write_world(root, SMALL, seed=3)


def test_same_bytes_on_two_runs(world: tuple[Path, dict], tmp_path: Path) -> None:
    root, manifest = world
    again = write_world(tmp_path / "again", SMALL, seed=3)
    assert _tree_digest(root) == _tree_digest(tmp_path / "again")
    assert again["fingerprint"] == manifest["fingerprint"]
    other = write_world(tmp_path / "other", SMALL, seed=4)
    assert other["fingerprint"] != manifest["fingerprint"]


def test_every_file_loads_with_valid_images(world: tuple[Path, dict]) -> None:
    root, manifest = world
    listed = {
        **{k: v["path"] for k, v in manifest["files"].items()},
        **{k: v["path"] for k, v in manifest["tasks"].items()},
    }
    assert set(manifest["files"]) == set(STAGE_FILES) | {"stage1_web_top", "stage1_web_random"}
    assert set(manifest["tasks"]) == set(EVAL_TASKS)
    for name, rel in listed.items():
        rows = _rows(root / rel)
        info = manifest["files"].get(name) or manifest["tasks"][name]
        assert len(rows) == info["n"], name
        ids = [r["id"] for r in rows]
        assert len(set(ids)) == len(ids), f"{name}: duplicate ids"
        for r in rows:
            conv = r["conversations"]
            assert conv and len(conv) % 2 == 0
            assert [c["from"] for c in conv] == ["human", "gpt"] * (len(conv) // 2)
            if "image" in r:
                assert conv[0]["value"].startswith("<image>\n")
                with Image.open(root / r["image"]) as im:
                    im.load()
                    assert im.mode == "RGB"
            else:
                assert all("<image>" not in c["value"] for c in conv)


def test_eval_rows_carry_scoring_fields(world: tuple[Path, dict]) -> None:
    root, manifest = world
    for name, info in manifest["tasks"].items():
        for r in _rows(root / info["path"]):
            assert r["task"] == name and r["metric"] == EVAL_TASKS[name].metric
            assert r["conversations"][1]["value"] == r["answer"]
            assert r["conversations"][0]["value"] == "<image>\n" + r["question"]
            assert r["image"].startswith(f"eval/images/{name}/")
            if name == "synth_caption":
                assert score_caption(r["answer"], r["meta"]["objects"]).f1 == 1.0
            if name == "synth_mcq":
                assert r["meta"]["options"][ord(r["answer"]) - 65] == r["meta"]["answer_text"]
        assert 0.0 <= info["chance"] <= 1.0 and 0.0 <= info["majority"] <= 1.0
    assert manifest["tasks"]["synth_exist"]["metric"] == "pope_f1"
    assert manifest["tasks"]["synth_color"]["chance"] == pytest.approx(1 / len(SMALL.colors))


def test_web_pool_and_subsets(world: tuple[Path, dict]) -> None:
    root, manifest = world
    pool = _rows(root / "stage1_web.jsonl")
    top = _rows(root / "stage1_web_top.jsonl")
    rand = _rows(root / "stage1_web_random.jsonl")
    assert all(0.0 <= r["quality"] <= 1.0 and isinstance(r["caption_correct"], bool) for r in pool)
    k = round(SMALL.web_select * len(pool))
    assert len(top) == len(rand) == k
    ids = {r["id"] for r in pool}
    assert {r["id"] for r in top} <= ids and {r["id"] for r in rand} <= ids
    cutoff = min(r["quality"] for r in top)
    assert all(r["quality"] <= cutoff for r in pool if r not in top)
    assert (
        manifest["files"]["stage1_web_top"]["mean_quality"]
        >= manifest["files"]["stage1_web_random"]["mean_quality"]
    )


def test_mixtures_are_llava_next_yaml(world: tuple[Path, dict]) -> None:
    root, manifest = world
    assert set(manifest["mixtures"]) == set(MIXTURES)
    for name, rel in manifest["mixtures"].items():
        doc = yaml.safe_load((root / rel).read_text())
        assert list(doc) == ["datasets"]
        for entry in doc["datasets"]:
            assert entry["sampling_strategy"] == "all"
            assert (root / entry["json_path"]).is_file(), (name, entry)


def test_manifest_records_config_and_legibility(world: tuple[Path, dict]) -> None:
    root, manifest = world
    on_disk = json.loads((root / "world.json").read_text())
    assert on_disk == manifest
    assert WorldConfig.model_validate(manifest["config"]) == SMALL
    geo = manifest["geometry"]
    assert geo["glyph_confusable_fraction"]["full_resolution"] == 0.0
    assert geo["glyph_confusable_fraction"]["base_view"] > 0.9
    assert not list(root.parent.glob(".world.tmp-*")), "temporary folder left behind"


def test_overwrite_rules(tmp_path: Path) -> None:
    tiny = SMALL.model_copy(update={"sizes": WorldSizes(**{f: 1 for f in WorldSizes.model_fields})})
    target = tmp_path / "w"
    write_world(target, tiny)
    with pytest.raises(FileExistsError, match="not empty"):
        write_world(target, tiny)
    write_world(target, tiny, seed=1, overwrite=True)
    assert json.loads((target / "world.json").read_text())["seed"] == 1
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not a synthetic world"):
        write_world(foreign, tiny, overwrite=True)
    assert (foreign / "keep.txt").read_text() == "precious"


def test_gallery(tmp_path: Path) -> None:
    path = render_gallery(tmp_path / "g" / "gallery.png", SMALL, per_family=2)
    with Image.open(path) as im:
        assert im.mode == "RGB" and im.width > 400 and im.height > 800


def test_fingerprint_is_independent_of_process_and_hash_seed(
    world: tuple[Path, dict], tmp_path: Path
) -> None:
    """Set iteration order changes with PYTHONHASHSEED; the world must not depend on it."""
    _, manifest = world
    code = (
        "import sys; from vistune.data.synthetic import WorldConfig, write_world; "
        "cfg = WorldConfig.model_validate_json(sys.argv[1]); "
        "print(write_world(sys.argv[2], cfg, seed=3)['fingerprint'])"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code, SMALL.model_dump_json(), str(tmp_path / "proc")],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert out.stdout.strip() == manifest["fingerprint"]

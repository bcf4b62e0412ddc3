import json

from typer.testing import CliRunner

from vistune.cli import _register_areas, app

runner = CliRunner()
_register_areas()


def test_tokens_json_matches_plan():
    from vistune.config import VisualConfig
    from vistune.model.anyres import EncoderGeometry, plan_image
    from vistune.model.presets import model_preset

    res = runner.invoke(app, ["tokens", "--model", "tiny", "--image", "1920x1080", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    visual = VisualConfig(**model_preset("tiny")["visual"])
    expected = plan_image((1080, 1920), visual, EncoderGeometry(32, 4)).tokens.total
    assert data["images"][0]["tokens"]["total"] == expected


def test_tokens_override_and_table():
    res = runner.invoke(app, ["tokens", "--image", "100x300", "--set", "visual.grids=max:1x1"])
    assert res.exit_code == 0, res.output
    assert "1x1" in res.output


def test_tokens_bad_override_names_field():
    res = runner.invoke(app, ["tokens", "--set", "visual.max_tokens=3"])
    assert res.exit_code != 0
    assert "visual.max_tokens" in str(res.exception) + res.output


def test_tokens_plot(tmp_path):
    out = tmp_path / "plan.png"
    res = runner.invoke(app, ["tokens", "--image", "640x480", "--plot", str(out)])
    assert res.exit_code == 0, res.output
    assert out.stat().st_size > 10_000

"""``connector.path``: initial connector weights from a projector file in any of the three naming schemes
(vistune, LLaVA's ``mm_projector``, transformers' ``multi_modal_projector``), with clear errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from vistune.config import ConfigError
from vistune.model.lmm import build_model, load_pretrained
from vistune.model.presets import model_preset


def _cfg(**connector):
    cfg = model_preset("tiny")
    cfg["connector"] = {**cfg.get("connector", {}), **connector}
    return cfg


@pytest.fixture(scope="module")
def fresh():
    torch.manual_seed(0)
    return build_model(_cfg())[0]


def _random_like(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) for k, v in module.state_dict().items()}


def test_vistune_names_and_newline_load(tmp_path, fresh):
    want = _random_like(fresh.connector, 1)
    newline = torch.randn(fresh.image_newline.shape)
    f = tmp_path / "c.safetensors"
    save_file({**{f"connector.{k}": v for k, v in want.items()}, "image_newline": newline}, str(f))
    model, _ = build_model(_cfg(path=str(f)))
    for k, v in model.connector.state_dict().items():
        assert torch.equal(v, want[k]), k
    assert torch.equal(model.image_newline.detach(), newline)


def test_llava_mm_projector_bin_maps_sequential_indices(tmp_path, fresh):
    want = _random_like(fresh.connector, 2)
    llava = {
        f"model.mm_projector.{k.replace('linear_1', '0').replace('linear_2', '2')}": v
        for k, v in want.items()
    }
    f = tmp_path / "mm_projector.bin"
    torch.save(llava, f)
    model, _ = build_model(_cfg(path=str(f)))
    for k, v in model.connector.state_dict().items():
        assert torch.equal(v, want[k]), k
    # no newline in the file: the newline keeps its own initialisation
    assert model.image_newline.shape == fresh.image_newline.shape


def test_transformers_names_and_a_linear_llava_projector(tmp_path, fresh):
    want = _random_like(fresh.connector, 3)
    f = tmp_path / "hf.safetensors"
    save_file({f"multi_modal_projector.{k}": v for k, v in want.items()}, str(f))
    model, _ = build_model(_cfg(path=str(f)))
    assert all(torch.equal(v, want[k]) for k, v in model.connector.state_dict().items())
    lin = build_model(_cfg(type="linear"))[0]
    wl = _random_like(lin.connector, 4)
    g = tmp_path / "lin.bin"
    torch.save({f"model.mm_projector.{k.split('.', 1)[1]}": v for k, v in wl.items()}, g)
    model, _ = build_model(_cfg(type="linear", path=str(g)))
    assert all(torch.equal(v, wl[k]) for k, v in model.connector.state_dict().items())


def test_bad_projector_files_name_the_file_and_the_problem(tmp_path, fresh):
    with pytest.raises(ConfigError, match="is not a file"):
        build_model(_cfg(path=str(tmp_path / "missing.safetensors")))
    other = tmp_path / "other.safetensors"
    save_file({"lm_head.weight": torch.zeros(2, 2)}, str(other))
    with pytest.raises(ConfigError, match="holds no projector weights"):
        build_model(_cfg(path=str(other)))
    wrong = {
        k: torch.zeros(v.shape[0], v.shape[-1] + 1) if v.dim() == 2 else v
        for k, v in _random_like(fresh.connector, 5).items()
    }
    bad = tmp_path / "shape.safetensors"
    save_file({f"connector.{k}": v for k, v in wrong.items()}, str(bad))
    with pytest.raises(ConfigError, match=r"shape.safetensors: linear_1.weight has shape"):
        build_model(_cfg(path=str(bad)))
    part = tmp_path / "part.safetensors"
    save_file({"connector.linear_1.weight": fresh.connector.linear_1.weight.detach().clone()}, str(part))
    with pytest.raises(ConfigError, match="missing"):
        build_model(_cfg(path=str(part)))


def test_a_checkpoint_carries_the_weights_not_the_path(tmp_path, fresh):
    want = _random_like(fresh.connector, 6)
    f = tmp_path / "c.safetensors"
    save_file({f"connector.{k}": v for k, v in want.items()}, str(f))
    model, proc = build_model(_cfg(path=str(f)))
    model.save_pretrained(tmp_path / "ckpt", proc)
    f.unlink()  # the checkpoint must not need the projector file any more
    again, _ = load_pretrained(tmp_path / "ckpt")
    assert again.config.connector.path is None
    assert all(torch.equal(v, want[k]) for k, v in again.connector.state_dict().items())

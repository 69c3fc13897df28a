"""Saving never destroys a file it did not write, and a save killed halfway leaves the previous one whole.

Every ``save_*`` verb and ``export_to_peft`` refuse a folder that holds someone else's files
(or another method's checkpoint) unless ``overwrite=True``, which then replaces only the
files the save writes. Saving the same method again into its own folder is allowed.
"""

from __future__ import annotations

import json

import pytest
import safetensors.torch

from peft_teach import experiments
from peft_teach.methods import adapters, lora, prefix
from peft_teach.methods.checkpoint import CheckpointError

from tiny_models import tiny_bert_classifier


@pytest.fixture
def model():
    model = tiny_bert_classifier()
    lora.add_lora(model, ("query", "value"), r=2)
    return model


def test_a_folder_with_the_users_own_config_is_refused_and_left_untouched(model, tmp_path):
    mine = '{"my": "experiment settings"}\n'
    (tmp_path / "config.json").write_text(mine)
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match=r"did not write: \['config.json', 'notes.txt'\].*overwrite=True"):
        lora.save_lora(model, tmp_path)
    assert (tmp_path / "config.json").read_text() == mine and not (tmp_path / "weights.safetensors").exists()
    lora.save_lora(model, tmp_path, overwrite=True)  # asked for: only the checkpoint's two files are written
    assert json.loads((tmp_path / "config.json").read_text())["method"] == "lora"
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_another_methods_checkpoint_is_refused_the_same_method_saves_again(model, tmp_path):
    other = tiny_bert_classifier()
    prefix.add_prefix(other, length=2)
    prefix.save_prefix(other, tmp_path)
    with pytest.raises(CheckpointError, match="holds a 'prefix' checkpoint; saving 'lora' there would replace it"):
        lora.save_lora(model, tmp_path)
    prefix.save_prefix(other, tmp_path)  # the same method, saved again: allowed
    lora.save_lora(model, tmp_path, overwrite=True)
    assert json.loads((tmp_path / "config.json").read_text())["method"] == "lora"


def test_a_file_where_a_folder_is_expected_is_refused(model, tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(CheckpointError, match="is a file, not a folder"):
        lora.save_lora(model, tmp_path / "a_file")


def test_export_to_peft_refuses_foreign_files_and_exports_again_into_its_own_folder(model, tmp_path):
    (tmp_path / "README.md").write_text("mine")
    with pytest.raises(CheckpointError, match=r"export_to_peft did not write: \['README.md'\]"):
        lora.export_to_peft(model, tmp_path)
    lora.export_to_peft(model, tmp_path / "export")
    lora.export_to_peft(model, tmp_path / "export")  # its own folder: allowed
    lora.export_to_peft(model, tmp_path, overwrite=True)
    assert (tmp_path / "README.md").read_text() == "mine"


def test_a_save_killed_while_writing_leaves_the_previous_checkpoint_whole(model, tmp_path, monkeypatch):
    lora.save_lora(model, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def killed(tensors, filename, *args, **kwargs):
        with open(filename, "wb") as half:
            half.write(b"\x00" * 10)
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr("peft_teach.methods.checkpoint.save_file", killed)
    with pytest.raises(KeyboardInterrupt):
        lora.save_lora(model, tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no half file, no leftover
    monkeypatch.undo()
    assert safetensors.torch.load_file(str(tmp_path / "weights.safetensors"))


def test_a_trained_adapter_and_its_recipe_save_again_but_not_over_foreign_files(tmp_path):
    model = tiny_bert_classifier()
    adapters.add_adapter(model, "task", adapters.AdapterConfig(reduction_factor=4))
    experiments.save_trained_adapter(model, "task", tmp_path / "a", {"steps": 1})
    experiments.save_trained_adapter(model, "task", tmp_path / "a", {"steps": 2})  # its own files: allowed
    assert json.loads((tmp_path / "a" / "recipe.json").read_text()) == {"steps": 2}
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "data.csv").write_text("1,2")
    with pytest.raises(CheckpointError, match="data.csv"):
        experiments.save_trained_adapter(model, "task", tmp_path / "b", {"steps": 1})

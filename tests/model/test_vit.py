"""The model wrapper (model/vit.py): presets, our head, freezing, input size, and the offline error."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from helpers import CLASSES, ROOT

from vitclassifier.errors import UserError
from vitclassifier.model.checkpoint import load_checkpoint, save_model
from vitclassifier.model.vit import DropoutLinear, create_model, encoder_blocks, freeze, resolve_source

LABELS = ["a", "b", "c"]


def test_head_from_a_1000_class_checkpoint_is_replaced(tiny_vit):
    model, prep = create_model(str(tiny_vit), LABELS, dropout=0.3)
    assert isinstance(model.classifier, DropoutLinear)
    assert model.classifier.out_features == 3 and model.classifier.dropout.p == 0.3
    assert model.config.id2label == {0: "a", 1: "b", 2: "c"}
    assert (prep.image_size, prep.mean, prep.crop_pct) == (32, (0.5, 0.5, 0.5), 1.0)
    logits = model(pixel_values=torch.zeros(2, 3, 32, 32)).logits
    assert logits.shape == (2, 3)


def test_backbone_weights_are_loaded_not_reinitialised(tiny_vit):
    from transformers import ViTForImageClassification
    source = ViTForImageClassification.from_pretrained(tiny_vit).state_dict()
    loaded = create_model(str(tiny_vit), LABELS)[0].state_dict()
    backbone = [key for key in source if not key.startswith("classifier.")]
    assert len(backbone) > 10 and set(backbone) <= set(loaded)
    for key in backbone:
        assert torch.equal(loaded[key], source[key]), key


def test_freeze_backbone_and_last_blocks(tiny_vit):
    model, _ = create_model(str(tiny_vit), LABELS)
    freeze(model, "backbone")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"classifier.weight", "classifier.bias"}
    model, _ = create_model(str(tiny_vit), LABELS)
    freeze(model, "1")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    first, last = encoder_blocks(model)  # the tiny ViT has two blocks
    assert all(p.requires_grad for p in last.parameters())
    assert not any(p.requires_grad for p in first.parameters())
    assert not any(n.startswith("vit.embeddings") for n in trainable)
    assert "vit.layernorm.weight" in trainable and "classifier.weight" in trainable
    with pytest.raises(UserError):
        freeze(model, "some")


def test_image_size_interpolates_position_embeddings(tiny_vit):
    model, prep = create_model(str(tiny_vit), LABELS, image_size=48)
    assert prep.image_size == 48 and model.config.image_size == 48
    assert model.vit.embeddings.position_embeddings.shape == (1, 1 + 6 * 6, 32)
    assert model(pixel_values=torch.zeros(1, 3, 48, 48)).logits.shape == (1, 3)
    with pytest.raises(UserError, match="multiple of the patch size"):
        create_model(str(tiny_vit), LABELS, image_size=50)


def test_no_pretrained_builds_the_preset_offline():
    model, prep = create_model("vit-tiny", LABELS, pretrained=False, image_size=64)
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (192, 12, 3)
    assert prep.image_size == 64 and prep.mean == (0.485, 0.456, 0.406)
    with pytest.raises(UserError, match="needs a preset"):
        create_model("someone/model", LABELS, pretrained=False)


def test_not_a_checkpoint_directory_is_refused(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        resolve_source(str(tmp_path))


@pytest.mark.slow
def test_unavailable_weights_give_one_clear_message(tmp_path, pattern_data):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty-cache")}
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--data", str(pattern_data),
                             "--model", "vit-small", "--output-dir", str(tmp_path / "out"), "--epochs", "1"],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert "facebook/deit-small-patch16-224" in message
    for way_out in ("connect once", "--model /path/to/checkpoint", "--no-pretrained"):
        assert way_out in message
    assert not (tmp_path / "out" / "best").exists()


def test_a_preset_typo_gets_a_suggestion_and_a_broken_directory_a_clear_error(tmp_path, tiny_vit):
    with pytest.raises(UserError, match="Did you mean vit-tiny"):
        resolve_source("vit-tiyn")
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        (broken / name).write_bytes((tiny_vit / name).read_bytes())
    with pytest.raises(UserError, match="cannot load model .*broken: it has no model.safetensors"):
        create_model(str(broken), LABELS)


def test_a_preset_typo_gets_a_suggestion_with_no_pretrained_too():
    with pytest.raises(UserError, match="Did you mean vit-tiny"):
        create_model("vit-tiy", ["a", "b"], pretrained=False)


def test_a_small_model_from_scratch_gets_small_patches_recorded_in_its_checkpoint(tmp_path):
    model, prep = create_model("vit-tiny", CLASSES, pretrained=False, image_size=48)
    assert model.config.patch_size == 8 and model.vit.embeddings.position_embeddings.shape[1] == 1 + 6 * 6
    save_model(model, prep, tmp_path / "best", info={})
    loaded, loaded_prep, labels = load_checkpoint(tmp_path / "best")
    assert loaded.config.patch_size == 8 and loaded_prep.image_size == 48 and labels == CLASSES
    assert loaded(pixel_values=torch.zeros(2, 3, 48, 48)).logits.shape == (2, 3)
    big, _ = create_model("vit-tiny", CLASSES, pretrained=False, image_size=224)
    assert big.config.patch_size == 16  # the presets' own patches where they were made for
    with pytest.raises(UserError, match="multiple of the patch size 8"):
        create_model("vit-tiny", CLASSES, pretrained=False, image_size=44)


"""Captioned image folders (metadata.jsonl, kohya .txt) and the built-in captioned digits."""

import json

import numpy as np
import pytest
from PIL import Image

from aigc_cli.config import ExperimentConfig
from aigc_cli.data.images import CaptionedImages, digit_captions, prepare_images
from aigc_cli.errors import AigcError


def _cfg(source, out, **image):
    return ExperimentConfig.model_validate({"data": {"source": str(source), "prepared_dir": str(out), "val_fraction": 0.2,
                                                     "image": {"size": 8, "channels": 3, "captions": True, **image}},
                                            "model": {"backend": "ddpm"}})


def _png(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((12, 10, 3), value, dtype=np.uint8)).save(path)


def _tokenize(texts):
    import torch

    return torch.tensor([[len(t)] for t in texts])


def test_metadata_jsonl_and_kohya_txt_captions_and_skips_counted(tmp_path):
    src = tmp_path / "src"
    for i in range(8):
        _png(src / "a" / f"{i}.png", i * 20)
    (src / "a" / "metadata.jsonl").write_text("\n".join(json.dumps({"file_name": f"{i}.png", "text": f"grey {i}"}) for i in range(5))
                                             + "\n" + json.dumps({"file_name": "5.png", "text": ""}) + "\nnot json\n")
    (src / "a" / "6.txt").write_text("kohya six\n")  # 7.png has no caption at all
    result = prepare_images(_cfg(src, tmp_path / "prep"), log=lambda m: None)
    meta = result.meta
    assert meta["train_images"] + meta["val_images"] == 6
    assert meta["skipped_captions"] == 2
    assert any("5.png" in e and "no text" in e for e in meta["skipped_caption_examples"])
    assert any("7.png" in e for e in meta["skipped_caption_examples"])
    texts = json.loads((tmp_path / "prep" / "train_captions.json").read_text()) + json.loads((tmp_path / "prep" / "val_captions.json").read_text())
    assert sorted(texts) == sorted([f"grey {i}" for i in range(5)] + ["kohya six"])


def test_folder_without_any_caption_is_exit_2(tmp_path):
    for i in range(3):
        _png(tmp_path / "src" / f"{i}.png", 10)
    with pytest.raises(AigcError) as err:
        prepare_images(_cfg(tmp_path / "src", tmp_path / "prep"), log=lambda m: None)
    assert err.value.exit_code == 2 and "caption" in str(err.value)


def test_digit_captions_name_digit_weight_and_inversion():
    from sklearn.datasets import load_digits

    d = load_digits()
    pixels = np.round(d.images * 255 / 16).astype(np.uint8)
    captions, inverted = digit_captions(pixels, d.target, seed=0)
    assert captions[0].startswith("a ") and "zero" in captions[0]
    assert 0.15 < inverted.mean() < 0.35
    assert all(c.endswith(", inverted") == bool(v) for c, v in zip(captions, inverted))
    mass = pixels.reshape(len(pixels), -1).sum(1)
    sevens = d.target == 7
    thin = np.array([" thin " in c for c in captions]) & sevens
    bold = np.array([" bold " in c for c in captions]) & sevens
    assert thin.sum() > 30 and bold.sum() > 30 and mass[thin].max() < mass[bold].min()


def test_builtin_digits_batches_with_dropout_and_flip(tmp_path):
    cfg = _cfg("digits", tmp_path / "prep", crop="random")
    prepare_images(cfg, log=lambda m: None)
    import torch

    data = CaptionedImages(tmp_path / "prep", "train", _tokenize, caption_dropout=0.5, random_flip=True)
    pixels, ids = data.random_batch(64, None, torch.Generator().manual_seed(0))
    assert pixels.shape == (64, 3, 8, 8) and pixels.min() >= -1 and pixels.max() <= 1
    empty = (ids[:, 0] == 0).float().mean()
    assert 0.3 < empty < 0.7  # about half dropped to ""
    again, ids2 = data.random_batch(64, None, torch.Generator().manual_seed(0))
    assert torch.equal(pixels, again) and torch.equal(ids, ids2)
    plain = CaptionedImages(tmp_path / "prep", "train", _tokenize)
    assert (plain.random_batch(64, None, torch.Generator().manual_seed(0))[1][:, 0] > 0).all()

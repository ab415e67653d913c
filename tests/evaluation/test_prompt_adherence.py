"""Prompt adherence on the built-in captioned digits, tested honestly: the real held-out digits
with their own captions score high, the same images with shuffled captions score near chance."""

import numpy as np
import pytest
import yaml

from aigc_cli.config import load_config
from aigc_cli.errors import AigcError
from aigc_cli.evaluation.prompt_adherence import DigitReader, parse_prompt, prompt_adherence, reader_form


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from aigc_cli.data.images import CaptionedImages, prepare_images

    root = tmp_path_factory.mktemp("adherence")
    config = root / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"source": "digits", "prepared_dir": str(root / "prep"), "val_fraction": 0.2,
                                               "image": {"size": 16, "channels": 1, "captions": True}},
                                      "model": {"backend": "latent-diffusion"}}))
    prepare_images(load_config(config), log=lambda m: None)
    train, val = CaptionedImages(root / "prep", "train", list), CaptionedImages(root / "prep", "val", list)
    return np.asarray(train.images), train.captions, np.asarray(val.images), val.captions


@pytest.fixture(scope="module")
def reader():
    return DigitReader()


def test_the_reader_reads_held_out_digits(reader):
    assert reader.heldout_accuracy > 0.9 and reader.heldout_images == 450


def test_real_digits_with_their_captions_score_high(digits, reader):
    train, train_captions, val, val_captions = digits
    metrics, details = prompt_adherence(val, val_captions, train, train_captions, reader)
    assert metrics["adherence"] > 0.9
    assert metrics["adherence_inverted"] > 0.95 and metrics["adherence_weight"] > 0.8
    assert details["digit_chance"] == 0.1 and details["weight_chance"] == pytest.approx(1 / 3)
    assert 0.5 < details["inverted_chance"] < 0.75  # a quarter of the captions say inverted


def test_shuffled_captions_score_near_chance(digits, reader):
    train, train_captions, val, val_captions = digits
    shuffled = list(np.random.default_rng(0).permutation(val_captions))
    metrics, details = prompt_adherence(val, shuffled, train, train_captions, reader)
    assert metrics["adherence"] < 0.2
    assert metrics["adherence_weight"] < 0.5
    assert abs(metrics["adherence_inverted"] - details["inverted_chance"]) < 0.1


def test_an_inverted_image_reads_as_the_original(digits):
    _, _, val, _ = digits
    plain, was_inverted = reader_form(val[:20])
    flipped, now_inverted = reader_form(255 - val[:20])
    assert np.allclose(plain, flipped, atol=1e-6) and (was_inverted != now_inverted).all()


def test_prompts_are_parsed_for_what_they_name():
    p = parse_prompt("a bold seven, inverted")
    assert (p.digit, p.weight, p.inverted) == (7, "bold", True)
    p = parse_prompt("A thin Zero")
    assert (p.digit, p.weight, p.inverted) == (0, "thin", False)
    assert parse_prompt("a one or a two").digit is None  # two digits named: not scored
    with pytest.raises(AigcError, match="no prompt names a digit"):
        prompt_adherence(np.zeros((1, 1, 8, 8), np.uint8), ["a cat"], np.zeros((1, 1, 8, 8), np.uint8), ["a one"], DigitReader.__new__(DigitReader))

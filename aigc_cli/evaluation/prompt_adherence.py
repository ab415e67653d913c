"""Prompt adherence of text-to-image samples on the built-in captioned digits, without downloads.

A reader of digits — scikit-learn's LogisticRegression fitted on three quarters of scikit-learn's
own 8×8 digits, its accuracy on the other quarter reported — says which digit each generated
image shows; the score is the share of samples whose digit is the one the prompt names ("a bold
seven, inverted" → 7). Chance is 0.1. Before reading, each image is brought to the reader's form:
greyscale, its box-filtered 8×8 version, and light-on-dark (an image whose border is brighter than
mid-grey is inverted back, as the captions' "inverted" digits were made by flipping pixels).

The attributes the captions name are scored where they are measurable:
- inverted: the border (background) is brighter than mid-grey; the share of samples whose
  background matches whether the prompt says ", inverted". Its chance level is what a model that
  ignores the word and inverts at the training captions' rate would score.
- thin / bold: the ink mass (sum of the light-on-dark 8×8 intensities) against the reference
  images of the same digit — the lightest third is thin, the heaviest third bold, as the captions
  were made; the share of thin- or bold-prompted samples whose mass falls in the third the prompt
  names. Chance is 1/3.
Nothing here imports torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from aigc_cli.data.images import DIGIT_WORDS
from aigc_cli.errors import AigcError

READER_SIDE = 8  # scikit-learn's digits are 8×8, intensities 0..16
HELD_OUT = 0.25


@dataclass(frozen=True)
class PromptAttributes:
    digit: int | None
    weight: str | None  # "thin", "bold" or None (not named)
    inverted: bool


def parse_prompt(prompt: str) -> PromptAttributes:
    words = re.findall(r"[a-z]+", prompt.lower())
    digits = [DIGIT_WORDS.index(w) for w in words if w in DIGIT_WORDS]
    weight = next((w for w in words if w in ("thin", "bold")), None)
    return PromptAttributes(digits[0] if len(set(digits)) == 1 else None, weight, "inverted" in words)


def reader_form(images_u8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, C, H, W) → (N, 64) light-on-dark intensities in [0, 1] at 8×8, and whether each
    image was dark-on-light (its border brighter than mid-grey)."""
    from PIL import Image

    images = np.asarray(images_u8)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise AigcError(f"expected uint8 images (N, C, H, W), got {images.shape} {images.dtype}", "this is a bug in the caller; report it")
    grey = images.astype(np.float32).mean(axis=1) / 255.0
    border = np.concatenate([grey[:, 0, :], grey[:, -1, :], grey[:, 1:-1, 0], grey[:, 1:-1, -1]], axis=1).mean(axis=1)
    inverted = border > 0.5
    grey = np.where(inverted[:, None, None], 1.0 - grey, grey)
    small = np.stack([np.asarray(Image.fromarray(g, mode="F").resize((READER_SIDE, READER_SIDE), Image.Resampling.BOX)) for g in grey])
    return small.reshape(len(small), -1).clip(0.0, 1.0), inverted


class DigitReader:
    """LogisticRegression on scikit-learn's 8×8 digits scaled to [0, 1] (fitted on a seeded 75 %)."""

    def __init__(self, seed: int = 0):
        from sklearn.datasets import load_digits
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        x = digits.images.reshape(len(digits.images), -1) / 16.0
        x_train, x_test, y_train, y_test = train_test_split(x, digits.target, test_size=HELD_OUT, random_state=seed, stratify=digits.target)
        self.model = LogisticRegression(max_iter=2000, C=1.0).fit(x_train, y_train)
        self.heldout_accuracy = float(self.model.score(x_test, y_test))
        self.heldout_images = len(x_test)

    def read(self, images_u8: np.ndarray) -> np.ndarray:
        """The digit each image shows."""
        return self.model.predict(reader_form(images_u8)[0])


def ink_thirds(images_u8: np.ndarray, digits: np.ndarray) -> dict[int, tuple[float, float]]:
    """Per digit: the 1/3 and 2/3 quantiles of the reference images' ink mass (in reader form)."""
    mass = reader_form(images_u8)[0].sum(axis=1)
    return {int(d): tuple(np.quantile(mass[digits == d], [1 / 3, 2 / 3])) for d in np.unique(digits)}


def check_digit_prompts(prompts: list[str], where: str = "the prompts") -> None:
    """Some prompt names a digit: else there is nothing to score (checked before any image is sampled)."""
    if not any(parse_prompt(p).digit is not None for p in prompts):
        example = f" (e.g. {prompts[0][:60]!r})" if prompts else ""
        raise AigcError(f"eval.metrics adherence: no prompt names a digit (zero ... nine) in {where}{example}, so prompt adherence cannot be measured",
                        "adherence scores models trained on the built-in captioned digits (data.source=digits, data.image.captions=true); use clip_score or fid for other captions")


def prompt_adherence(images_u8: np.ndarray, prompts: list[str], reference_u8: np.ndarray, reference_captions: list[str],
                     reader: DigitReader) -> tuple[dict[str, float], dict]:
    """(metrics, details) for images generated from `prompts` (one prompt per image), against the
    reference images and captions (the prepared training split) for the attribute levels."""
    if len(images_u8) != len(prompts):
        raise AigcError(f"{len(images_u8)} images for {len(prompts)} prompts", "this is a bug in the caller; report it")
    check_digit_prompts(prompts)
    wanted = [parse_prompt(p) for p in prompts]
    named = np.array([w.digit is not None for w in wanted])
    features, inverted = reader_form(images_u8)
    read = reader.model.predict(features)
    digit = np.array([w.digit if w.digit is not None else -1 for w in wanted])
    match = read[named] == digit[named]
    metrics = {"adherence": float(match.mean())}
    details = {"samples": len(prompts), "digit_prompts": int(named.sum()), "digit_chance": 0.1,
               "reader": {"kind": "scikit-learn LogisticRegression on sklearn digits 8x8", "heldout_accuracy": reader.heldout_accuracy,
                          "heldout_images": reader.heldout_images},
               "per_digit": {DIGIT_WORDS[d]: float(match[digit[named] == d].mean()) for d in range(10) if (digit[named] == d).any()}}

    reference = [parse_prompt(c) for c in reference_captions]
    wants_inverted = np.array([w.inverted for w in wanted])
    metrics["adherence_inverted"] = float((inverted == wants_inverted).mean())
    rate = float(np.mean([r.inverted for r in reference])) if reference else 0.0
    share = float(wants_inverted.mean())
    details["inverted_chance"] = share * rate + (1 - share) * (1 - rate)

    ref_digits = np.array([r.digit if r.digit is not None else -1 for r in reference])
    thirds = ink_thirds(reference_u8, ref_digits)
    mass = features.sum(axis=1)
    weighted = [i for i, w in enumerate(wanted) if w.weight and w.digit in thirds]
    if weighted:
        def weight_of(i: int) -> str:
            low, high = thirds[wanted[i].digit]
            return "thin" if mass[i] <= low else "bold" if mass[i] >= high else "regular"

        metrics["adherence_weight"] = float(np.mean([weight_of(i) == wanted[i].weight for i in weighted]))
        details.update(weight_prompts=len(weighted), weight_chance=1 / 3)
    return metrics, details

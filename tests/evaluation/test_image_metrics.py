"""aigc_cli.evaluation.image_metrics: PSNR/SSIM against known values and skimage, FID/KID in the eval
classifier's feature space, the classifier itself (accuracy, determinism, caching), coverage,
and the Inception error paths (torch-fidelity is not installed here)."""

from __future__ import annotations

import math
import sys
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity

from aigc_cli.evaluation import image_metrics as im
from aigc_cli.errors import AigcError


@pytest.fixture(autouse=True)
def one_torch_thread():
    """This machine's 2 cores are shared with other training runs: there two OpenMP threads stall
    at every barrier, and small ops run far slower than on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn digits as aigc prepares them: 0..16 → 0..255, upscaled 8×8 → 16×16."""
    from sklearn.datasets import load_digits

    data = load_digits()
    pixels = torch.as_tensor(np.round(data.images * (255.0 / 16.0)), dtype=torch.float32)[:, None]
    upscaled = F.interpolate(pixels, size=16, mode="bilinear", align_corners=False).round().clamp(0, 255)
    return upscaled.to(torch.uint8).numpy(), data.target.astype(np.int64)


@pytest.fixture(scope="module")
def trained(digits):
    images, labels = digits
    return im.train_classifier(images, labels, 10, log=lambda line: None)


def random_images(n: int, size: int, channels: int = 1, high: int = 200, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, high, size=(n, channels, size, size), dtype=np.uint8)


# --- PSNR / SSIM ------------------------------------------------------------------------------

def test_psnr_of_identical_images_is_the_cap():
    images = random_images(4, 16)
    assert im.psnr(images, images) == im.PSNR_CAP


def test_psnr_of_a_constant_offset_is_exact():
    images = random_images(5, 16, channels=3)
    shifted = images + np.uint8(16)  # values stay below 216: no wrap-around
    assert im.psnr(images, shifted) == pytest.approx(20 * math.log10(255 / 16), abs=1e-4)
    assert im.psnr(torch.from_numpy(images), torch.from_numpy(shifted)) == pytest.approx(20 * math.log10(255 / 16), abs=1e-4)


def test_psnr_is_the_mean_of_per_image_values():
    images = random_images(2, 16)
    shifted = images.copy()
    shifted[0] += 16
    shifted[1] += 32
    expected = (20 * math.log10(255 / 16) + 20 * math.log10(255 / 32)) / 2
    # PSNR of the pooled MSE would be 10*log10(255² / 640) ≈ 20.07, not ≈ 21.04
    assert im.psnr(images, shifted) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("size,channels", [(16, 1), (8, 1), (16, 3)])
def test_ssim_of_an_image_with_itself_is_one(size, channels):
    images = random_images(3, size, channels)
    assert im.ssim(images, images) == pytest.approx(1.0, abs=1e-9)


def test_ssim_window_shrinks_to_fit_small_images():
    assert im.ssim_gaussian_sigma(16, 16) == 1.5
    assert im.ssim_gaussian_sigma(8, 8) == pytest.approx(1.5 * 7 / 11)
    assert im.ssim_gaussian_sigma(3, 5) == pytest.approx(1.5 * 3 / 11)
    with pytest.raises(AigcError, match="3×3"):
        im.ssim_gaussian_sigma(2, 16)


@pytest.mark.parametrize("size", [16, 8])
def test_ssim_matches_skimage_with_the_same_border_handling(size):
    """torchmetrics averages over every pixel with reflect-padded borders; skimage averages the
    windows fully inside the image. Padding the images the same way first makes them comparable."""
    reference = random_images(3, size, seed=1)
    noise = np.random.default_rng(2).integers(0, 60, size=reference.shape)
    reconstructed = (reference + 16 + noise).astype(np.uint8)  # offset plus noise: SSIM well below 1
    sigma = im.ssim_gaussian_sigma(size, size)
    pad = int(3.5 * sigma + 0.5)
    expected = np.mean([
        structural_similarity(np.pad(ref[0].astype(np.float64), pad, mode="reflect"),
                              np.pad(rec[0].astype(np.float64), pad, mode="reflect"),
                              data_range=255, gaussian_weights=True, sigma=sigma, use_sample_covariance=False)
        for ref, rec in zip(reference, reconstructed)
    ])
    assert expected < 0.95
    assert im.ssim(reference, reconstructed) == pytest.approx(expected, abs=1e-6)


def test_read_only_memory_maps_are_accepted(tmp_path):
    """Prepared splits are opened as read-only np.memmap."""
    images = random_images(3, 16)
    images.tofile(tmp_path / "images.u8")
    mapped = np.memmap(tmp_path / "images.u8", dtype=np.uint8, mode="r", shape=images.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when it wraps non-writable memory
        assert im.psnr(mapped, images) == im.PSNR_CAP


def test_mismatched_shapes_are_an_error():
    with pytest.raises(AigcError, match="reconstructions"):
        im.psnr(random_images(2, 16), random_images(3, 16))
    with pytest.raises(AigcError, match="uint8"):
        im.ssim(random_images(2, 16).astype(np.float32), random_images(2, 16).astype(np.float32))


# --- the classifier ---------------------------------------------------------------------------

def test_classifier_learns_digits(trained):
    model, info = trained
    assert info["heldout_accuracy"] > 0.95
    assert info["train_accuracy"] > 0.95
    assert info["epochs"] == 30
    assert info["params"] == sum(p.numel() for p in model.parameters())
    assert not model.training
    assert model.features(torch.zeros(2, 1, 16, 16)).shape == (2, model.num_features)


def test_training_is_deterministic(digits):
    images, labels = digits[0][:300], digits[1][:300]
    first, _ = im.train_classifier(images, labels, 10, seed=3, epochs=2, log=lambda line: None)
    second, _ = im.train_classifier(images, labels, 10, seed=3, epochs=2, log=lambda line: None)
    other, _ = im.train_classifier(images, labels, 10, seed=4, epochs=2, log=lambda line: None)
    for name, weight in first.state_dict().items():
        assert torch.equal(weight, second.state_dict()[name]), name
    assert not torch.equal(first.head.weight, other.head.weight)


def test_training_gives_the_same_weights_whatever_the_thread_count(digits):
    images, labels = digits[0][:300], digits[1][:300]
    threads = torch.get_num_threads()
    weights = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            model, _ = im.train_classifier(images, labels, 10, epochs=2, log=lambda line: None)
            assert torch.get_num_threads() == count  # restored afterwards
            weights.append(model.state_dict())
    finally:
        torch.set_num_threads(threads)
    for name, weight in weights[0].items():
        assert torch.equal(weight, weights[1][name]), name


def test_save_and_load_round_trip(trained, digits, tmp_path):
    model, info = trained
    im.save_classifier(model, info, tmp_path / "clf")
    loaded, loaded_info = im.load_classifier(tmp_path / "clf")
    batch = torch.from_numpy(digits[0][:64]).float() / 127.5 - 1
    with torch.no_grad():
        assert torch.equal(model(batch), loaded(batch))
    assert loaded_info == info
    assert im.classifier_features(loaded).name == f"classifier:{tmp_path / 'clf'}"
    with pytest.raises(AigcError, match="cannot load the eval classifier"):
        im.load_classifier(tmp_path / "missing")


def test_cached_classifier_retrains_only_when_the_data_changes(digits, tmp_path):
    images, labels = digits[0][:120], digits[1][:120]
    lines: list[str] = []
    _, info = im.cached_classifier(tmp_path, images, labels, 10, log=lines.append)
    assert (tmp_path / "eval_classifier" / "classifier.safetensors").exists()
    assert any("held-out accuracy" in line for line in lines) and not any("reusing" in line for line in lines)

    lines.clear()
    _, again = im.cached_classifier(tmp_path, images, labels, 10, log=lines.append)
    assert any("reusing" in line for line in lines) and not any("epoch" in line for line in lines)
    assert again == info

    lines.clear()
    changed = labels.copy()
    changed[0] = (changed[0] + 1) % 10
    _, retrained = im.cached_classifier(tmp_path, images, changed, 10, log=lines.append)
    assert any("retraining" in line for line in lines) and any("epoch" in line for line in lines)
    assert retrained["fingerprint"] != info["fingerprint"]

    lines.clear()
    (tmp_path / "eval_classifier" / "classifier.json").write_text("{ damaged")
    _, recovered = im.cached_classifier(tmp_path, images, labels, 10, log=lines.append)
    assert any("cannot load" in line for line in lines)
    assert recovered["fingerprint"] == info["fingerprint"]


def test_class_coverage_of_real_digits(trained, digits):
    model, _ = trained
    images, labels = digits
    coverage = im.class_coverage(model, images, 10)
    assert coverage["confident_share"] > 0.8
    assert all(share > 0.05 for share in coverage["class_shares"])
    assert sum(coverage["class_shares"]) == pytest.approx(1.0)
    assert coverage["classes_covered"] == 10
    assert coverage["min_class_share"] == min(coverage["class_shares"])

    only_zeros = im.class_coverage(model, images[labels == 0], 10)
    assert only_zeros["class_shares"][0] > 0.9
    assert only_zeros["min_class_share"] == 0.0
    assert only_zeros["classes_covered"] < 10


# --- FID / KID --------------------------------------------------------------------------------

def test_fid_is_zero_for_a_set_against_itself_and_large_across_classes(trained, digits):
    space = im.classifier_features(trained[0])
    images, labels = digits
    low, high = images[labels < 5], images[labels >= 5]
    assert abs(im.fid(images, images, space)) < 1e-3
    halves = im.fid(images[0::2], images[1::2], space)
    across = im.fid(low, high, space)
    assert across > 10 * halves


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # ReLU units that never fire: singular covariance
def test_fid_agrees_with_the_formula_on_the_same_features(trained, digits):
    """Checks the batching: torchmetrics accumulates 256 images at a time; scipy sees them all at once."""
    space = im.classifier_features(trained[0])
    images, labels = digits
    real, fake = images[labels < 5], images[labels >= 5]
    with torch.no_grad():
        f_real = space.module()(torch.from_numpy(real)).numpy()
        f_fake = space.module()(torch.from_numpy(fake)).numpy()
    mu_r, mu_f = f_real.mean(0), f_fake.mean(0)
    cov_r, cov_f = np.cov(f_real, rowvar=False), np.cov(f_fake, rowvar=False)
    expected = ((mu_r - mu_f) ** 2).sum() + np.trace(cov_r + cov_f - 2 * scipy.linalg.sqrtm(cov_r @ cov_f).real)
    assert im.fid(real, fake, space) == pytest.approx(expected, rel=1e-4)


def test_kid_is_near_zero_for_a_set_against_itself(trained, digits):
    space = im.classifier_features(trained[0])
    images, labels = digits
    low, high = images[labels < 5][:400], images[labels >= 5][:400]  # subsets of 400: KID costs grow as n²
    same_mean, _ = im.kid(low, low, space)
    across_mean, across_std = im.kid(low, high, space)
    # Not exactly 0: when the two subsets share images, k(x, x) terms enter the cross term and
    # pull the unbiased estimate down by about (2/m)(mean k(x, x) - mean k(x, y)).
    assert abs(same_mean) < 0.05 * across_mean
    assert across_std >= 0
    assert im.kid(low, high, space) == (across_mean, across_std)  # reproducible
    small = im.kid(images[:50], images[50:90], space)  # default subset_size fits 40 images
    assert all(math.isfinite(v) for v in small)
    with pytest.raises(AigcError, match="subset size"):
        im.kid(images[:50], images[50:90], space, subset_size=41)


def test_images_of_another_size_are_an_error(trained):
    space = im.classifier_features(trained[0])
    with pytest.raises(AigcError, match="trained on"):
        im.fid(random_images(4, 8), random_images(4, 8), space)


# --- Inception --------------------------------------------------------------------------------

def test_inception_weights_file_must_exist(tmp_path):
    missing = tmp_path / "no" / "pt_inception.pth"
    with pytest.raises(AigcError) as caught:
        im.inception_features(str(missing))
    assert str(missing) in caught.value.message


def test_inception_without_torch_fidelity_names_the_package(tmp_path, monkeypatch):
    weights = tmp_path / "pt_inception.pth"
    weights.write_bytes(b"not really weights")
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # makes `import torch_fidelity` fail
    with pytest.raises(AigcError) as caught:
        im.inception_features(str(weights))
    assert "torch-fidelity" in caught.value.message
    assert "pip install torch-fidelity" in caught.value.hint

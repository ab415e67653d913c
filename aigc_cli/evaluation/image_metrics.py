"""Image metrics for `aigc eval`: PSNR and SSIM of reconstructions, FID and KID between generated
and held-out real images, and how evenly generated images cover the classes.

The arithmetic is torchmetrics'; this module only chooses settings, batches the work and picks
the feature space. Inception weights cannot be downloaded here, so FID/KID are computed either
with a local Inception-v3 weights file or in the feature space of a small CNN that aigc trains on
the labelled prepared data (`DigitClassifier`, cached in `<prepared_dir>/eval_classifier/`).
Numbers from the two spaces are not comparable with each other, nor classifier-space FID with
published FIDs; `FeatureSpace.name` says which one a report used.

Images are uint8 numpy arrays or torch tensors of shape (N, C, H, W), C = 1 or 3, values 0..255.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from aigc_cli.runs.atomic_files import staging_dir, write_json_atomic
from aigc_cli.errors import AigcError

BATCH = 256
# Bump when the classifier, its training or its files change: cached classifiers are retrained.
CLASSIFIER_FORMAT = "aigc-eval-classifier-v1"
CLASSIFIER_DIR = "eval_classifier"
WEIGHTS_FILE = "classifier.safetensors"
CONFIG_FILE = "classifier.json"
Images = np.ndarray | torch.Tensor  # uint8, (N, C, H, W)


def _as_images(images: Images, what: str) -> torch.Tensor:
    """uint8 (N, C, H, W) numpy array or tensor → uint8 CPU tensor, or an AigcError saying what is wrong."""
    if isinstance(images, torch.Tensor):
        tensor = images
    else:
        array = np.ascontiguousarray(images)
        if not array.flags.writeable:
            array = array.copy()  # prepared splits are read-only memory maps, which torch warns about
        tensor = torch.from_numpy(array)
    if tensor.dtype != torch.uint8 or tensor.dim() != 4 or tensor.shape[1] not in (1, 3):
        raise AigcError(f"{what}: expected uint8 images of shape (N, C, H, W) with C = 1 or 3, "
                        f"got {tuple(tensor.shape)} {tensor.dtype}", "this is a bug in the caller; report it")
    return tensor.cpu()


def _pair(reference: Images, reconstructed: Images) -> tuple[torch.Tensor, torch.Tensor]:
    ref = _as_images(reference, "reference images")
    rec = _as_images(reconstructed, "reconstructed images")
    if ref.shape != rec.shape:
        raise AigcError(f"reference images are {tuple(ref.shape)} but reconstructions are {tuple(rec.shape)}",
                        "compare each image with its own reconstruction")
    return ref, rec


# --- reconstruction quality -------------------------------------------------------------------

def psnr(reference: Images, reconstructed: Images) -> float:
    """Mean over images of each image's PSNR in dB (data_range 255), via torchmetrics.

    Per image, then the mean, so one bad image cannot hide behind a dataset-wide MSE. An image
    reconstructed exactly has infinite PSNR (torchmetrics' and skimage's answer); it counts as
    PSNR_CAP dB here, so the mean stays a finite number that JSON reports can hold.
    """
    ref, rec = _pair(reference, reconstructed)
    per_image = [peak_signal_noise_ratio(rec[i:i + BATCH].double(), ref[i:i + BATCH].double(),
                                         data_range=255.0, reduction="none", dim=(1, 2, 3))
                 for i in range(0, len(ref), BATCH)]
    return float(torch.cat(per_image).clamp(max=PSNR_CAP).mean())


# dB. The best inexact image (one level off in one of n values) scores 48.1 + 10·log10(n) dB:
# 72 dB at 16×16, 96 dB at 256×256, so below the cap for the sizes this toolkit trains on.
PSNR_CAP = 100.0


def ssim_gaussian_sigma(height: int, width: int) -> float:
    """The Gaussian sigma used for SSIM on images of this size.

    The standard window is sigma 1.5, which torchmetrics (like skimage) truncates at 3.5 sigma:
    an 11×11 window. Images smaller than 11 px get the largest odd window w that fits and
    sigma = 1.5 * w / 11, i.e. the same Gaussian shape scaled down (w = 9, 7, 5, 3).
    """
    window = min(11, height, width)
    window -= 1 - window % 2  # largest odd size that fits
    if window < 3:
        raise AigcError(f"SSIM needs images of at least 3×3 pixels, got {height}×{width}", "use larger images")
    return 1.5 * window / 11


def ssim(reference: Images, reconstructed: Images) -> float:
    """Mean over images of torchmetrics' SSIM (data_range 255, Gaussian window, see ssim_gaussian_sigma).

    torchmetrics averages the SSIM map over every pixel, reflect-padding the image for windows
    at the border; skimage instead averages only the windows fully inside the image, so the two
    differ on small images. Channels are averaged.
    """
    ref, rec = _pair(reference, reconstructed)
    sigma = ssim_gaussian_sigma(ref.shape[2], ref.shape[3])
    per_image = [structural_similarity_index_measure(rec[i:i + BATCH].double(), ref[i:i + BATCH].double(),
                                                     gaussian_kernel=True, sigma=sigma, data_range=255.0,
                                                     reduction="none")
                 for i in range(0, len(ref), BATCH)]
    return float(torch.cat(per_image).mean())


# --- the classifier whose features FID/KID use when there are no Inception weights ------------

class DigitClassifier(torch.nn.Module):
    """A small CNN for C×S×S images scaled to [-1, 1]: three 3×3 convs (pooling after the first
    two), global average pooling, a linear head. The pooled vector (`num_features` = 2 * width)
    is the feature space for FID/KID.
    """

    def __init__(self, channels: int, num_classes: int, size: int, width: int = 32):
        super().__init__()
        self.config = {"channels": channels, "num_classes": num_classes, "size": size, "width": width}
        self.num_features = 2 * width  # torchmetrics reads this instead of running a dummy image
        self.source: str | None = None  # the directory it was saved to or loaded from, for reports
        # Pooling early keeps training to seconds on 2 CPU cores; 16×16 digits need no more.
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(channels, width, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(width, 2 * width, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(2 * width, 2 * width, 3, padding=1), torch.nn.ReLU(),
        )
        self.head = torch.nn.Linear(2 * width, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _to_unit_range(images_u8: torch.Tensor) -> torch.Tensor:
    return images_u8.float() / 127.5 - 1.0


def _shift(batch: torch.Tensor, generator: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Move each image by up to `max_shift` px in x and y, filling with background (-1)."""
    n, _, h, w = batch.shape
    padded = F.pad(batch, (max_shift,) * 4, value=-1.0)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # (N, H, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # (N, 1, W)
    picked = padded.permute(0, 2, 3, 1)[torch.arange(n)[:, None, None], rows, cols]  # (N, H, W, C)
    return picked.permute(0, 3, 1, 2)


@torch.no_grad()
def _logits(model: DigitClassifier, images_u8: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(_to_unit_range(images_u8[i:i + BATCH])) for i in range(0, len(images_u8), BATCH)])


def _accuracy(model: DigitClassifier, images_u8: torch.Tensor, labels: torch.Tensor) -> float:
    return float((_logits(model, images_u8).argmax(1) == labels).double().mean())


def train_classifier(images_u8: Images, labels: np.ndarray, num_classes: int, seed: int = 0, epochs: int = 30,
                     log: Callable[[str], None] = print) -> tuple[DigitClassifier, dict]:
    """Train a DigitClassifier on square uint8 images; 10% (seeded) is held out to report accuracy.

    Deterministic on CPU for a given seed: the initial weights, the order of batches and the
    ±1 px shifts all come from `seed`, and the global RNG is left as it was.
    """
    images, targets = _training_data(images_u8, labels, num_classes)
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(images), generator=generator)
    n_heldout = max(1, len(images) // 10)
    heldout, train = order[:n_heldout], order[n_heldout:]
    with torch.random.fork_rng(devices=[]):  # module init draws from the global RNG
        torch.manual_seed(seed)
        model = DigitClassifier(images.shape[1], num_classes, images.shape[2])
    # One thread: CPU conv kernels split their sums by thread count, so the weights would differ
    # between machines; and ops this small gain little from threads but stall for seconds at
    # every barrier when the cores are shared (as when training runs beside).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _fit(model, images[train], targets[train], epochs, generator, log)
    finally:
        torch.set_num_threads(threads)
    info = {
        "train_accuracy": _accuracy(model, images[train], targets[train]),
        "heldout_accuracy": _accuracy(model, images[heldout], targets[heldout]),
        "epochs": epochs,
        "params": sum(p.numel() for p in model.parameters()),
        "seed": seed,
        "train_images": len(train),
        "heldout_images": n_heldout,
        "train_seconds": round(time.perf_counter() - started, 2),
    }
    log(f"eval classifier: held-out accuracy {info['heldout_accuracy']:.3f} on {n_heldout} images "
        f"({info['train_seconds']} s)")
    return model, info


def _training_data(images_u8: Images, labels: np.ndarray, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    images = _as_images(images_u8, "classifier training images")
    targets = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    n, _, height, width = images.shape
    if height != width:
        raise AigcError(f"the eval classifier needs square images, got {height}×{width}", "prepare square images")
    if len(targets) != n or n < 10:
        raise AigcError(f"the eval classifier needs at least 10 labelled images, got {n} images and {len(targets)} labels",
                        "prepare labelled data (class sub-folders, or `digits`)")
    if targets.min() < 0 or targets.max() >= num_classes:
        raise AigcError(f"labels must lie in 0..{num_classes - 1}, got {int(targets.min())}..{int(targets.max())}",
                        "this is a bug in the caller; report it")
    return images, targets


def _fit(model: DigitClassifier, images: torch.Tensor, targets: torch.Tensor, epochs: int,
         generator: torch.Generator, log: Callable[[str], None], batch_size: int = 64) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    steps = epochs * math.ceil(len(images) / batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    model.train()
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(images), generator=generator)
        total = 0.0
        for i in range(0, len(order), batch_size):
            index = order[i:i + batch_size]
            batch = _shift(_to_unit_range(images[index]), generator)
            loss = F.cross_entropy(model(batch), targets[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(index)
        if epoch % 10 == 0 or epoch == epochs:
            log(f"eval classifier: epoch {epoch}/{epochs}, loss {total / len(images):.4f}")
    model.eval()


def save_classifier(model: DigitClassifier, info: dict, directory: str | Path) -> None:
    """Write classifier.safetensors + classifier.json into `directory`, replacing it in one rename."""
    directory = Path(directory)
    with staging_dir(directory, replace=True) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / WEIGHTS_FILE))
        write_json_atomic(tmp / CONFIG_FILE, {"format": CLASSIFIER_FORMAT, **model.config, "info": info})
    model.source = str(directory)


def load_classifier(directory: str | Path) -> tuple[DigitClassifier, dict]:
    directory = Path(directory)
    try:
        config = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
        model = DigitClassifier(config["channels"], config["num_classes"], config["size"], config["width"])
        model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
        info = config["info"]
    except (OSError, KeyError, TypeError, RuntimeError, json.JSONDecodeError) as exc:
        raise AigcError(f"cannot load the eval classifier in {directory}: {exc}",
                        "delete that directory; eval trains a new classifier") from None
    model.eval()
    model.source = str(directory)
    return model, info


def classifier_fingerprint(images_u8: Images, labels: np.ndarray, num_classes: int) -> str:
    """What a cached classifier was trained on: the labels, the images' shape and bytes, the format."""
    images = np.ascontiguousarray(images_u8)
    digest = hashlib.sha256(CLASSIFIER_FORMAT.encode())
    digest.update(json.dumps({"shape": list(images.shape), "num_classes": num_classes}).encode())
    digest.update(np.ascontiguousarray(np.asarray(labels), dtype=np.int64).tobytes())
    digest.update(images.tobytes())
    return digest.hexdigest()


def cached_classifier(prepared_dir: str | Path, images_u8: Images, labels: np.ndarray, num_classes: int,
                      log: Callable[[str], None] = print) -> tuple[DigitClassifier, dict]:
    """The classifier in <prepared_dir>/eval_classifier/ if it was trained on these images and labels,
    else a newly trained one, saved there."""
    directory = Path(prepared_dir) / CLASSIFIER_DIR
    fingerprint = classifier_fingerprint(images_u8, labels, num_classes)
    if directory.exists():
        try:
            model, info = load_classifier(directory)
        except AigcError as error:  # only a cache: a damaged one is replaced, not reported
            log(f"eval classifier: {error.message}; retraining")
        else:
            if info.get("fingerprint") == fingerprint:
                log(f"eval classifier: reusing {directory} (held-out accuracy {info['heldout_accuracy']:.3f})")
                return model, info
            log(f"eval classifier: {directory} was trained on other data; retraining")
    model, info = train_classifier(images_u8, labels, num_classes, log=log)
    info["fingerprint"] = fingerprint
    save_classifier(model, info, directory)
    return model, info


# --- feature spaces and the distances computed in them ----------------------------------------

@dataclass(frozen=True)
class FeatureSpace:
    """What FID/KID are computed in. `name` goes into the report so numbers are never compared
    across spaces: "classifier:<directory>" or "inception-v3:<weights path>"."""

    name: str
    extractor: torch.nn.Module  # uint8 (N, C, H, W) → (N, F) float64, with a `num_features` attribute

    def module(self) -> torch.nn.Module:
        return self.extractor


def _check_fits(classifier: DigitClassifier, images_u8: torch.Tensor) -> None:
    """Global pooling would accept any size; features of another size would mean nothing."""
    config = classifier.config
    expected = (config["channels"], config["size"], config["size"])
    if tuple(images_u8.shape[1:]) != expected:
        raise AigcError(f"images are {tuple(images_u8.shape[1:])} but the eval classifier was trained on {expected}",
                        "evaluate images of the prepared data's size and channels")


class _ClassifierFeatures(torch.nn.Module):
    def __init__(self, classifier: DigitClassifier):
        super().__init__()
        self.classifier = classifier.eval()
        self.num_features = classifier.num_features

    def forward(self, images_u8: torch.Tensor) -> torch.Tensor:
        _check_fits(self.classifier, images_u8)
        # float64 features: torchmetrics accumulates in float64 and returns FID in the features' dtype
        return self.classifier.features(_to_unit_range(images_u8)).double()


def classifier_features(classifier: DigitClassifier) -> FeatureSpace:
    return FeatureSpace(f"classifier:{classifier.source or '<not saved>'}", _ClassifierFeatures(classifier))


class _InceptionFeatures(torch.nn.Module):
    def __init__(self, inception: torch.nn.Module):
        super().__init__()
        self.inception = inception
        self.num_features = 2048

    def forward(self, images_u8: torch.Tensor) -> torch.Tensor:
        if images_u8.shape[1] == 1:
            images_u8 = images_u8.repeat(1, 3, 1, 1)  # Inception expects RGB
        return self.inception(images_u8).double()  # it resizes to 299×299 itself


def inception_features(weights_path: str) -> FeatureSpace:
    """torchmetrics' FID Inception-v3 (2048-d pool features) with weights from a local file.

    torch-fidelity builds the network; given a path it never downloads anything.
    """
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise AigcError(f"Inception weights file not found: {path}",
                        "point to a local pt_inception-2015-12-05 weights file, or leave it unset to use the eval classifier")
    try:
        import torch_fidelity  # noqa: F401 — torchmetrics builds its Inception from it
    except ImportError:
        raise AigcError("FID/KID with Inception weights needs torch-fidelity",
                        "pip install torch-fidelity, or leave the weights unset to use the eval classifier") from None
    from torchmetrics.image.fid import NoTrainInceptionV3

    try:
        # The file is a pickle: open it with weights_only first, so one that holds anything but
        # tensors is refused before torch-fidelity unpickles it (older torch would run its code).
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 — an unpickling error names the offending global
        raise AigcError(f"{path} is not a plain weights file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})",
                        "use torch-fidelity's pt_inception-2015-12-05 weights file; aigc never unpickles code") from None
    try:
        inception = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                       feature_extractor_weights_path=str(path))
    except Exception as exc:  # noqa: BLE001 — torch.load raises many types for a wrong or damaged file
        raise AigcError(f"cannot load Inception weights from {path}: {exc}",
                        "use torch-fidelity's pt_inception-2015-12-05 weights file") from exc
    return FeatureSpace(f"inception-v3:{path}", _InceptionFeatures(inception))


def _feed(metric, real: torch.Tensor, fake: torch.Tensor) -> None:
    with torch.no_grad():
        for i in range(0, len(real), BATCH):
            metric.update(real[i:i + BATCH], real=True)
        for i in range(0, len(fake), BATCH):
            metric.update(fake[i:i + BATCH], real=False)


def fid(real_u8: Images, fake_u8: Images, space: FeatureSpace) -> float:
    """Fréchet distance between the real and generated images' features (torchmetrics)."""
    real, fake = _as_images(real_u8, "real images"), _as_images(fake_u8, "generated images")
    if len(real) < 2 or len(fake) < 2:
        raise AigcError(f"FID needs at least 2 real and 2 generated images, got {len(real)} and {len(fake)}",
                        "generate more images")
    metric = FrechetInceptionDistance(feature=space.module())
    _feed(metric, real, fake)
    return float(metric.compute())


def kid(real_u8: Images, fake_u8: Images, space: FeatureSpace, subset_size: int | None = None) -> tuple[float, float]:
    """Kernel Inception Distance (torchmetrics): mean and std over 100 random subsets.

    `subset_size` defaults to min(1000, #real, #generated) since torchmetrics needs it ≤ both.
    The subsets are drawn with a fixed seed (0), so the result is reproducible.
    """
    real, fake = _as_images(real_u8, "real images"), _as_images(fake_u8, "generated images")
    size = min(1000, len(real), len(fake)) if subset_size is None else subset_size
    if size < 2 or size > min(len(real), len(fake)):
        raise AigcError(f"KID subset size {size} must lie in 2..{min(len(real), len(fake))} "
                        f"(there are {len(real)} real and {len(fake)} generated images)", "generate more images")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = KernelInceptionDistance(feature=space.module(), subset_size=size)
    _feed(metric, real, fake)
    with torch.random.fork_rng(devices=[]):  # torchmetrics draws subsets from the global RNG
        torch.manual_seed(0)
        mean, std = metric.compute()
    return float(mean), float(std)


def class_coverage(classifier: DigitClassifier, images_u8: Images, num_classes: int, confidence: float = 0.9) -> dict:
    """How generated images spread over the classes, by the eval classifier's judgement.

    class_shares[c]: share of images classified as c; confident_share: share whose top class
    probability is ≥ `confidence`; min_class_share and classes_covered (share > 0) summarise them.
    """
    images = _as_images(images_u8, "generated images")
    if len(images) == 0:
        raise AigcError("class coverage needs at least one image", "generate some images")
    if classifier.config["num_classes"] != num_classes:
        raise AigcError(f"the eval classifier knows {classifier.config['num_classes']} classes, not {num_classes}",
                        "this is a bug in the caller; report it")
    _check_fits(classifier, images)
    probs = _logits(classifier.eval(), images).softmax(dim=1)
    top_prob, top_class = probs.max(dim=1)
    shares = (torch.bincount(top_class, minlength=num_classes).double() / len(images)).tolist()
    return {
        "class_shares": shares,
        "confident_share": float((top_prob >= confidence).double().mean()),
        "min_class_share": min(shares),
        "classes_covered": sum(share > 0 for share in shares),
    }

"""`aigc prep` for images: a folder of PNG/JPEG files or scikit-learn's `digits` → uint8 arrays.

Each image is converted to greyscale or RGB, its shorter side resized to `data.image.size` and
centre-cropped to a square, then appended to `train_images.u8` / `val_images.u8`: raw
(N, C, H, W) uint8 that `ImageArray` opens as a memory map, so a large folder never has to fit
in memory. Labels (class sub-folders, or the digit) go to `*_labels.npy`. A file that cannot be
decoded is skipped and counted, never a crash; nothing usable at all is an error.

With data.image.captions each image also keeps a caption (`*_captions.json`, one string per
image in array order): from diffusers' imagefolder `metadata.jsonl` (`file_name`, `text`) or a
kohya-style `.txt` beside the image. An image without a usable caption is skipped and counted
like an unreadable one; `CaptionedImages` serves (images, token ids) batches for text-to-image.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from aigc_cli.runs.atomic_files import remove_stale_temporaries, staging_dir, write_json_atomic
from aigc_cli.config import DataConfig, ExperimentConfig, require_data
from aigc_cli.data.prepared_dir import read_meta, reusable_output
from aigc_cli.data.records import sha256_file
from aigc_cli.errors import AigcError
from aigc_cli.runs.locks import exclusive_lock
from aigc_cli.runs.provenance import software_versions, write_provenance

META_FORMAT = "aigc-prepared-images-v1"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
BUILTIN_DIGITS = "digits"


@dataclass
class ImageResult:
    data_dir: Path
    meta: dict
    reused: bool

    def to_json(self) -> dict:
        meta = self.meta
        return {"data_dir": str(self.data_dir), "train_images": meta["train_images"], "val_images": meta["val_images"],
                "classes": meta["classes"], "skipped": meta["skipped"], "reused": self.reused}

    def summary_lines(self) -> list[str]:
        meta = self.meta
        classes = f", {len(meta['classes'])} classes" if meta["classes"] else ""
        skipped = f", {meta['skipped']} unreadable skipped" if meta["skipped"] else ""
        return [f"prepared images: {self.data_dir}" + (" (unchanged, reused)" if self.reused else ""),
                f"  {meta['channels']}×{meta['size']}×{meta['size']}, train {meta['train_images']:,}, val {meta['val_images']:,}{classes}{skipped}"]


@dataclass
class SourceImage:
    name: str  # relative path, or "digits[i]"
    label: int
    load: Callable[[], "object"]  # → PIL image; may raise on a corrupt file
    caption: str | None = None  # data.image.captions: the text (None: missing or unusable, see caption_problem)
    caption_problem: str | None = None


def prepare_images(cfg: ExperimentConfig, force: bool = False, log: Callable[[str], None] = print) -> ImageResult:
    """Holds data.prepared_dir's lock throughout (see runs/locks.py)."""
    out = Path(require_data(cfg).prepared_dir)
    with exclusive_lock(out, "prepared-data directory"):
        remove_stale_temporaries(out.parent, (out.name,))
        return _prepare_images(cfg, force, log)


def _prepare_images(cfg: ExperimentConfig, force: bool = False, log: Callable[[str], None] = print) -> ImageResult:
    data = require_data(cfg)
    out = Path(data.prepared_dir)
    items, classes, inputs, bad_lines = _list_source(data)
    fingerprint = _fingerprint(data, inputs)
    existing = read_meta(out, META_FORMAT)
    if reusable_output(out, existing, fingerprint, force):
        log(f"{out} is already prepared from the same images and settings; reusing it")
        return ImageResult(out, existing, reused=True)

    size, channels = data.image.size, data.image.channels
    log(f"converting {len(items):,} images from {data.source} to {channels}×{size}×{size}")
    rng = random.Random(data.seed)
    counts = {"train": 0, "val": 0}
    labels: dict[str, list[int]] = {"train": [], "val": []}
    skipped: list[str] = []
    skipped_captions: list[str] = []
    captions: dict[str, list[str]] = {"train": [], "val": []}
    want_captions = data.image.captions
    crop_rng = random.Random(data.seed + 1)
    with staging_dir(out, replace=True) as tmp:
        with open(tmp / "train_images.u8", "wb") as train_f, open(tmp / "val_images.u8", "wb") as val_f:
            files = {"train": train_f, "val": val_f}
            for item in items:
                split = "val" if rng.random() < data.val_fraction else "train"  # drawn first: a skipped file moves nothing else
                offset = (crop_rng.random(), crop_rng.random()) if data.image.crop == "random" else (0.5, 0.5)
                if want_captions and item.caption is None:
                    skipped_captions.append(f"{item.name}: {item.caption_problem or 'no caption'}"[:200])
                    continue
                try:
                    pixels = to_array(item.load(), size, channels, offset)
                except Exception as exc:  # noqa: BLE001 — PIL raises many types for broken files
                    skipped.append(f"{item.name}: {type(exc).__name__}: {exc}"[:200])
                    continue
                files[split].write(pixels.tobytes())
                counts[split] += 1
                labels[split].append(item.label)
                if want_captions:
                    captions[split].append(item.caption)
        if want_captions and counts["train"] + counts["val"] == 0 and skipped_captions:
            lines = f"; {len(bad_lines)} metadata.jsonl line(s) unusable, e.g. {bad_lines[0]}" if bad_lines else ""
            raise AigcError(f"data.source {data.source}: no image has a usable caption ({len(skipped_captions)} without one, e.g. {skipped_captions[0]}{lines})",
                            "give captions in metadata.jsonl (file_name, text) or a .txt file beside each image, or set data.image.captions=false")
        if counts["train"] == 0:
            why = f" ({len(skipped)} could not be read, e.g. {skipped[0]})" if skipped else ""
            raise AigcError(f"data.source {data.source} yielded no usable images{why}",
                            "point data.source at a folder of PNG/JPEG files, or use `digits`")
        if counts["val"] == 0:
            raise AigcError("the val split is empty", "add more images or raise data.val_fraction")
        has_labels = classes is not None
        for split in ("train", "val"):
            if has_labels:
                np.save(tmp / f"{split}_labels.npy", np.asarray(labels[split], dtype=np.int64))
            if want_captions:
                write_json_atomic(tmp / f"{split}_captions.json", captions[split])
        meta = {
            "format": META_FORMAT,
            "kind": "images",
            "size": size,
            "channels": channels,
            "train_images": counts["train"],
            "val_images": counts["val"],
            "classes": classes,
            "skipped": len(skipped),
            "skipped_examples": skipped[:20],
            "captions": want_captions,
            "skipped_captions": len(skipped_captions),
            "skipped_caption_examples": skipped_captions[:20],
            "skipped_metadata_lines": len(bad_lines),
            "skipped_metadata_line_examples": bad_lines[:20],
            "split": {"method": "random", "val_fraction": data.val_fraction, "seed": data.seed},
            "inputs": inputs,
            "fingerprint": fingerprint,
            "versions": software_versions(),
        }
        write_json_atomic(tmp / "meta.json", meta)
        write_provenance(tmp, cfg, inputs)
    if skipped:
        log(f"skipped {len(skipped)} unreadable image(s), e.g. {skipped[0]}")
    if skipped_captions:
        log(f"skipped {len(skipped_captions)} image(s) without a usable caption, e.g. {skipped_captions[0]}")
    if bad_lines:
        log(f"skipped {len(bad_lines)} unusable metadata.jsonl line(s), e.g. {bad_lines[0]}")
    return ImageResult(out, meta, reused=False)


def to_array(image, size: int, channels: int, offset: tuple[float, float] = (0.5, 0.5)) -> np.ndarray:
    """PIL image → (C, size, size) uint8: shorter side resized to `size`, then cropped to a square
    (`offset`: where the crop sits along each axis's spare pixels, 0.5 is the centre)."""
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        image = _to_8_bit(image)
    if image.mode in ("RGBA", "LA", "P"):
        # Transparent pixels become white, not whatever colour the file stores under alpha 0.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    image = image.convert("L" if channels == 1 else "RGB")
    width, height = image.size
    scale = size / min(width, height)
    resized = image.resize((max(size, round(width * scale)), max(size, round(height * scale))), Image.Resampling.BICUBIC)
    if offset == (0.5, 0.5):
        left, top = (resized.width - size) // 2, (resized.height - size) // 2
    else:
        left, top = round((resized.width - size) * offset[0]), round((resized.height - size) * offset[1])
    pixels = np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.uint8)
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def _to_8_bit(image):
    """16-bit, 32-bit integer and float greyscale → 8-bit "L" at the right scale. Pillow's own
    convert("L") clips such pixels to 0..255, so a 16-bit scan would come out two-toned."""
    from PIL import Image

    pixels = np.asarray(image)
    if pixels.dtype.kind == "f":
        peak = 1.0 if float(np.nanmax(pixels, initial=0.0)) <= 1.0 else 255.0
    elif image.mode.startswith("I;16") or int(pixels.max(initial=0)) > 255:
        peak = 65535.0 if image.mode.startswith("I;16") or int(pixels.max(initial=0)) <= 65535 else float(pixels.max())
    else:
        peak = 255.0
    scaled = np.clip(np.nan_to_num(pixels.astype(np.float64)) * (255.0 / peak), 0, 255).round().astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


def _list_source(data: DataConfig) -> tuple[list[SourceImage], list[str] | None, list[dict], list[str]]:
    """(the images, class names or None, the inputs' record, the metadata.jsonl lines that name no image of the folder)."""
    if data.source == BUILTIN_DIGITS:
        return (*_digits(data.image.captions, data.seed), [])
    root = Path(data.source)
    if not root.exists():
        raise AigcError(f"data.source not found: {root}", "point it at a folder of PNG/JPEG images, or use `digits`")
    if root.is_file():
        raise AigcError(f"data.source {root} is a file; image backends read a folder of images", "point it at the folder that holds the images, or use `digits`")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise AigcError(f"no image files (.png, .jpg, ...) under {root}", "point data.source at a folder of images, or use `digits`")
    classes = None
    if data.image.class_folders:
        loose = [p for p in files if p.parent == root]
        if loose:
            raise AigcError(f"data.image.class_folders is on but {loose[0]} is not inside a class sub-folder",
                            "move every image into a sub-folder named after its class, or set data.image.class_folders=false")
        classes = sorted({p.relative_to(root).parts[0] for p in files})
    index = {name: i for i, name in enumerate(classes or [])}
    digest = hashlib.sha256()
    items = []
    for path in files:
        rel = path.relative_to(root).as_posix()
        digest.update(rel.encode() + b"\0" + bytes.fromhex(sha256_file(path)))
        label = index[rel.split("/")[0]] if classes else 0
        items.append(SourceImage(rel, label, lambda path=path: open_image(path)))
    bad_lines = _attach_captions(root, files, items, digest) if data.image.captions else []
    inputs = [{"path": str(root), "files": len(files), "sha256": digest.hexdigest()}]
    return items, classes, inputs, bad_lines


def open_image(path: Path):
    """A decoded PIL image; raises on a truncated or corrupt file."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()  # decode now, inside the caller's try: truncated files fail here
        return image.copy()


def _attach_captions(root: Path, files: list[Path], items: list[SourceImage], digest) -> list[str]:
    """Each image's caption: its line in a metadata.jsonl of its folder or above (diffusers'
    imagefolder: `file_name` relative to that file, `text`), else a non-empty .txt beside it (kohya).
    Returns the metadata lines that caption nothing (not JSON, no file_name, a name outside the
    metadata file's folder or of no image there), as "FILE:LINE: why", for prep to count and report."""
    from_metadata: dict[str, str | None] = {}
    problems: dict[str, str] = {}
    bad_lines: list[str] = []
    images = {_lexical(path) for path in files}  # names as listed, symlinks not followed: a link is matched by its own name
    for meta_path in sorted(root.rglob("metadata.jsonl")):
        digest.update(meta_path.relative_to(root).as_posix().encode() + b"\0" + bytes.fromhex(sha256_file(meta_path)))
        where = meta_path.relative_to(root).as_posix()
        for number, line in enumerate(meta_path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            target, why = _metadata_target(meta_path, line, images)
            if target is None:
                bad_lines.append(f"{where}:{number}: {why}"[:200])
                continue
            text = json.loads(line).get("text")
            if isinstance(text, str) and text.strip():
                from_metadata[target] = text.strip()
            else:
                problems[target] = f"metadata.jsonl line {number} has no text"
    for path, item in zip(files, items):
        key = _lexical(path)
        side = path.with_suffix(".txt")
        if key in from_metadata:
            item.caption = from_metadata[key]
        elif side.is_file():
            digest.update(side.relative_to(root).as_posix().encode() + b"\0" + bytes.fromhex(sha256_file(side)))
            text = side.read_text(encoding="utf-8", errors="replace").strip()
            item.caption, item.caption_problem = (text, None) if text else (None, f"{side.name} is empty")
        else:
            item.caption_problem = problems.get(key, "no caption (not in metadata.jsonl, no .txt beside it)")
    return bad_lines


def _lexical(path: Path) -> str:
    return os.path.normpath(os.path.abspath(path))


def _metadata_target(meta_path: Path, line: str, images: set[str]) -> tuple[str | None, str]:
    """(the image a metadata.jsonl line captions, "") or (None, why it captions none)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None, "not JSON"
    name = record.get("file_name") if isinstance(record, dict) else None
    if not isinstance(name, str) or not name.strip():
        return None, "no file_name" if isinstance(record, dict) else f"a JSON {type(record).__name__}, not an object"
    folder = _lexical(meta_path.parent)
    target = _lexical(Path(folder) / name)
    if os.path.isabs(name) or not target.startswith(folder + os.sep):
        return None, f"file_name {name!r} is outside the folder of metadata.jsonl"
    if target not in images:
        return None, f"file_name {name!r} names no image of the folder"
    return target, ""


DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
INVERTED_SHARE = 0.25  # digits drawn dark on light, and captioned ", inverted"


def digit_captions(pixels: np.ndarray, labels: np.ndarray, seed: int) -> tuple[list[str], np.ndarray]:
    """Captions naming each digit and what is visible: "thin"/"bold" for the lightest/heaviest third
    of its class by ink (pixel mass), ", inverted" for a seeded quarter whose pixels are flipped
    (returned as the second value)."""
    mass = pixels.reshape(len(pixels), -1).sum(axis=1).astype(np.float64)
    rng = np.random.default_rng(seed)
    inverted = rng.random(len(pixels)) < INVERTED_SHARE
    captions = []
    for i, digit in enumerate(labels):
        same = mass[labels == digit]
        low, high = np.quantile(same, [1 / 3, 2 / 3])
        weight = "thin " if mass[i] <= low else "bold " if mass[i] >= high else ""
        captions.append(f"a {weight}{DIGIT_WORDS[int(digit)]}" + (", inverted" if inverted[i] else ""))
    return captions, inverted


def _digits(captions: bool = False, seed: int = 0) -> tuple[list[SourceImage], list[str], list[dict]]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise AigcError("data.source=digits needs scikit-learn", "pip install scikit-learn") from None
    from PIL import Image
    import sklearn

    digits = load_digits()
    # 0..16 intensities, 8×8; white strokes on black, as the data ships.
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    texts: list[str | None] = [None] * len(pixels)
    if captions:
        texts, inverted = digit_captions(pixels, labels, seed)
        pixels = np.where(inverted[:, None, None], 255 - pixels, pixels)
    items = [SourceImage(f"digits[{i}]", int(labels[i]), lambda i=i: Image.fromarray(pixels[i], mode="L"), texts[i])
             for i in range(len(pixels))]
    digest = hashlib.sha256(pixels.tobytes() + labels.tobytes()).hexdigest()
    inputs = [{"path": "sklearn.datasets.load_digits", "files": len(items), "sha256": digest, "scikit_learn": sklearn.__version__}]
    return items, [str(d) for d in range(10)], inputs


def _fingerprint(data: DataConfig, inputs: list[dict]) -> str:
    # caption_dropout and random_flip act at training time: changing them keeps the prepared images.
    # Keys left at their defaults are left out, so folders prepared before they existed are reused.
    image = data.image.model_dump(mode="json", exclude={"caption_dropout", "random_flip"})
    for key, default in (("captions", False), ("crop", "center")):
        if image[key] == default:
            del image[key]
    settings = {"source": data.source, "image": image, "val_fraction": data.val_fraction, "seed": data.seed}
    blob = json.dumps({"format": META_FORMAT, "settings": settings, "inputs": [i["sha256"] for i in inputs]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


class ImageArray:
    """One prepared split as a read-only (N, C, H, W) uint8 memory map, plus labels when there are any."""

    def __init__(self, data_dir: str | Path, split: str):
        data_dir = Path(data_dir)
        meta = read_meta(data_dir, META_FORMAT)
        if meta is None:
            raise AigcError(f"no prepared images in {data_dir}", "run `aigc prep CONFIG` with an image backend first (it writes data.prepared_dir)")
        self.meta, self.split = meta, split
        count, c, s = meta[f"{split}_images"], meta["channels"], meta["size"]
        labels_path = data_dir / f"{split}_labels.npy"
        try:
            self.images = np.memmap(data_dir / f"{split}_images.u8", dtype=np.uint8, mode="r", shape=(count, c, s, s))
            self.labels = np.load(labels_path) if labels_path.is_file() else None  # allow_pickle stays False
        except (OSError, ValueError) as exc:  # ValueError: a file shorter than meta.json says
            raise AigcError(f"the prepared images in {data_dir} are damaged ({split}: {exc})",
                            "run `aigc prep CONFIG --force` to prepare them again") from None

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.meta["classes"] or [])

    def random_batch(self, batch_size: int, block_size: int | None, generator, shard: tuple[int, int] = (0, 1)) -> tuple["object", "object"]:
        """(images in [-1, 1] float32 B×C×H×W, labels int64 B; zeros without labels). block_size is unused.
        shard=(rank, world_size): this process's rows of the batch every process draws alike."""
        import torch

        from aigc_cli.data.batches import own_rows

        index = torch.randint(len(self.images), (batch_size,), generator=generator).numpy()
        return self._tensors(own_rows(np.sort(index), shard))

    def batches(self, batch_size: int) -> Iterator[tuple["object", "object"]]:
        for start in range(0, len(self.images), batch_size):
            yield self._tensors(np.arange(start, min(start + batch_size, len(self.images))))

    def _tensors(self, index: np.ndarray):
        import torch

        pixels = torch.from_numpy(np.ascontiguousarray(self.images[index]))
        labels = torch.from_numpy(self.labels[index]) if self.labels is not None else torch.zeros(len(index), dtype=torch.int64)
        return pixels.float().div_(127.5).sub_(1.0), labels


class CaptionedImages(ImageArray):
    """A prepared split with captions (data.image.captions): batches of (images in [-1, 1], token ids
    B×L) for text-to-image training. `tokenize` turns a list of captions into a LongTensor (the
    pipeline's CLIP tokenizer). Training batches may drop captions to "" (caption_dropout, for
    classifier-free guidance) and flip images left-right; both are drawn from the batch generator,
    so a resumed run draws them alike."""

    def __init__(self, data_dir: str | Path, split: str, tokenize: Callable[[list[str]], "object"],
                 caption_dropout: float = 0.0, random_flip: bool = False):
        super().__init__(data_dir, split)
        path = Path(data_dir) / f"{split}_captions.json"
        if not self.meta.get("captions") or not path.is_file():
            raise AigcError(f"the prepared images in {data_dir} have no captions",
                            "set data.image.captions=true and run `aigc prep CONFIG --force`")
        self.captions = json.loads(path.read_text(encoding="utf-8"))
        if len(self.captions) != len(self.images):
            raise AigcError(f"{path} holds {len(self.captions)} captions for {len(self.images)} images", "run `aigc prep CONFIG --force`")
        self.tokenize, self.caption_dropout, self.random_flip = tokenize, caption_dropout, random_flip

    def random_batch(self, batch_size: int, block_size: int | None, generator, shard: tuple[int, int] = (0, 1)):
        import torch

        from aigc_cli.data.batches import own_rows

        index = torch.randint(len(self.images), (batch_size,), generator=generator).numpy()
        drop = torch.rand(batch_size, generator=generator) < self.caption_dropout  # drawn even at 0: the stream stays one shape
        flip = torch.rand(batch_size, generator=generator) < (0.5 if self.random_flip else 0.0)
        order = np.argsort(index, kind="stable")
        rows = own_rows(order, shard)
        pixels = torch.from_numpy(np.ascontiguousarray(self.images[index[rows]])).float().div_(127.5).sub_(1.0)
        pixels = torch.where(flip[rows][:, None, None, None], pixels.flip(-1), pixels)
        texts = ["" if drop[r] else self.captions[index[r]] for r in rows]
        return pixels, self.tokenize(texts)

    def batches(self, batch_size: int):
        for start in range(0, len(self.images), batch_size):
            rows = np.arange(start, min(start + batch_size, len(self.images)))
            pixels, _ = self._tensors(rows)
            yield pixels, self.tokenize([self.captions[r] for r in rows])

"""A hostile user on the text-to-image verbs: every bad folder, pipeline, autoencoder, CLIP model,
prompt and caption file ends in ONE line naming the key and what is wrong, exit 2, no traceback,
and no run or output directory left behind."""

import json
import os

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.tiny_text_to_image import tiny_text_to_image_pipeline

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DB = "finetune.text_to_image.dreambooth"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("t2i-bad")
    tiny_text_to_image_pipeline(root / "pipe")
    for folder, count in (("inst", 2), ("corrupt", 1)):
        (root / folder).mkdir()
        for i in range(count):
            Image.fromarray((np.arange(256).reshape(16, 16) % 251).astype("uint8")).save(root / folder / f"{i}.png")
    (root / "corrupt" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot a png")
    (root / "texts").mkdir()
    (root / "texts" / "a.txt").write_text("hello")
    (root / "afile").write_text("x")
    (root / "index-only").mkdir()
    (root / "index-only" / "model_index.json").write_text("{}")
    (root / "garbage-index").mkdir()
    (root / "garbage-index" / "model_index.json").write_text("not json")
    (root / "garbage-ae").mkdir()
    (root / "garbage-ae" / "config.json").write_text("junk")
    return root


def _config(root, name="t2i", **extra):
    raw = {"data": {"source": "digits", "prepared_dir": str(root / "prep"), "image": {"size": 16, "channels": 1, "captions": True}},
           "finetune": {"base": str(root / "pipe"), "method": "lora", "lora": {"r": 2, "alpha": 2, "dropout": 0.0}},
           "train": {"out_dir": str(root / "run"), "max_steps": 1, "batch_size": 2, "eval_batches": 1, "sample_every_eval": False},
           "generate": {"images": {"num_inference_steps": 2, "batch_size": 2}}, **extra}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def _one_clear_line(result, *words):
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert "Traceback" not in result.stderr and errors == lines[-1:], result.stderr  # one error line, last; progress lines may precede
    assert not [line for line in lines if "rror" in line or "arning" in line][:-1], result.stderr  # no library log repeating it
    for word in words:
        assert word in errors[0], (word, errors[0])


FINETUNE_CASES = {
    "instance_dir missing": ([f"{DB}.instance_dir={{root}}/nope"], ["instance_dir not found"]),
    "instance_dir a file": ([f"{DB}.instance_dir={{root}}/afile"], ["instance_dir", "is a file"]),
    "instance_dir without images": ([f"{DB}.instance_dir={{root}}/texts"], ["instance_dir", "no images", "a.txt"]),
    "instance_dir with a corrupt PNG": ([f"{DB}.instance_dir={{root}}/corrupt"], ["instance_dir", "broken.png"]),
    "class_dir a file": ([f"{DB}.instance_dir={{root}}/inst", f"{DB}.class_prompt=a digit", f"{DB}.class_dir={{root}}/afile"],
                         ["class_dir", "is a file"]),
    "class_dir not creatable": ([f"{DB}.instance_dir={{root}}/inst", f"{DB}.class_prompt=a digit", f"{DB}.class_dir={{root}}/afile/sub"],
                                ["class_dir", "cannot be created"]),
    "blank instance_prompt": ([f"{DB}.instance_dir={{root}}/inst", f"{DB}.instance_prompt= "], ["instance_prompt is empty"]),
    "blank class_prompt": ([f"{DB}.instance_dir={{root}}/inst", f"{DB}.class_prompt= "], ["class_prompt is empty"]),
    "base with model_index.json only": (["finetune.base={root}/index-only"], ["finetune.base", "not a Stable-Diffusion-style pipeline", "unet/"]),
    "base with a garbage model_index.json": (["finetune.base={root}/garbage-index"], ["finetune.base", "model_index.json is not a JSON object"]),
}


@pytest.mark.parametrize("case", FINETUNE_CASES, ids=list(FINETUNE_CASES))
def test_finetune_refuses(cli, root, case):
    overrides, words = FINETUNE_CASES[case]
    dreambooth = [f"{DB}.instance_prompt=a sks digit"] if any(DB in o for o in overrides) and "instance_prompt" not in str(overrides) else []
    out = root / f"run-{abs(hash(case))}"
    result = cli("finetune", _config(root), *dreambooth, *[o.format(root=root) for o in overrides], f"train.out_dir={out}")
    _one_clear_line(result, *words)
    assert not out.exists()  # nothing written: the run directory was never made


def test_pipeline_naming_an_unknown_scheduler(cli, root, tmp_path):
    import shutil

    pipe = shutil.copytree(root / "pipe", tmp_path / "pipe")
    index = json.loads((pipe / "model_index.json").read_text())
    (pipe / "model_index.json").write_text(json.dumps({**index, "scheduler": ["diffusers", "NoSuchScheduler"]}))
    for weights in (pipe / "unet").glob("*.safetensors"):
        weights.unlink()
    result = cli("finetune", _config(root), f"finetune.base={pipe}", f"train.out_dir={tmp_path / 'run'}", *_dreambooth(root))
    _one_clear_line(result, "NoSuchScheduler")
    index["scheduler"] = ["diffusers", "DDIMScheduler"]
    (pipe / "model_index.json").write_text(json.dumps(index))
    result = cli("finetune", _config(root), f"finetune.base={pipe}", f"train.out_dir={tmp_path / 'run'}", *_dreambooth(root))
    _one_clear_line(result, "cannot load the pipeline", "unet")  # no weights: diffusers' own log line is not repeated


def _dreambooth(root):  # a DreamBooth run needs no prepared data
    return [f"{DB}.instance_prompt=a sks digit", f"{DB}.instance_dir={root / 'inst'}"]


@pytest.fixture(scope="module")
def prepared_ldm(root):
    from aigc_cli.config import load_config
    from aigc_cli.data.images import prepare_images

    prepare_images(load_config(_ldm_config(root)), log=lambda m: None)
    return root


def _ldm_config(root):
    raw = {"data": {"source": "digits", "prepared_dir": str(root / "prep8"), "image": {"size": 8, "channels": 1, "captions": True}},
           "model": {"backend": "latent-diffusion", "autoencoder_channels": [8, 16], "latent_channels": 2, "unet_channels": [16, 32],
                     "attention_levels": [1], "norm_num_groups": 4, "attention_head_dim": 8, "text_width": 16, "text_heads": 2,
                     "text_layers": 1, "max_prompt_tokens": 12, "num_train_timesteps": 50},
           "train": {"out_dir": str(root / "ldm"), "max_steps": 1, "batch_size": 2, "sample_every_eval": False}}
    path = root / "ldm.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


AUTOENCODER_CASES = {"missing": ("nope", "model.autoencoder not found"), "a file": ("afile", "no readable config.json"),
                     "garbage config": ("garbage-ae", "no readable config.json"), "a UNet": ("pipe/unet", "UNet2DConditionModel")}


@pytest.mark.parametrize("case", AUTOENCODER_CASES, ids=list(AUTOENCODER_CASES))
def test_latent_diffusion_autoencoder_refused_before_the_run_dir(cli, prepared_ldm, case):
    folder, words = AUTOENCODER_CASES[case]
    out = prepared_ldm / f"ldm-{folder.replace('/', '-')}"
    result = cli("train", _ldm_config(prepared_ldm), f"model.autoencoder={prepared_ldm / folder}", f"train.out_dir={out}")
    _one_clear_line(result, words)
    assert not out.exists()


def test_latent_diffusion_unloadable_autoencoder_leaves_no_run_dir(cli, prepared_ldm, tmp_path):
    import shutil

    vae = shutil.copytree(prepared_ldm / "pipe" / "vae", tmp_path / "vae")
    for weights in vae.glob("*.safetensors"):
        weights.unlink()
    result = cli("train", _ldm_config(prepared_ldm), f"model.autoencoder={vae}", f"train.out_dir={tmp_path / 'run'}")
    _one_clear_line(result, "cannot load model.autoencoder")
    assert not (tmp_path / "run").exists()  # (the tokenizer used to be written first, leaving a folder aigc then refused)


@pytest.fixture(scope="module")
def t2i_run(root):
    from aigc_cli.backends import get_backend
    from aigc_cli.config import LoraConfig
    from aigc_cli.runs.checkpoints import write_checkpoint

    backend = get_backend("text-to-image")
    torch.manual_seed(0)
    model = backend.start(root / "pipe", "lora", LoraConfig(r=2, dropout=0.0), {"size": 16, "channels": 1})
    write_checkpoint(root / "run", 1, "text-to-image", backend, model, {"step": 1}, None)
    return root / "run"


PROMPT_CASES = {"empty --prompt": (["--prompt", ""], ["the prompt is empty"]),
                "blank second --prompt": (["--prompt", "a one", "--prompt", "  "], ["prompt 2 of 2 is empty"]),
                "a list as the prompt": (["--prompts-file", "{root}/list.jsonl"], ["list.jsonl:1", "JSON list, not a string"]),
                "a number as the prompt": (["--prompts-file", "{root}/number.jsonl"], ["number.jsonl:2", "JSON int"])}


@pytest.mark.parametrize("case", PROMPT_CASES, ids=list(PROMPT_CASES))
def test_generate_refuses_prompts_that_are_not_text(cli, root, t2i_run, case):
    (root / "list.jsonl").write_text('{"prompt": ["a one"]}\n')
    (root / "number.jsonl").write_text('{"prompt": "a one"}\n{"prompt": 7}\n')
    args, words = PROMPT_CASES[case]
    out = root / f"gen-{abs(hash(case))}"
    result = cli("generate", _config(root), *[a.format(root=root) for a in args], "--out", out)
    _one_clear_line(result, *words)
    assert not out.exists()


def test_clip_model_that_is_a_text_encoder_only(cli, root):
    (root / "gen").mkdir(exist_ok=True)
    (root / "gen" / "samples.json").write_text(json.dumps({"prompts": ["a one"], "files": ["p000_000.png"], "per_prompt": 1}))
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "gen" / "p000_000.png")
    result = cli("eval", _ldm_config(root), "eval.metrics=[clip_score]", f"eval.generations={root / 'gen'}",
                 f"eval.clip_model={root / 'pipe' / 'text_encoder'}")
    _one_clear_line(result, "eval.clip_model", "not a CLIP model", "clip_text_model")


def test_adherence_needs_prompts_that_name_digits():
    from aigc_cli.errors import AigcError
    from aigc_cli.evaluation.prompt_adherence import check_digit_prompts

    check_digit_prompts(["a cat", "a bold seven"])
    with pytest.raises(AigcError, match="names a digit"):
        check_digit_prompts(["a cat", "a red car"], "the held-out captions")


def _folder(root, name, lines):
    folder = root / name
    folder.mkdir()
    for i in range(6):
        Image.fromarray(np.full((16, 16), 40 * i, np.uint8)).save(folder / f"{i}.png")
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_captions_metadata_lines_that_caption_nothing_are_counted(cli, root, tmp_path):
    (tmp_path / "outside.png").write_bytes((root / "inst" / "0.png").read_bytes())
    good = [json.dumps({"file_name": f"{i}.png", "text": "a one"}) for i in range(6)]
    bad = ["{not json", '"a string"', json.dumps({"text": "no name"}), json.dumps({"file_name": "../outside.png", "text": "escape"}),
           json.dumps({"file_name": "/etc/hostname", "text": "absolute"}), json.dumps({"file_name": "missing.png", "text": "gone"})]
    folder = _folder(tmp_path, "mixed", bad + good)
    prep = tmp_path / "prep"
    result = cli("prep", _config(root), f"data.source={folder}", f"data.prepared_dir={prep}", "data.val_fraction=0.3")
    assert result.exit_code == 0, result.stderr
    meta = json.loads((prep / "meta.json").read_text())
    assert meta["skipped_metadata_lines"] == 6 and meta["train_images"] + meta["val_images"] == 6
    why = " ".join(meta["skipped_metadata_line_examples"])
    assert "not JSON" in why and "outside the folder" in why and "no file_name" in why and "names no image" in why
    assert "6 unusable metadata.jsonl line(s)" in result.stderr + result.stdout

    only_bad = _folder(tmp_path, "only-bad", bad)
    result = cli("prep", _config(root), f"data.source={only_bad}", f"data.prepared_dir={tmp_path / 'prep2'}")
    _one_clear_line(result, "no image has a usable caption", "6 metadata.jsonl line(s) unusable")
    assert not (tmp_path / "prep2" / "meta.json").exists()


def test_a_symlinked_image_is_captioned_by_its_own_name(cli, root, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    Image.fromarray(np.full((16, 16), 200, np.uint8)).save(outside / "target.png")
    folder = _folder(tmp_path, "linked", [json.dumps({"file_name": f"{i}.png", "text": "a two"}) for i in range(6)]
                     + [json.dumps({"file_name": "../elsewhere/target.png", "text": "through the link's target"}),
                        json.dumps({"file_name": "link.png", "text": "the link"})])
    os.symlink(outside / "target.png", folder / "link.png")
    prep = tmp_path / "prep"
    result = cli("prep", _config(root), f"data.source={folder}", f"data.prepared_dir={prep}", "data.val_fraction=0.3")
    assert result.exit_code == 0, result.stderr
    captions = json.loads((prep / "train_captions.json").read_text()) + json.loads((prep / "val_captions.json").read_text())
    assert "the link" in captions and "through the link's target" not in captions

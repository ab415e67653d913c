"""Outputs load in the tools other people run: the tokenizers `aigc finetune` writes (in
adapters and in merged/) load in transformers 4.46 — the oldest transformers aigc's checkpoints
are stated to work with, still what many serving stacks pin — and tokenize exactly as aigc does.

transformers 4.46 cannot share this interpreter with transformers 5, so it is installed once
(pip --target, about 35 s) into a cache folder and run in a subprocess that needs no torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import json_out
from tests.training.test_finetune import PAIRS, finetune_config
from tests.conftest import tiny_config

OLDEST = "4.46.3"
CACHE = Path(os.environ.get("AIGC_TEST_CACHE", Path.home() / ".cache" / "aigc-tests")) / f"transformers-{OLDEST}"
TEXTS = ["German: eins\nEnglish: one", "  spaces  and\ttabs", "床前明月光", "emoji 🙂 ok"]


@pytest.fixture(scope="module")
def transformers4() -> Path:
    if not (CACHE / "transformers" / "__init__.py").is_file():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--target", str(CACHE),
                        f"transformers=={OLDEST}", "tokenizers<0.21"], check=True, capture_output=True, timeout=600)
    return CACHE


def encode_with_transformers4(site: Path, directory: Path) -> dict:
    code = ("import json, sys\nfrom transformers import AutoTokenizer\n"
            "tok = AutoTokenizer.from_pretrained(sys.argv[1])\n"
            f"print(json.dumps({{'class': type(tok).__name__, 'ids': [tok(t, add_special_tokens=False).input_ids for t in {TEXTS!r}],"
            " 'eos': tok.eos_token}))\n")
    env = {"PYTHONPATH": str(site), "PATH": os.environ.get("PATH", ""), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "USE_TORCH": "0", "USE_TF": "0", "USE_FLAX": "0"}
    done = subprocess.run([sys.executable, "-S", "-c", code, str(directory)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_finetuned_tokenizers_load_in_transformers_4(cli, tmp_path, transformers4):
    from transformers import AutoTokenizer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"German: {de}\nEnglish: {en}" for de, en in PAIRS) * 20 + "\n床前明月光 🙂\n", encoding="utf-8")
    cfg = tiny_config(tmp_path / "base", corpus, model={"block_size": 32})
    json_out(cli("prep", cfg, "--json"))
    base = json_out(cli("train", cfg, "--json", "train.max_steps=4"))["checkpoint"]
    out = json_out(cli("finetune", finetune_config(tmp_path / "lora", Path(base)), "--merge", "--json", "train.max_steps=2"))
    for directory in (Path(out["checkpoint"]), Path(out["merged"])):
        config = json.loads((directory / "tokenizer_config.json").read_text())
        assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
        assert not {"is_local", "local_files_only", "backend"} & set(config)
        old = encode_with_transformers4(transformers4, directory)
        ours = AutoTokenizer.from_pretrained(directory)
        assert old["class"] == "PreTrainedTokenizerFast" and old["eos"] == ours.eos_token
        assert old["ids"] == [ours(t, add_special_tokens=False).input_ids for t in TEXTS]

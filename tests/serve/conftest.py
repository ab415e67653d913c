"""Tiny text checkpoints saved as aigc saves them (random weights: serving needs no trained model),
and a real `aigc serve` started in a subprocess."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import TINY_TEXT

REPO = Path(__file__).resolve().parents[2]
CONTEXT = 96
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def write_text_checkpoint(root: Path, chat: bool, architecture: str = "gpt2") -> Path:
    """A run directory with one checkpoint: a two-layer model over the test corpus's characters;
    with `chat`, the chatml template in tokenizer_config.json and <|im_end|> among the
    generation_config.json eos ids, as chat fine-tuning leaves a checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    from aigc_cli.backends import get_backend
    from aigc_cli.data.tokenization import build_char_tokenizer, eos_id, save_tokenizer
    from aigc_cli.runs.checkpoints import write_checkpoint

    tokenizer = build_char_tokenizer(TINY_TEXT)
    if chat:
        tokenizer.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    tokenizer_dir = root / "tokenizer"
    tokenizer_dir.mkdir(parents=True)
    save_tokenizer(tokenizer, tokenizer_dir)
    eos, vocab = eos_id(tokenizer), tokenizer.get_vocab_size()
    if chat:
        config_path = tokenizer_dir / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config_path.write_text(json.dumps({**config, "chat_template": CHATML}), encoding="utf-8")
    torch.manual_seed(0)
    if architecture == "gpt2":
        config = GPT2Config(vocab_size=vocab, n_positions=CONTEXT, n_embd=32, n_layer=2, n_head=2, bos_token_id=eos, eos_token_id=eos)
    else:
        config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                             max_position_embeddings=CONTEXT, bos_token_id=eos, eos_token_id=eos)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    if chat:
        model.generation_config.eos_token_id = [tokenizer.token_to_id("<|im_end|>"), eos]
    write_checkpoint(root / "run", 1, "gpt", get_backend("gpt"), model, {"step": 1}, tokenizer_dir)
    return root / "run"


@pytest.fixture(scope="session")
def chat_run(tmp_path_factory) -> Path:
    return write_text_checkpoint(tmp_path_factory.mktemp("chat-model"), chat=True)


@pytest.fixture(scope="session")
def plain_run(tmp_path_factory) -> Path:
    return write_text_checkpoint(tmp_path_factory.mktemp("plain-model"), chat=False)


class Server:
    """`python -m aigc_cli serve RUN --port 0 ...` in a subprocess; `url` is its /v1 base URL."""

    def __init__(self, run: Path, *args: str, env: dict | None = None):
        self.proc = subprocess.Popen([sys.executable, "-m", "aigc_cli", "serve", str(run), "--port", "0", "--device", "cpu", *args],
                                     cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})},
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.stderr_lines: list[str] = []
        ready = threading.Event()
        self.url = None

        def read_stderr():
            for line in self.proc.stderr:
                self.stderr_lines.append(line)
                found = re.search(r" at (http://\S+/v1) ", line)
                if found and self.url is None:
                    self.url = found.group(1)
                    ready.set()
            ready.set()

        threading.Thread(target=read_stderr, daemon=True).start()
        if not ready.wait(120) or self.url is None:
            self.stop()
            raise AssertionError("aigc serve did not start:\n" + "".join(self.stderr_lines))

    def stderr(self) -> str:
        return "".join(self.stderr_lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_for_exit(proc: subprocess.Popen, seconds: float = 60) -> int:
    deadline = time.monotonic() + seconds
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return proc.poll()

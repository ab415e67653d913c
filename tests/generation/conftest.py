"""Tiny chat checkpoints, written as `aigc finetune` writes one after tuning on chat data: a
transformers model directory with a tokenizer whose config carries a chatml template, the
<|im_start|>/<|im_end|> tokens, and generation_config.json's eos_token_id a list holding
<|im_end|> and the tokenizer's end-of-text. The chatml template is written here, not imported:
these tests check generation against whatever template a checkpoint carries."""

from __future__ import annotations

from pathlib import Path

import pytest

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
CHARS = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ.,?!'\n0123456789"
QUESTIONS = ["hello", "how are you?", "what is 2+2", "tell me a story", "Be terse.", "hi", "who are you", "x"]


def chat_tokenizer(template: str | None = CHATML):
    from transformers import PreTrainedTokenizerFast

    from aigc_cli.data.tokenization import EOS_TOKEN, build_char_tokenizer

    tok = build_char_tokenizer(CHARS)
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN)
    if template is not None:
        wrapped.chat_template = template
    return wrapped


def tuned_to_chat(model, tokenizer, steps: int = 60) -> None:
    """A few optimizer steps, the loss on the replies only, on conversations (plain, with a
    system message, two exchanges) whose every reply is "ok<|im_end|>", and on one more where the
    user says "ramble" (as the first message) and the reply is a run of "a" that never ends its turn. The model then
    answers "ok" and ends its turn, so a test sees decoding stop at the end-of-turn token, or
    rambles on until it is stopped (within its context: "a" follows "a")."""
    import torch

    ok = {"role": "assistant", "content": "ok"}
    conversations = []
    for i, question in enumerate(QUESTIONS):
        ask = {"role": "user", "content": question}
        conversations += [[ask, ok], [{"role": "system", "content": QUESTIONS[-1 - i]}, ask, ok],
                          [{"role": "user", "content": QUESTIONS[i - 1]}, ok, ask, ok]]
    conversations += [[{"role": "user", "content": "ramble"}, {"role": "assistant", "content": "a" * 60}]] * 4
    encode = lambda messages, **kw: tokenizer(tokenizer.apply_chat_template(messages, tokenize=False, **kw), add_special_tokens=False).input_ids
    rows, labels = [], []
    for messages in conversations:
        row = encode(messages)
        label = [-100] * len(row)
        for k, message in enumerate(messages):
            if message["role"] == "assistant":
                start, end = len(encode(messages[:k], add_generation_prompt=True)), len(encode(messages[:k + 1])) - 1  # reply + <|im_end|>
                end -= message["content"].startswith("a")  # the rambling reply: no <|im_end|>
                label[start:end] = row[start:end]
        rows.append(row)
        labels.append(label)
    width = max(map(len, rows))
    ids = torch.tensor([row + [0] * (width - len(row)) for row in rows])
    targets = torch.tensor([label + [-100] * (width - len(label)) for label in labels])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = model(input_ids=ids, labels=targets).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def write_chat_run(run_dir: Path, template: str | None = CHATML, tune=tuned_to_chat, context: int = 2048) -> Path:
    """A run directory holding one checkpoint of a tiny GPT-2 (tuned by `tune`, or random); its path."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from aigc_cli.backends import get_backend
    from aigc_cli.runs.checkpoints import write_checkpoint

    tokenizer = chat_tokenizer(template)
    torch.manual_seed(0)
    eos, end_of_turn = tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=context, n_embd=32, n_layer=1, n_head=2,
                                       bos_token_id=eos, eos_token_id=eos))
    if tune is not None:
        tune(model, tokenizer)
    model.generation_config.eos_token_id = [end_of_turn, eos]
    tokenizer_dir = run_dir / "tokenizer"
    tokenizer.save_pretrained(tokenizer_dir)
    write_checkpoint(run_dir, 60, "gpt", get_backend("gpt"), model.eval(), {}, tokenizer_dir)
    return run_dir


@pytest.fixture(scope="session")
def chat_run(tmp_path_factory) -> Path:
    return write_chat_run(tmp_path_factory.mktemp("chat") / "run")


@pytest.fixture(scope="session")
def plain_run(tmp_path_factory) -> Path:
    """The same model and tokenizer without a chat template (an aigc model trained on raw text)."""
    return write_chat_run(tmp_path_factory.mktemp("plain") / "run", template=None, tune=None)

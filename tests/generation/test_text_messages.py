"""`aigc generate` on conversations: a prompts file of `messages` rows, formatted by the
checkpoint's chat template exactly as transformers formats it, replies that end at the
end-of-turn token, and the errors a bad row or a template-less checkpoint gives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import json_out

CONVERSATIONS = [
    [{"role": "user", "content": "hello"}],
    [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "who are you"}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "tell me a story"}],
]


def write_config(tmp_path: Path, run: Path, **generate) -> Path:
    path = tmp_path / "chat.yaml"
    raw = {"model": {"backend": "gpt"}, "train": {"out_dir": str(run)},
           "generate": {"max_new_tokens": 8, "temperature": 0, **generate}}
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def write_rows(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def read_rows(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def test_each_row_keeps_its_messages_and_gets_the_reply(cli, tmp_path, chat_run, monkeypatch):
    from transformers import AutoTokenizer

    from aigc_cli.runs.checkpoints import resolve_checkpoint

    cfg = write_config(tmp_path, chat_run)
    prompts = write_rows(tmp_path / "prompts.jsonl", [{"messages": m} for m in CONVERSATIONS])
    out = json_out(cli("generate", cfg, "--prompts-file", prompts, "--out", tmp_path / "out.jsonl", "--json"))
    rows = read_rows(out["outputs"])
    assert [r["messages"] for r in rows] == CONVERSATIONS
    assert [r["input"] for r in rows] == ["hello", "who are you", "tell me a story"]
    # The prompt is what transformers' apply_chat_template makes of the checkpoint's own template...
    tokenizer = AutoTokenizer.from_pretrained(resolve_checkpoint(chat_run))
    for row in rows:
        assert row["prompt"] == tokenizer.apply_chat_template(row["messages"], add_generation_prompt=True, tokenize=False)
    assert rows[1]["prompt"] == "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nwho are you<|im_end|>\n<|im_start|>assistant\n"
    # ...and the tuned model's reply ends at <|im_end|> (generation_config.json), not at max_new_tokens.
    assert [(r["completion"], r["new_tokens"], r["finish_reason"]) for r in rows] == [("ok", 2, "eos")] * 3

    # Streamed one at a time, the replies are the batched ones.
    streamed = cli("generate", cfg, "--prompts-file", prompts, "--out", tmp_path / "streamed.jsonl", "--stream")
    assert streamed.exit_code == 0, streamed.stderr
    assert [r["completion"] for r in read_rows(tmp_path / "streamed.jsonl")] == ["ok"] * 3
    assert rows[2]["prompt"] + "ok" in streamed.stdout

    # A re-run finds every reply in the manifest and loads no model.
    import aigc_cli.inference.loading as loading

    first = (tmp_path / "out.jsonl").read_bytes()
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("the model was loaded for finished work"))
    json_out(cli("generate", cfg, "--prompts-file", prompts, "--out", tmp_path / "out.jsonl", "--json"))
    assert (tmp_path / "out.jsonl").read_bytes() == first


def test_the_prompt_ids_are_the_templates_own(chat_run):
    from transformers import AutoTokenizer

    from aigc_cli.inference.chat_format import chat_formatter
    from aigc_cli.inference.loading import load_model

    loaded = load_model(chat_run, "cpu")
    tokenizer = AutoTokenizer.from_pretrained(loaded.checkpoint)
    text = chat_formatter(loaded.checkpoint)(CONVERSATIONS[2], "test")
    expected = tokenizer.apply_chat_template(CONVERSATIONS[2], add_generation_prompt=True, tokenize=True)
    expected = expected["input_ids"] if isinstance(expected, dict) or hasattr(expected, "keys") else expected
    assert loaded.tokenizer.encode(text, add_special_tokens=False).ids == list(expected)
    end_of_turn = loaded.tokenizer.token_to_id("<|im_end|>")
    assert set(loaded.stop_ids) == {loaded.eos_id, end_of_turn} and end_of_turn != loaded.eos_id


BAD_ROWS = {
    "no role": ({"messages": [{"content": "hi"}]}, "message 1 has no 'role'"),
    "unknown role": ({"messages": [{"role": "bot", "content": "hi"}]}, 'message 1 has the role "bot"'),
    "content not a string": ({"messages": [{"role": "user", "content": ["hi"]}]}, "the content of message 1 is list, not a string"),
    "no content": ({"messages": [{"role": "user"}]}, "the content of message 1 is missing"),
    "last turn not the user's": ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]},
                                 "the last message is the assistant's, not the user's"),
    "second system message": ({"messages": [{"role": "user", "content": "hi"}, {"role": "system", "content": "x"},
                                            {"role": "user", "content": "hi"}]}, "message 2 is a second system message"),
    "empty list": ({"messages": []}, "'messages' is not a non-empty list of messages"),
    "not a list": ({"messages": "hi"}, "'messages' is not a non-empty list of messages"),
    "a plain prompt among conversations": ({"prompt": "hi"}, "a plain prompt row in a file whose first row"),
}


@pytest.mark.parametrize("name", list(BAD_ROWS))
def test_a_bad_row_is_exit_2_naming_file_and_line(cli, tmp_path, chat_run, name):
    row, message = BAD_ROWS[name]
    prompts = write_rows(tmp_path / "prompts.jsonl", [{"messages": CONVERSATIONS[0]}, "", row])
    result = cli("generate", write_config(tmp_path, chat_run), "--prompts-file", prompts, "--out", tmp_path / "out.jsonl")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {prompts}:3: {message}") and "Traceback" not in result.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_a_checkpoint_without_a_chat_template_is_exit_2(cli, tmp_path, plain_run):
    from aigc_cli.runs.checkpoints import resolve_checkpoint

    prompts = write_rows(tmp_path / "prompts.jsonl", [{"messages": CONVERSATIONS[0]}])
    result = cli("generate", write_config(tmp_path, plain_run), "--prompts-file", prompts, "--out", tmp_path / "out.jsonl")
    assert result.exit_code == 2
    assert result.stderr == (f"error: {resolve_checkpoint(plain_run)} has no chat template — fine-tune it on chat data "
                             "(finetune.format: messages) or give plain prompts\n")
    assert not (tmp_path / "out.jsonl").exists()
    # Plain prompts still work there.
    json_out(cli("generate", write_config(tmp_path, plain_run), "--prompt", "hi", "--out", tmp_path / "plain.jsonl", "--json"))


def test_generate_template_does_not_apply_to_conversations(cli, tmp_path, chat_run):
    prompts = write_rows(tmp_path / "prompts.jsonl", [{"messages": CONVERSATIONS[0]}])
    result = cli("generate", write_config(tmp_path, chat_run, template="Q: {source}\nA:"), "--prompts-file", prompts, "--out", tmp_path / "o.jsonl")
    assert result.exit_code == 2 and "generate.template and generate.few_shot do not apply to 'messages' rows" in result.stderr

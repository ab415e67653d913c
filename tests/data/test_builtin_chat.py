"""The built-in chat data (aigc_cli/data/builtin_chat.py): conversations and preference pairs about
the standard library, deterministic, split by function, valid messages, within the model's context."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from aigc_cli.data.builtin_chat import (ASK_PARAMS, ASK_WHAT, CONTEXT_TOKENS, THEN_PARAMS, THEN_WHAT, chatml_length, jsonl,
                                        python_chat, python_functions, python_preferences, split_of)
from aigc_cli.data.tokenization import build_char_tokenizer
from aigc_cli.starter_configs import STARTER_DATA

FUNCTIONS = {f.name: f for f in python_functions()}


def _digest() -> str:
    blob = jsonl([c.row() for split in ("train", "val") for c in python_chat(split)])
    blob += jsonl([p.row() for split in ("train", "val") for p in python_preferences(split)])
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def test_same_bytes_in_another_process_with_another_hash_seed():
    here = _digest()
    assert _digest() == here
    code = "from tests.data.test_builtin_chat import _digest; print(_digest())"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    there = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert there == here


def test_held_out_functions_and_answers_are_never_trained_on():
    train, val = python_chat("train"), python_chat("val")
    assert {c.function for c in train}.isdisjoint(c.function for c in val)
    assert all(split_of(FUNCTIONS[c.function]) == "val" for c in val)
    trained_answers = {m["content"] for c in train for m in c.messages if m["role"] == "assistant"}
    held_out_answers = {m["content"] for c in val for m in c.messages if m["role"] == "assistant"}
    assert not trained_answers & held_out_answers, "functions sharing a summary share a split"
    prefs_train, prefs_val = python_preferences("train"), python_preferences("val")
    assert {split_of(FUNCTIONS[name]) for p in prefs_train for name in (p.function, p.rejected_from)} == {"train"}
    assert {split_of(FUNCTIONS[name]) for p in prefs_val for name in (p.function, p.rejected_from)} == {"val"}


def _valid_messages(messages: list[dict], ends_with: str) -> None:
    assert all(set(m) == {"role", "content"} and isinstance(m["content"], str) and m["content"].strip() for m in messages)
    roles = [m["role"] for m in messages]
    if roles[0] == "system":
        roles = roles[1:]
    assert roles and "system" not in roles
    assert roles == ["user", "assistant"] * (len(roles) // 2) + ["user"] * (len(roles) % 2), roles
    assert roles[-1] == ends_with


def _answers_the_question(function, question: str, answer: str) -> None:
    asks_summary = question in {t.format(name=function.name) for t in ASK_WHAT} | set(THEN_WHAT)
    asks_signature = question in {t.format(name=function.name) for t in ASK_PARAMS} | set(THEN_PARAMS)
    assert asks_summary != asks_signature, question
    assert answer == (function.summary if asks_summary else function.signature)


@pytest.mark.parametrize("max_tokens", [CONTEXT_TOKENS, 250])
def test_every_conversation_is_valid_messages_that_fit(max_tokens):
    for split in ("train", "val"):
        for conversation in python_chat(split, max_tokens=max_tokens):
            _valid_messages(conversation.messages, ends_with="assistant")
            assert chatml_length(conversation.messages) <= max_tokens
            turns = [m for m in conversation.messages if m["role"] != "system"]
            function = FUNCTIONS[conversation.function]
            assert function.name in turns[0]["content"]
            for question, answer in zip(turns[::2], turns[1::2]):
                _answers_the_question(function, question["content"], answer["content"])


def test_multi_turn_where_two_questions_fit():
    conversations = python_chat("train", max_tokens=250)
    two_turn = [c for c in conversations if len([m for m in c.messages if m["role"] == "user"]) == 2]
    assert len(two_turn) > 0.8 * len(conversations)
    follow_ups = {[m for m in c.messages if m["role"] == "user"][1]["content"] for c in two_turn}
    assert follow_ups == set(THEN_WHAT) | set(THEN_PARAMS), "the follow-up says 'it': the model has to read the history"
    second_asks_signature = {c.messages[-2]["content"] in THEN_PARAMS for c in two_turn}
    assert second_asks_signature == {True, False}, "both orders of the two questions"
    assert 0.1 < sum(c.messages[0]["role"] == "system" for c in conversations) / len(conversations) < 0.4


def test_preference_pairs_reject_another_functions_answer():
    for split in ("train", "val"):
        for pair in python_preferences(split):
            _valid_messages(pair.prompt, ends_with="user")
            function, other = FUNCTIONS[pair.function], FUNCTIONS[pair.rejected_from]
            assert other.name != function.name and pair.chosen != pair.rejected
            assert pair.chosen == function.answer(pair.kind) and pair.rejected == other.answer(pair.kind)
            _answers_the_question(function, pair.prompt[-1]["content"], pair.chosen)
            for reply in (pair.chosen, pair.rejected):
                assert chatml_length(pair.prompt + [{"role": "assistant", "content": reply}]) <= CONTEXT_TOKENS
            assert set(pair.row()) == {"prompt", "chosen", "rejected"}
    pairs = python_preferences("train")
    near = sum(p.function.rsplit(".", 1)[0] == p.rejected_from.rsplit(".", 1)[0] for p in pairs)
    assert near > 0.7 * len(pairs), "most rejected answers are a near miss from the same module or class"
    assert {p.kind for p in pairs} == {"summary", "signature"}


def test_sizes_suit_a_cpu_demo():
    counts = {(what, split): len(make(split)) for what, make in (("chat", python_chat), ("prefs", python_preferences))
              for split in ("train", "val")}
    assert 3000 <= counts["chat", "train"] <= 6000 and 250 <= counts["chat", "val"] <= 700, counts
    assert 1500 <= counts["prefs", "train"] <= 3500 and 150 <= counts["prefs", "val"] <= 450, counts
    assert 0.05 < counts["chat", "val"] / counts["chat", "train"] < 0.2, counts


def test_chatml_length_is_the_char_tokenizers_count():
    """What the text-gpt starter's character tokenizer makes of the chatml rendering, its markers one token each."""
    conversations = python_chat("val")[:50] + python_chat("val", max_tokens=250)[:50]
    texts = ["".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in c.messages) for c in conversations]
    tokenizer = build_char_tokenizer("".join(m["content"] + m["role"] for c in conversations for m in c.messages) + "\n")
    tokenizer.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    for conversation, text in zip(conversations, texts):
        assert len(tokenizer.encode(text).ids) == chatml_length(conversation.messages)


def test_init_writers_for_the_chat_starters(tmp_path):
    sft = {path.name: make() for path, make in STARTER_DATA["chat-sft"](tmp_path).items()}
    assert sorted(sft) == ["python-chat-val-prompts.jsonl", "python-chat-val.jsonl", "python-chat-val.ref.txt", "python-chat.jsonl"]
    assert sft["python-chat.jsonl"] == jsonl([c.row() for c in python_chat("train")])
    val = [json.loads(line) for line in sft["python-chat-val.jsonl"].splitlines()]
    prompts = [json.loads(line) for line in sft["python-chat-val-prompts.jsonl"].splitlines()]
    references = sft["python-chat-val.ref.txt"].splitlines()
    assert len(val) == len(prompts) == len(references)
    for row, prompt, reference in zip(val, prompts, references):
        assert prompt["messages"] == row["messages"][:-1] and prompt["messages"][-1]["role"] == "user"
        assert reference == row["messages"][-1]["content"]

    dpo = {path.name: make() for path, make in STARTER_DATA["chat-dpo"](tmp_path).items()}
    assert sorted(dpo) == ["python-prefs-val.jsonl", "python-prefs.jsonl"]
    rows = [json.loads(line) for line in dpo["python-prefs-val.jsonl"].splitlines()]
    assert rows == [p.row() for p in python_preferences("val")]
    assert all(isinstance(r["chosen"], str) and isinstance(r["rejected"], str) for r in rows)

"""aigc_cli.data.chat_formats and chat: every record format becomes the same Conversation or
PreferencePair, `auto` tells the formats apart, and a bad record is one error naming FILE:N."""

from __future__ import annotations

import json

import pytest

from aigc_cli.config import ChatColumnsConfig
from aigc_cli.data.chat_formats import detect_format, read_conversations, read_preference_pairs, resolve_format
from aigc_cli.errors import AigcError

SYSTEM, USER, ASSISTANT = ({"role": r, "content": c} for r, c in (("system", "be brief"), ("user", "hi"), ("assistant", "hello")))
COLUMNS = ChatColumnsConfig()


def jsonl(tmp_path, rows, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("fmt, record", [
    ("messages", {"messages": [SYSTEM, USER, ASSISTANT]}),
    ("messages", {"messages": [USER, ASSISTANT], "system": "be brief"}),
    ("sharegpt", {"conversations": [{"from": "system", "value": "be brief"}, {"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}),
    ("sharegpt", {"conversations": [{"from": "user", "value": "hi"}, {"from": "assistant", "value": "hello"}], "system": "be brief"}),
    ("alpaca", {"instruction": "hi", "output": "hello", "system": "be brief"}),
])
def test_every_format_becomes_the_same_conversation(tmp_path, fmt, record):
    path = jsonl(tmp_path, [record])
    assert resolve_format(str(path), "auto", COLUMNS, "source", "target")[0] == fmt
    [conversation] = read_conversations(str(path), fmt, COLUMNS)
    assert conversation.messages == [SYSTEM, USER, ASSISTANT] and conversation.where == f"{path}:1"


def test_alpaca_input_follows_the_instruction():
    from aigc_cli.data.chat_formats import _alpaca

    c = _alpaca({"instruction": "Translate", "input": "Hallo", "output": "Hello"}, "f:1", "alpaca", COLUMNS)
    assert c.messages == [{"role": "user", "content": "Translate\n\nHallo"}, {"role": "assistant", "content": "Hello"}]
    assert _alpaca({"instruction": "Say hi", "input": "", "output": "hi"}, "f:1", "alpaca", COLUMNS).messages[0]["content"] == "Say hi"


def test_columns_rename_the_fields_and_keys(tmp_path):
    columns = ChatColumnsConfig(messages="dialog", role="speaker", content="text")
    path = jsonl(tmp_path, [{"dialog": [{"speaker": "user", "text": "hi"}, {"speaker": "assistant", "text": "hello"}]}])
    fmt, note = resolve_format(str(path), "auto", columns, "source", "target")
    assert fmt == "messages" and note == f"finetune.format auto: detected 'messages' (field 'dialog' of speaker/text) in {path}"
    assert read_conversations(str(path), "messages", columns)[0].messages == [USER, ASSISTANT]


def test_detection_order_and_the_undetectable(tmp_path):
    assert detect_format({"prompt": "q", "chosen": "a", "rejected": "b"}, COLUMNS, "source", "target")[0] == "preference"
    assert detect_format({"source": "q", "target": "a"}, COLUMNS, "source", "target")[0] == "pairs"
    alpaca_like = {"instruction": "q", "output": "a"}
    assert detect_format(alpaca_like, COLUMNS, "source", "output")[0] == "alpaca"
    # A config that set up the pairs template (finetune.template, prompt_field or response_field) keeps its pairs.
    assert detect_format(alpaca_like, COLUMNS, "source", "output", prefer_pairs=True)[0] == "pairs"
    assert detect_format({"question": "q", "target": "a"}, COLUMNS, "source", "target")[0] == "pairs"
    path = jsonl(tmp_path, [{"question": "q", "answer": "a"}])
    with pytest.raises(AigcError, match=rf"^{path}:1: finetune.format auto cannot tell this record's format \(fields: 'question', 'answer'\)$"):
        resolve_format(str(path), "auto", COLUMNS, "source", "target")


def test_conversations_come_from_parquet_too(tmp_path):
    import datasets

    path = tmp_path / "chat.parquet"
    datasets.Dataset.from_list([{"messages": [USER, ASSISTANT]}] * 3).to_parquet(str(path))
    conversations = read_conversations(str(path), "messages", COLUMNS)
    assert [c.where for c in conversations] == [f"{path}:{i}" for i in (1, 2, 3)] and conversations[2].messages == [USER, ASSISTANT]


def turns(*pairs):
    return {"messages": [{"role": r, "content": c} for r, c in pairs]}


@pytest.mark.parametrize("record, message", [
    ({"messages": [{"content": "hi"}, ASSISTANT]}, "messages[0] has no role"),
    ({"messages": [{"role": "tool", "content": "x"}, ASSISTANT]}, "messages[0] has the unknown role 'tool'"),
    (turns(("system", "a"), ("system", "b"), ("user", "hi"), ("assistant", "yo")), "messages[1] is a system message after the first turn"),
    (turns(("user", "hi"), ("system", "b"), ("assistant", "yo")), "messages[1] is a system message after the first turn"),
    ({"messages": [USER, {"role": "assistant", "content": ["a", "b"]}]}, "messages[1] (assistant) has content of type list, not a string"),
    ({"messages": [USER, {"role": "assistant", "content": None}]}, "messages[1] (assistant) has no content"),
    (turns(("user", "hi"), ("assistant", "  ")), "messages[1] is an empty assistant turn"),
    (turns(("user", "hi")), "messages has no assistant turn"),
    (turns(("user", "hi"), ("user", "again"), ("assistant", "yo")), "messages[1] is a second user turn in a row"),
    (turns(("user", "hi"), ("assistant", "a"), ("assistant", "b")), "messages[2] is a second assistant turn in a row"),
    (turns(("assistant", "hello"), ("user", "hi"), ("assistant", "yo")), "messages[0] is an assistant turn before any user turn"),
    (turns(("user", "hi"), ("assistant", "yo"), ("user", "and?")), "messages ends with a user turn that has no reply"),
    ({"messages": []}, "messages is empty"),
    ({"messages": "hi"}, "field 'messages' is str, not a list of turns"),
    ({"messages": [USER, "hello"]}, "messages[1] is str, not a message object"),
    ({"other": 1}, "field 'messages' is missing"),
])
def test_bad_conversations_name_file_row_and_problem(tmp_path, record, message):
    path = jsonl(tmp_path, [{"messages": [USER, ASSISTANT]}, record])
    with pytest.raises(AigcError) as caught:
        read_conversations(str(path), "messages", COLUMNS)
    assert caught.value.exit_code == 2 and caught.value.message == f"{path}:2: {message}"


@pytest.mark.parametrize("fmt, record, message", [
    ("sharegpt", {"conversations": [{"from": "bot", "value": "x"}]}, "conversations[0] has the unknown speaker 'bot'"),
    ("alpaca", {"instruction": "hi"}, "field 'output' is missing"),
    ("alpaca", {"instruction": "hi", "output": None}, "field 'output' is null"),
    ("alpaca", {"instruction": "hi", "output": 3}, "field 'output' is int, not a string"),
])
def test_bad_records_of_other_formats(tmp_path, fmt, record, message):
    path = jsonl(tmp_path, [record])
    with pytest.raises(AigcError) as caught:
        read_conversations(str(path), fmt, COLUMNS)
    assert caught.value.message == f"{path}:1: {message}"


def test_preference_replies_are_strings_or_messages_and_the_prompt_may_be_implicit(tmp_path):
    rows = [{"prompt": "hi", "chosen": "hello", "rejected": "go away"},
            {"prompt": [SYSTEM, USER], "chosen": [ASSISTANT], "rejected": [{"role": "assistant", "content": "no"}]},
            {"chosen": [USER, ASSISTANT], "rejected": [USER, {"role": "assistant", "content": "no"}]}]
    pairs = read_preference_pairs(str(jsonl(tmp_path, rows)), COLUMNS)
    assert pairs[0].prompt == [USER] and pairs[0].chosen == [{"role": "assistant", "content": "hello"}]
    assert pairs[1].prompt == [SYSTEM, USER] and pairs[1].rejected == [{"role": "assistant", "content": "no"}]
    assert pairs[2].prompt == [USER] and pairs[2].chosen == [ASSISTANT]


@pytest.mark.parametrize("record, message", [
    ({"prompt": "hi", "chosen": "same", "rejected": "same"}, "chosen and rejected are the same reply"),
    ({"prompt": "hi", "chosen": "", "rejected": "b"}, "chosen[0] is an empty assistant turn"),
    ({"prompt": "hi", "chosen": 5, "rejected": "b"}, "field 'chosen' is int, not a string or a list of messages"),
    ({"prompt": [USER, ASSISTANT], "chosen": "a", "rejected": "b"}, "the prompt ends with an assistant turn"),
    ({"prompt": "hi", "chosen": [USER], "rejected": "b"}, "chosen[0] is a second user turn in a row"),
    ({"chosen": "a", "rejected": "b"}, "no field 'prompt', and chosen and rejected share no first turns"),
    ({"prompt": "hi", "rejected": "b", "chosen": None}, "field 'chosen' is null"),
])
def test_bad_preference_pairs(tmp_path, record, message):
    path = jsonl(tmp_path, [record])
    with pytest.raises(AigcError) as caught:
        read_preference_pairs(str(path), COLUMNS)
    assert caught.value.message == f"{path}:1: {message}"

"""Conversations: the one shape every chat format becomes, its checks, and the built-in templates.

A message is {"role": "system" | "user" | "assistant", "content": str}. A `Conversation` is an
optional system message, then user and assistant turns taking turns, starting with the user and
ending with the assistant. A `PreferencePair` is a prompt (ending with a user turn) and two
replies to it. Every record format (chat_formats.py) is normalised to these, and every check of
a bad record is here, so that each format fails the same way: "FILE:N: what is wrong — how to fix".

The built-in chat templates are for bases whose tokenizer has no `chat_template` of its own
(aigc's models); they are Jinja sources for transformers' `apply_chat_template`, written into
the tuned checkpoint's tokenizer config. Nothing here imports torch or transformers.
"""

from __future__ import annotations

from dataclasses import dataclass

from aigc_cli.errors import AigcError

ROLES = ("system", "user", "assistant")


@dataclass
class Conversation:
    messages: list[dict]
    where: str  # "FILE:N" for error messages


@dataclass
class PreferencePair:
    prompt: list[dict]  # ends with a user turn
    chosen: list[dict]  # the preferred reply: assistant turn(s) continuing the prompt
    rejected: list[dict]
    where: str


# Jinja sources for apply_chat_template. Each renders a turn the same whether or not later turns
# follow (labels are cut at prefix renders, see chat_examples.py), and ends an assistant turn
# with one special token, which the tuned model learns to emit and generation stops at.
CHAT_TEMPLATES: dict[str, str] = {
    # OpenAI's ChatML, as Qwen and many open models use it.
    "chatml": ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
               "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"),
    # Llama 3's header tokens (without its begin-of-text token, which aigc's tokenizers lack).
    "llama3": ("{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' }}"
               "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"),
    # Zephyr's: role tags, and the tokenizer's own end-of-text closing every turn.
    "zephyr": ("{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
               "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"),
}

# The tokens each built-in template writes, added to a tokenizer that lacks them (one id each, so
# a role marker is never spelled out in characters and user text cannot forge it by accident).
CHAT_TEMPLATE_TOKENS: dict[str, tuple[str, ...]] = {
    "chatml": ("<|im_start|>", "<|im_end|>"),
    "llama3": ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    "zephyr": ("<|system|>", "<|user|>", "<|assistant|>"),
}


def check_message(message, where: str, field: str) -> dict:
    """One message as {"role", "content"}; anything else about it is an error."""
    if not isinstance(message, dict):
        raise AigcError(f"{where}: {field} is {type(message).__name__}, not a message object", 'write each turn as {"role": ..., "content": ...}')
    role, content = message.get("role"), message.get("content")
    if role is None:
        raise AigcError(f"{where}: {field} has no role", f"give every turn a role: {', '.join(ROLES)}")
    if role not in ROLES:
        raise AigcError(f"{where}: {field} has the unknown role {role!r}", f"use one of {', '.join(ROLES)} (map other roles, or set finetune.format)")
    if content is None:
        raise AigcError(f"{where}: {field} ({role}) has no content", "give every turn its text as 'content'")
    if not isinstance(content, str):
        raise AigcError(f"{where}: {field} ({role}) has content of type {type(content).__name__}, not a string", "write each turn's content as one string")
    if role == "assistant" and not content.strip():
        raise AigcError(f"{where}: {field} is an empty assistant turn", "remove the record or write the reply: nothing would be learned from it")
    return {"role": role, "content": content}


def check_turns(messages: list[dict], where: str, field: str = "messages", start: int = 0, previous: str | None = None) -> None:
    """Role order: one optional system message first, then user/assistant alternating from the user.
    `start` and `previous`: the index of messages[0] in the whole conversation and the role before
    it (a reply continuing a prompt)."""
    for i, message in enumerate(messages, start=start):
        role = message["role"]
        if role == "system":
            if i != 0:
                raise AigcError(f"{where}: {field}[{i - start}] is a system message after the first turn", "put one system message first, or merge it into a user turn")
        elif previous == role:
            raise AigcError(f"{where}: {field}[{i - start}] is a second {role} turn in a row", "merge consecutive turns of one role, or add the missing turn between them")
        elif previous in (None, "system") and role != "user":
            raise AigcError(f"{where}: {field}[{i - start}] is an assistant turn before any user turn", "start the conversation with a user turn")
        previous = role


def check_conversation(messages, where: str, field: str = "messages") -> Conversation:
    if not isinstance(messages, list) or not messages:
        what = "empty" if isinstance(messages, list) else f"{type(messages).__name__}, not a list of turns"
        raise AigcError(f"{where}: {field} is {what}", f"give '{field}' a list of turns (or set finetune.columns to the field that holds them)")
    turns = [check_message(m, where, f"{field}[{i}]") for i, m in enumerate(messages)]
    check_turns(turns, where, field)
    if not any(m["role"] == "assistant" for m in turns):
        raise AigcError(f"{where}: {field} has no assistant turn", "add the reply to learn; a conversation without one teaches nothing")
    if turns[-1]["role"] != "assistant":
        raise AigcError(f"{where}: {field} ends with a {turns[-1]['role']} turn that has no reply", "remove the last turn or add the assistant's reply")
    return Conversation(turns, where)


def check_preference(prompt: list, chosen: list, rejected: list, where: str) -> PreferencePair:
    """Prompt and replies already as message lists (strings wrapped by the reader)."""
    if not isinstance(prompt, list) or not prompt:
        raise AigcError(f"{where}: the prompt is empty", "give every pair the prompt its replies answer")
    turns = [check_message(m, where, f"prompt[{i}]") for i, m in enumerate(prompt)]
    check_turns(turns, where, "prompt")
    if turns[-1]["role"] != "user":
        raise AigcError(f"{where}: the prompt ends with {'an assistant' if turns[-1]['role'] == 'assistant' else 'a system'} turn", "end the prompt with the user turn that chosen and rejected answer")
    replies = []
    for field, reply in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(reply, list) or not reply:
            raise AigcError(f"{where}: {field} is empty", f"give '{field}' the reply as a string or a list of assistant messages")
        messages = [check_message(m, where, f"{field}[{i}]") for i, m in enumerate(reply)]
        check_turns(messages, where, field, start=len(turns), previous="user")
        if messages[0]["role"] != "assistant" or messages[-1]["role"] != "assistant":
            raise AigcError(f"{where}: {field} does not start and end with an assistant turn", f"write '{field}' as the assistant's reply to the prompt")
        replies.append(messages)
    if replies[0] == replies[1]:
        raise AigcError(f"{where}: chosen and rejected are the same reply", "remove the pair: identical replies carry no preference")
    return PreferencePair(turns, replies[0], replies[1], where)

"""Conversations as prompt text, written by the checkpoint's own chat template.

A conversation is a list of OpenAI-style messages ({"role": "system"|"user"|"assistant",
"content": str}) ending with the user's turn. transformers' `apply_chat_template` renders it
with `add_generation_prompt=True`, exactly as any serving stack reading the same checkpoint
would; the text is then encoded like every other prompt (no special tokens added), so the ids are
the ones `apply_chat_template(..., tokenize=True)` gives. Nothing here imports torch: a
generate run whose replies are all in its manifest renders its prompts and loads no model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from aigc_cli.errors import AigcError

ROLES = ("system", "user", "assistant")
NO_TEMPLATE_HINT = "fine-tune it on chat data (finetune.format: messages) or give plain prompts"
_ROW_HINT = 'a row looks like {"messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."}]}'


def has_chat_template(directory: Path) -> bool:
    """Whether the checkpoint's tokenizer files carry a chat template: chat_template.jinja (as
    transformers 5 saves it) or a `chat_template` in tokenizer_config.json (as older versions do)."""
    directory = Path(directory)
    if (directory / "chat_template.jinja").is_file() or (directory / "chat_template.json").is_file():
        return True
    try:
        config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and bool(config.get("chat_template"))


def require_chat_template(directory: Path) -> None:
    if not has_chat_template(directory):
        raise AigcError(f"{directory} has no chat template", NO_TEMPLATE_HINT)


def chat_formatter(directory: Path) -> Callable[[list[dict], str], str]:
    """format(messages, where) -> the prompt text the checkpoint's template makes of a
    conversation, ready for the assistant's reply. `where` names the conversation in errors."""
    from jinja2 import TemplateError
    from transformers import PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    require_chat_template(directory)
    hf_logging.set_verbosity_error()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(directory))
    if not tokenizer.chat_template:
        raise AigcError(f"{directory} has no chat template", NO_TEMPLATE_HINT)

    def format_messages(messages: list[dict], where: str) -> str:
        try:
            return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except TemplateError as exc:  # raise_exception() in the template: e.g. roles it does not know
            raise AigcError(f"{where}: the chat template of {directory} refuses this conversation ({exc})",
                            "change the conversation to what the template accepts (many take no system message, or need user and assistant to alternate)") from None

    return format_messages


def prompt_messages(value: Any, where: str) -> list[dict]:
    """`value` (a row's `messages`), checked to be a conversation to reply to; returned as it is."""
    if not isinstance(value, list) or not value:
        raise AigcError(f"{where}: 'messages' is not a non-empty list of messages", _ROW_HINT)
    for number, message in enumerate(value, start=1):
        if not isinstance(message, dict):
            raise AigcError(f"{where}: message {number} is not a JSON object", _ROW_HINT)
        if "role" not in message:
            raise AigcError(f"{where}: message {number} has no 'role'", "give every message a role: system, user or assistant")
        role = message["role"]
        if role not in ROLES:
            raise AigcError(f"{where}: message {number} has the role {json.dumps(role)}", "use system, user or assistant")
        if role == "system" and number > 1:
            raise AigcError(f"{where}: message {number} is a second system message", "only the first message may be the system message")
        content = message.get("content")
        if not isinstance(content, str):
            got = "missing" if "content" not in message else f"{type(content).__name__ if content is not None else 'null'}, not a string"
            raise AigcError(f"{where}: the content of message {number} is {got}", "give every message its text as one string")
    if value[-1]["role"] != "user":
        raise AigcError(f"{where}: the last message is the {value[-1]['role']}'s, not the user's",
                        "a prompt conversation ends with the user's turn; the reply is what is generated")
    return value

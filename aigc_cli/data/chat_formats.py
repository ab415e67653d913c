"""Chat record formats → Conversation / PreferencePair (chat.py), and the detection of `auto`.

alpaca    {"instruction", "input"?, "output", "system"?}
sharegpt  {"conversations": [{"from": "human"|"gpt"|"system", "value"}], "system"?}
messages  {"messages": [{"role": "system"|"user"|"assistant", "content"}]}
preference {"prompt"?, "chosen", "rejected"}: each a string or a list of messages; without a
          prompt, chosen and rejected are whole conversations and their shared first turns are it.
Field and key names are finetune.columns'. `pairs` (prompt/response filled into a template) is
read by pairs.py; `detect_format` tells all six apart from the first record.
"""

from __future__ import annotations

from typing import Iterator

from aigc_cli.data.chat import Conversation, PreferencePair, check_conversation, check_preference
from aigc_cli.data.records import read_records
from aigc_cli.errors import AigcError

CHAT_FORMATS = ("alpaca", "sharegpt", "messages", "preference")
# ShareGPT's speaker names (and the OpenAI ones some exports use) → roles.
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
DEFAULT_TURNS = {"messages": ("messages", "role", "content"), "sharegpt": ("conversations", "from", "value")}


def turn_keys(fmt: str, columns) -> tuple[str, str, str]:
    """(field of the turns, speaker key, text key) for messages or sharegpt, after finetune.columns."""
    field, role, content = DEFAULT_TURNS[fmt]
    return columns.messages or field, columns.role or role, columns.content or content


def detect_format(record: dict, columns, prompt_field: str, response_field: str, prefer_pairs: bool = False) -> tuple[str, str]:
    """(format, why) from one record's fields. `prefer_pairs` (the config set up the pairs
    template): a record with the response field is a pair, whatever else it holds."""
    if prefer_pairs and response_field in record:
        return "pairs", f"field '{response_field}' of finetune.response_field"
    if columns.chosen in record and columns.rejected in record:
        return "preference", f"fields '{columns.chosen}' and '{columns.rejected}'"
    for fmt in ("messages", "sharegpt"):
        field = columns.messages or DEFAULT_TURNS[fmt][0]
        turns = record.get(field)
        if isinstance(turns, list) and turns and isinstance(turns[0], dict):
            for shape in ("messages", "sharegpt"):
                _, role, content = turn_keys(shape, columns)
                if role in turns[0] and content in turns[0]:
                    return shape, f"field '{field}' of {role}/{content}"
    if columns.instruction in record and columns.output in record:
        return "alpaca", f"fields '{columns.instruction}' and '{columns.output}'"
    if prompt_field in record or response_field in record:  # the pairs reader says which is missing
        return "pairs", f"field '{prompt_field if prompt_field in record else response_field}'"
    return "", ""


def resolve_format(path: str, fmt: str, columns, prompt_field: str, response_field: str,
                   prefer_pairs: bool = False) -> tuple[str, str | None]:
    """finetune.format for `path`: as configured, or told from its first record (see detect_format).
    Returns the format and, for auto, the line that states the detection."""
    if fmt != "auto":
        return fmt, None
    first = next(read_records(path, "fix that line; each line must be one JSON object"), None)
    if first is None:
        raise AigcError(f"{path} holds no examples", "put training records in it")
    where, record = first
    detected, why = detect_format(record, columns, prompt_field, response_field, prefer_pairs)
    if not detected:
        shown = ", ".join(f"'{k}'" for k in list(record)[:8]) or "none"
        raise AigcError(f"{where}: finetune.format auto cannot tell this record's format (fields: {shown})",
                        "set finetune.format (pairs, alpaca, sharegpt, messages, preference) and finetune.columns "
                        "(or prompt_field/response_field for pairs) to its field names")
    return detected, f"finetune.format auto: detected '{detected}' ({why}) in {path}"


def read_conversations(path: str, fmt: str, columns) -> list[Conversation]:
    """Every record of `path` as a checked Conversation; a bad record is an error naming it."""
    parse = {"alpaca": _alpaca, "sharegpt": _turns, "messages": _turns}[fmt]
    conversations = [parse(record, where, fmt, columns) for where, record in _records(path, fmt)]
    if not conversations:
        raise AigcError(f"{path} holds no examples", f"put {fmt} records in it")
    return conversations


def read_preference_pairs(path: str, columns) -> list[PreferencePair]:
    pairs = [_preference(record, where, columns) for where, record in _records(path, "preference")]
    if not pairs:
        raise AigcError(f"{path} holds no examples", "put prompt/chosen/rejected records in it")
    return pairs


def _records(path: str, fmt: str) -> Iterator[tuple[str, dict]]:
    return read_records(path, f"fix that line; each line must be one JSON object of the {fmt} format")


def _field(record: dict, name: str, where: str, fmt: str, required: bool = True):
    value = record.get(name)
    if value is None and required:
        state = "is null" if name in record else "is missing"
        raise AigcError(f"{where}: field '{name}' {state}", f"give every {fmt} record '{name}', or set finetune.columns.* to the field that holds it")
    return value


def _text(value, where: str, name: str) -> str:
    if not isinstance(value, str):
        raise AigcError(f"{where}: field '{name}' is {type(value).__name__}, not a string", f"write '{name}' as text")
    return value


def _system(record: dict, columns, where: str) -> list[dict]:
    value = record.get(columns.system)
    return [{"role": "system", "content": _text(value, where, columns.system)}] if value not in (None, "") else []


def _alpaca(record: dict, where: str, fmt: str, columns) -> Conversation:
    instruction = _text(_field(record, columns.instruction, where, fmt), where, columns.instruction)
    extra = record.get(columns.input)
    user = instruction if extra in (None, "") else f"{instruction}\n\n{_text(extra, where, columns.input)}"
    output = _text(_field(record, columns.output, where, fmt), where, columns.output)
    messages = _system(record, columns, where) + [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return check_conversation(messages, where, columns.output)


def _turns(record: dict, where: str, fmt: str, columns) -> Conversation:
    field, role_key, content_key = turn_keys(fmt, columns)
    turns = _field(record, field, where, fmt)
    if not isinstance(turns, list):
        hint = "in CSV a list cannot be a cell: use JSONL, Parquet or a datasets directory" if isinstance(turns, str) else f"give '{field}' a list of turns"
        raise AigcError(f"{where}: field '{field}' is {type(turns).__name__}, not a list of turns", hint)
    messages = [_message(turn, where, f"{field}[{i}]", fmt, role_key, content_key) for i, turn in enumerate(turns)]
    if messages and isinstance(messages[0], dict) and messages[0].get("role") != "system":
        messages = _system(record, columns, where) + messages
    return check_conversation(messages, where, field)


def _message(turn, where: str, field: str, fmt: str, role_key: str, content_key: str):
    if not isinstance(turn, dict):
        return turn  # check_message names it
    role = turn.get(role_key)
    if fmt == "sharegpt" and role is not None:
        if role not in SHAREGPT_ROLES:
            raise AigcError(f"{where}: {field} has the unknown speaker {role!r}",
                            f"use {', '.join(SHAREGPT_ROLES)} in '{role_key}' (or set finetune.format)")
        role = SHAREGPT_ROLES[role]
    return {"role": role, "content": turn.get(content_key)}


def _preference(record: dict, where: str, columns) -> PreferencePair:
    chosen = _reply(_field(record, columns.chosen, where, "preference"), where, columns.chosen)
    rejected = _reply(_field(record, columns.rejected, where, "preference"), where, columns.rejected)
    prompt = record.get(columns.prompt)
    if prompt is None:  # implicit prompt: the turns both conversations share
        shared = 0
        while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
            shared += 1
        if shared == 0:
            raise AigcError(f"{where}: no field '{columns.prompt}', and chosen and rejected share no first turns",
                            f"give the prompt in '{columns.prompt}' (or set finetune.columns.prompt)")
        prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
    elif isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list):
        prompt = [_message(m, where, f"{columns.prompt}[{i}]", "messages", "role", "content") for i, m in enumerate(prompt)]
    else:
        raise AigcError(f"{where}: field '{columns.prompt}' is {type(prompt).__name__}, not a string or a list of messages",
                        "write the prompt as text or as role/content turns")
    return check_preference(prompt, chosen, rejected, where)


def _reply(value, where: str, name: str) -> list:
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    if isinstance(value, list):
        return [_message(m, where, f"{name}[{i}]", "messages", "role", "content") for i, m in enumerate(value)]
    raise AigcError(f"{where}: field '{name}' is {type(value).__name__}, not a string or a list of messages",
                    f"write '{name}' as the reply's text or as assistant turns")

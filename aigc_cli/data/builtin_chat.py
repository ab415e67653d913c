"""Conversations and preference pairs about the Python standard library, made on the machine.

The chat starters (`aigc init --template chat-sft`, `chat-dpo`) train on these, so the chat demo
needs no download. Each public function of the standard library that runs aigc (name, signature,
first docstring sentence: `python_function_summaries`) becomes short Q&A in OpenAI `messages`
form — "What does json.loads do?" → its summary; "What does it take?" → its signature — with the
question's wording, the order of the two questions and an optional system message varied per
function by a seeded generator, so a model has to read the question to answer it. A preference
pair asks the same questions; `chosen` is the right answer and `rejected` the answer of the same
kind (summary or signature) of another function of the same split. Rows are
{"messages": [...]} and {"prompt": [...], "chosen": "...", "rejected": "..."} with chosen and
rejected as strings; the `preference` format's reader (finetune.format) equally accepts them as
lists of assistant messages, [{"role": "assistant", "content": "..."}].

Held-out functions are chosen by a hash of their summary, so functions that share a summary
(posixpath.join and ntpath.join, a method and its override) land on the same side and a held-out
answer is never trained on; the split of a function does not move when a Python release adds or
drops others. Everything is deterministic for a Python version.

Length is counted as a character-level tokenizer (the text-gpt starter's) sees the `chatml`
rendering with <|im_start|> and <|im_end|> as one token each: `chatml_length`. A conversation is
kept only if it fits `max_tokens`. A two-turn conversation needs about 215 of those tokens (the
median; 90% need under 256), so at the default budget (the text-gpt context of 128 characters,
less a margin) nearly all are one question long; `max_tokens=250` makes most of them two-turn.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
from dataclasses import dataclass
from typing import Literal

from aigc_cli.data.builtin_corpus import python_function_summaries

CONTEXT_TOKENS = 120  # the text-gpt starter's block_size (128 characters), less a margin
HELD_OUT_PERCENT = 10
SEED = 0

SYSTEM_PROMPTS = ("You answer questions about the Python standard library.",
                  "Answer questions about Python.",
                  "You know Python's standard library.")
SYSTEM_EVERY = 4  # about one conversation in four opens with a system message, where it fits

# {name} is the function's qualified name ("json.loads"); the follow-ups refer to it as "it".
ASK_WHAT = ("What does {name} do?", "What is {name} for?", "Explain {name}.", "What does {name} do, briefly?",
            "Tell me what {name} does.", "{name}: what does it do?")
ASK_PARAMS = ("What does {name} take?", "What are the parameters of {name}?", "What is the signature of {name}?",
              "How do I call {name}?", "What arguments does {name} take?", "{name}: what are its parameters?")
THEN_WHAT = ("What does it do?", "And what is it for?", "What is it used for?", "And what does it do?")
THEN_PARAMS = ("What does it take?", "What are its parameters?", "And its signature?", "How do I call it?",
               "What arguments does it take?")

Kind = Literal["summary", "signature"]
Split = Literal["train", "val"]
# What a conversation asks, in order: the summary then the signature, the other way round, or one of them.
SHAPES: tuple[tuple[Kind, ...], ...] = (("summary", "signature"), ("signature", "summary"), ("summary",), ("signature",))


@dataclass(frozen=True)
class PythonFunction:
    name: str        # "json.loads"
    signature: str   # "json.loads(s, *, cls=None, ...)"
    summary: str     # "Deserialize ``s`` ... to a Python object."

    def answer(self, kind: Kind) -> str:
        return self.summary if kind == "summary" else self.signature


@dataclass
class ChatExample:
    function: str                 # the name of the function the conversation is about
    messages: list[dict]          # {"role": "system"|"user"|"assistant", "content": str}

    def row(self) -> dict:
        return {"messages": self.messages}


@dataclass
class PreferenceExample:
    function: str                 # whose question the prompt asks
    rejected_from: str            # whose answer `rejected` is
    kind: Kind                    # what the question asks for
    prompt: list[dict]            # messages ending with the user's question
    chosen: str
    rejected: str

    def row(self) -> dict:
        return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}


def chatml_length(messages: list[dict], add_generation_prompt: bool = False) -> int:
    """Tokens of the chatml rendering for a character-level tokenizer: per message
    <|im_start|> ROLE \\n CONTENT <|im_end|> \\n, the two markers one token each."""
    total = sum(1 + len(m["role"]) + 1 + len(m["content"]) + 1 + 1 for m in messages)
    return total + (len("assistant") + 2 if add_generation_prompt else 0)


@functools.lru_cache(maxsize=1)
def python_functions() -> tuple[PythonFunction, ...]:
    """Every public stdlib function with a summary, one per qualified name (the first signature in
    sorted order where a name is defined twice, so a question has one right answer)."""
    functions: dict[str, PythonFunction] = {}
    for pair in python_function_summaries(max_chars=10_000):
        name = pair["source"].split("(", 1)[0]
        functions.setdefault(name, PythonFunction(name, pair["source"], pair["target"]))
    return tuple(functions.values())


def split_of(function: PythonFunction) -> Split:
    digest = hashlib.sha256(function.summary.encode("utf-8")).digest()
    return "val" if int.from_bytes(digest[:8], "big") % 100 < HELD_OUT_PERCENT else "train"


def _rng(*key: object) -> random.Random:
    return random.Random(":".join(str(k) for k in (SEED, *key)))  # str seeds hash with sha512: stable across runs


def _question(kind: Kind, name: str, first: bool, rng: random.Random) -> str:
    if first:
        return rng.choice(ASK_WHAT if kind == "summary" else ASK_PARAMS).format(name=name)
    return rng.choice(THEN_WHAT if kind == "summary" else THEN_PARAMS)


def _dialogue(function: PythonFunction, kinds: tuple[Kind, ...], rng: random.Random) -> list[dict]:
    messages = []
    for turn, kind in enumerate(kinds):
        messages.append({"role": "user", "content": _question(kind, function.name, turn == 0, rng)})
        messages.append({"role": "assistant", "content": function.answer(kind)})
    return messages


def _with_system(messages: list[dict], rng: random.Random, max_tokens: int) -> list[dict]:
    if rng.randrange(SYSTEM_EVERY):
        return messages
    system = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}]
    return system + messages if chatml_length(system + messages) <= max_tokens else messages


def _conversations(function: PythonFunction, per_function: int, max_tokens: int) -> list[list[dict]]:
    """Up to `per_function` conversations of different shapes that fit, two-turn shapes first."""
    rng = _rng("chat", function.name)
    fitting = []
    for shape in SHAPES:
        messages = _dialogue(function, shape, rng)
        if chatml_length(messages) <= max_tokens:
            fitting.append(messages)
    two_turn = [m for m in fitting if len(m) == 4]
    one_turn = [m for m in fitting if len(m) == 2]
    rng.shuffle(two_turn)
    rng.shuffle(one_turn)
    return [_with_system(m, rng, max_tokens) for m in (two_turn + one_turn)[:per_function]]


def python_chat(split: Split, per_function: int = 2, max_tokens: int = CONTEXT_TOKENS) -> list[ChatExample]:
    """Conversations about the functions of `split`, in function-name order."""
    return [ChatExample(f.name, messages) for f in python_functions() if split_of(f) == split
            for messages in _conversations(f, per_function, max_tokens)]


def python_preferences(split: Split, max_tokens: int = CONTEXT_TOKENS) -> list[PreferenceExample]:
    """One pair per function of `split` whose prompt and both answers fit `max_tokens`: the prompt
    asks for its summary or signature (after the other question, where two turns fit), `chosen`
    is that answer and `rejected` the same kind of answer of another function of the split — one
    of the same module or class where one fits (a near miss teaches more than a random answer)."""
    functions = [f for f in python_functions() if split_of(f) == split]
    by_owner: dict[str, list[PythonFunction]] = {}
    for f in functions:
        by_owner.setdefault(_owner(f), []).append(f)
    pairs = []
    for function in functions:
        rng = _rng("preference", function.name)
        fitting = [(shape, d) for shape in SHAPES
                   if chatml_length(d := _dialogue(function, shape, rng)) <= max_tokens]
        if not fitting:
            continue
        shape, dialogue = rng.choice(fitting)
        dialogue = _with_system(dialogue, rng, max_tokens)
        prompt, chosen, kind = dialogue[:-1], dialogue[-1]["content"], shape[-1]
        room = max_tokens - chatml_length(prompt + [{"role": "assistant", "content": ""}])
        near = [f for f in by_owner[_owner(function)] if _wrong_answer(f, function, kind, room)]
        other = rng.choice(near) if near else _random_wrong_answer(functions, function, kind, room, rng)
        if other is not None:
            pairs.append(PreferenceExample(function.name, other.name, kind, prompt, chosen, other.answer(kind)))
    return pairs


def _owner(function: PythonFunction) -> str:
    return function.name.rsplit(".", 1)[0]  # "json" for json.loads, "json.JSONDecoder" for its methods


def _wrong_answer(other: PythonFunction, function: PythonFunction, kind: Kind, room: int) -> bool:
    """`other`'s answer is a wrong one for `function` (not merely the same words) and fits `room`."""
    answer = other.answer(kind)
    return other.name != function.name and answer != function.answer(kind) and len(answer) <= room


def _random_wrong_answer(functions: list[PythonFunction], function: PythonFunction, kind: Kind, room: int,
                         rng: random.Random) -> PythonFunction | None:
    for _ in range(100):  # nearly always the first draw
        other = functions[rng.randrange(len(functions))]
        if _wrong_answer(other, function, kind, room):
            return other
    return None


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)

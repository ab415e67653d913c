"""`aigc chat CHECKPOINT`: a conversation with a checkpoint in the terminal.

Before every reply the conversation (the system message and the turns since the last /reset) is
rendered by the checkpoint's chat template (inference/chat_format.py) and the reply is decoded by
the one decode loop (inference/text_decoding.py), streamed as it grows and ended at the
checkpoint's end-of-turn token. A reply's seed comes from --seed and the prompt text as in
`aigc generate`, so with the same settings a conversation gets the same reply in both (while
the reply's room is not cut short by the context). When the conversation outgrows
the model's context, its oldest exchanges are left out (the system message stays), said once.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from aigc_cli.config import GenerateConfig
from aigc_cli.errors import AigcError
from aigc_cli.generation.text import completion_seed
from aigc_cli.inference.chat_format import chat_formatter
from aigc_cli.runs.checkpoints import resolve_checkpoint

PROMPT = "you> "
HELP = """commands:
  /system TEXT   set the system message (/system alone removes it); the conversation is kept
  /reset         forget the conversation (the system message stays)
  /help          this list
  /quit          quit (Ctrl-D too); Ctrl-C stops a reply"""


@dataclass
class ChatSummary:
    replies: int

    def to_json(self) -> dict:
        return {"replies": self.replies}

    def summary_lines(self) -> list[str]:
        return []  # the conversation was the output


@dataclass
class Conversation:
    """What the model is shown: the system message, then the turns since the last /reset."""

    system: str | None = None
    turns: list[dict] = field(default_factory=list)

    def messages(self) -> list[dict]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.turns

    def drop_oldest_exchange(self) -> bool:
        """Leave out the oldest user turn and the reply to it (the turns then still begin with a
        user's, as templates expect); False when only the last user turn is left."""
        later = next((i for i in range(1, len(self.turns)) if self.turns[i]["role"] == "user"), None)
        if later is None:
            return False
        del self.turns[:later]
        return True


class ChatSession:
    """One conversation with a loaded model: `handle` takes each line the person types."""

    def __init__(self, loaded, format_messages: Callable[[list[dict], str], str], gc: GenerateConfig, system: str | None,
                 write: Callable[[str], None], note: Callable[[str], None]):
        self.loaded, self.format_messages, self.gc = loaded, format_messages, gc
        self.conversation = Conversation(system or None)
        self.write, self.note = write, note
        self.replies = 0
        self._said_dropped = False

    def handle(self, line: str) -> bool:
        """Answer a message or run a /command; False means quit."""
        text = line.strip()
        if not text:
            return True
        if text.startswith("/"):
            return self._command(text)
        self._answer(text)
        return True

    def _command(self, text: str) -> bool:
        name, _, rest = text.partition(" ")
        if name in ("/quit", "/exit"):
            return False
        if name == "/reset":
            self.conversation.turns.clear()
            self.note("(conversation cleared; the system message stays)")
        elif name == "/system":
            self.conversation.system = rest.strip() or None
            self.note("(system message set)" if self.conversation.system else "(system message removed)")
        elif name == "/help":
            self.note(HELP)
        else:
            self.note(f"(unknown command {name}; /help lists the commands)")
        return True

    def _answer(self, text: str) -> None:
        turn = {"role": "user", "content": text}
        self.conversation.turns.append(turn)
        shown: list[str] = []
        try:
            fitted = self._fit_context()
            if fitted is None:
                self.conversation.turns.pop()
                return
            prompt, budget = fitted
            completion = self._decode(prompt, budget, shown)
        except KeyboardInterrupt:  # Ctrl-C stops this reply, not the program
            if self.conversation.turns and self.conversation.turns[-1] is turn:
                self.conversation.turns.pop()
            self.write("\n")
            self.note("(reply stopped; this exchange is left out of the conversation)")
            return
        except AigcError as exc:  # the template refused the conversation: say why, keep chatting
            self.conversation.turns.pop()
            self.note(f"error: {exc.one_line()}")
            return
        rest = completion.text[len("".join(shown)):]  # a character the stream held back until complete
        self.write(rest + "\n")
        self.conversation.turns.append({"role": "assistant", "content": completion.text})
        self.replies += 1
        if completion.finish_reason == "length":
            self.note(f"(reply cut at {completion.new_tokens} tokens; --max-new-tokens sets the limit)")

    def _decode(self, prompt: str, budget: int, shown: list[str]):
        from aigc_cli.inference.text_decoding import sample_texts

        def on_text(piece: str) -> None:
            shown.append(piece)
            self.write(piece)

        gc = self.gc if budget >= self.gc.max_new_tokens else self.gc.model_copy(update={"max_new_tokens": budget})
        [completion] = sample_texts(self.loaded, [prompt], gc, [completion_seed(self.gc.seed, prompt, 0)], on_text)
        return completion

    def _fit_context(self) -> tuple[str, int] | None:
        """The prompt and how many tokens the reply may take, after leaving out the oldest
        exchanges while the prompt leaves the reply less than its room; None when the last
        message alone does not fit."""
        limit = self.loaded.backend.context_length(self.loaded.model)
        # The room kept for a reply: --max-new-tokens, but at most half the context, so a long
        # limit does not leave a model with a short context only the last message.
        room = self.gc.max_new_tokens if limit is None else min(self.gc.max_new_tokens, limit // 2)
        while True:
            prompt = self.format_messages(self.conversation.messages(), "aigc chat")
            if limit is None:
                return prompt, self.gc.max_new_tokens
            used = len(self.loaded.tokenizer.encode(prompt, add_special_tokens=False).ids)
            if used + room <= limit:
                return prompt, min(self.gc.max_new_tokens, limit - used)
            if not self.conversation.drop_oldest_exchange():
                if used < limit:
                    return prompt, limit - used
                self.note(f"(this message needs {used} tokens with the conversation's template, and the model's context "
                          f"holds {limit}; shorten it or the system message)")
                return None
            if not self._said_dropped:
                self._said_dropped = True
                self.note(f"(the conversation is longer than the model's {limit}-token context: from now on its oldest "
                          "turns are left out; the system message stays)")


def chat_in_terminal(checkpoint: str | Path, gc: GenerateConfig, device: str = "auto", system: str | None = None,
                     read_line: Callable[[str], str] = input) -> ChatSummary:
    """Chat until Ctrl-D or /quit: replies on stdout as they are generated, notes on stderr."""
    from aigc_cli.inference.loading import load_model

    checkpoint = resolve_checkpoint(checkpoint)
    format_messages = chat_formatter(checkpoint)  # before the model loads: a checkpoint without a template fails at once
    loaded = load_model(checkpoint, device, modality="text")
    session = ChatSession(loaded, format_messages, gc, system, _to(sys.stdout), _to(sys.stderr, newline=True))
    if read_line is input and sys.stdin.isatty():
        try:
            import readline  # noqa: F401 — line editing and ↑ for earlier lines in input()
        except ImportError:
            pass
    session.note(f"chatting with {checkpoint}" + (" (system message set)" if session.conversation.system else "")
                 + " — /help for commands, Ctrl-D or /quit to quit")
    while True:
        try:
            line = read_line(PROMPT)
        except EOFError:
            session.write("\n")
            break
        except KeyboardInterrupt:
            session.write("\n")
            session.note("(Ctrl-D or /quit quits)")
            continue
        if not session.handle(line):
            break
    return ChatSummary(session.replies)


def _to(stream, newline: bool = False) -> Callable[[str], None]:
    def write(text: str) -> None:
        stream.write(text + ("\n" if newline else ""))
        stream.flush()

    return write

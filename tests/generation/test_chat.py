"""`aigc chat`: a real terminal (a pseudo-terminal driven by pexpect) for what a person sees and
types, and a ChatSession driven line by line for what the model is shown."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pexpect
import pytest

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 120  # a cold start imports torch and transformers; nothing waits this long when all is well


def spawn_chat(*args: str) -> pexpect.spawn:
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO), "TERM": "dumb"}
    return pexpect.spawn(sys.executable, ["-m", "aigc_cli", "chat", *args], cwd=str(REPO), env=env, encoding="utf-8",
                         timeout=TIMEOUT, dimensions=(40, 200))


def test_a_conversation_in_the_terminal(chat_run):
    child = spawn_chat(str(chat_run), "--temperature", "0", "--seed", "3")
    child.expect("chatting with .*step-000060 — /help for commands, Ctrl-D or /quit to quit")
    child.expect_exact("you> ")
    # Ctrl-C while a reply streams stops that reply, not the program.
    child.sendline("ramble")
    child.expect_exact("ramble\r\n")  # the terminal's echo; the reply follows
    child.expect_exact("aaaaaaaa")  # streaming: this reply would not end on its own for 1,900 tokens
    child.sendintr()
    child.expect_exact("(reply stopped; this exchange is left out of the conversation)")
    child.expect_exact("you> ")
    child.sendintr()  # at the prompt, Ctrl-C only says how to quit
    child.expect_exact("(Ctrl-D or /quit quits)")
    child.sendline("hello")
    child.expect_exact("hello\r\n")
    child.expect_exact("ok\r\n")
    child.expect_exact("you> ")  # the prompt returns after the reply
    child.sendline("/system Be terse.")
    child.expect_exact("(system message set)")
    child.sendline("who are you")
    child.expect_exact("who are you\r\n")
    child.expect_exact("ok\r\n")
    child.sendline("/help")
    child.expect_exact("/reset         forget the conversation")
    child.sendline("/reset")
    child.expect_exact("(conversation cleared; the system message stays)")
    child.sendline("/nope")
    child.expect_exact("(unknown command /nope; /help lists the commands)")
    child.expect_exact("you> ")
    child.sendeof()  # Ctrl-D
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def session(run: Path, system: str | None = None, context: int | None = None, **generate):
    from aigc_cli.config import GenerateConfig
    from aigc_cli.generation.chat import ChatSession
    from aigc_cli.inference.chat_format import chat_formatter
    from aigc_cli.inference.loading import load_model

    loaded = load_model(run, "cpu")
    if context:  # the same model, used within a shorter context (GPT-2 reads n_positions only as its limit)
        loaded.model.config.n_positions = context
    written, notes = [], []
    chat = ChatSession(loaded, chat_formatter(loaded.checkpoint), GenerateConfig(temperature=0, **generate), system,
                       written.append, notes.append)
    return chat, written, notes


def test_the_model_is_shown_the_whole_conversation(chat_run):
    chat, written, notes = session(chat_run, max_new_tokens=8)
    for line in ["hello", "", "  ", "/system Be terse.", "how are you?"]:
        assert chat.handle(line)
    ask = lambda text: {"role": "user", "content": text}
    ok = {"role": "assistant", "content": "ok"}
    assert chat.conversation.messages() == [{"role": "system", "content": "Be terse."}, ask("hello"), ok, ask("how are you?"), ok]
    assert "".join(written) == "ok\nok\n" and chat.replies == 2
    chat.handle("/reset")
    assert chat.conversation.messages() == [{"role": "system", "content": "Be terse."}]
    chat.handle("/system")
    assert chat.conversation.messages() == [] and notes[-1] == "(system message removed)"
    assert not chat.handle("/quit")


def test_the_oldest_turns_leave_when_the_context_is_full(chat_run):
    # 128 tokens of context: an exchange takes about 30, so the fifth no longer fits with the others.
    chat, written, notes = session(chat_run, system="x", context=128, max_new_tokens=8)
    for number in range(8):
        chat.handle(f"hello {number}")
    dropped = [n for n in notes if "longer than the model's 128-token context" in n]
    assert len(dropped) == 1  # said once
    messages = chat.conversation.messages()
    assert messages[0] == {"role": "system", "content": "x"} and messages[1]["role"] == "user"
    assert messages[-2:] == [{"role": "user", "content": "hello 7"}, {"role": "assistant", "content": "ok"}]
    assert "hello 0" not in str(messages) and "".join(written).count("ok\n") == 8
    prompt = chat.format_messages(messages, "test")
    assert len(chat.loaded.tokenizer.encode(prompt, add_special_tokens=False).ids) <= 128


def test_a_message_longer_than_the_context_is_refused(chat_run):
    chat, written, notes = session(chat_run, context=128, max_new_tokens=8)
    chat.handle("a" * 200)
    assert chat.conversation.messages() == [] and written == []
    assert "and the model's context holds 128; shorten it" in notes[-1]
    chat.handle("hello")
    assert "".join(written) == "ok\n"


def test_a_checkpoint_without_a_chat_template_is_exit_2(cli, plain_run):
    from aigc_cli.runs.checkpoints import resolve_checkpoint

    result = cli("chat", plain_run)
    assert result.exit_code == 2
    assert result.stderr == (f"error: {resolve_checkpoint(plain_run)} has no chat template — fine-tune it on chat data "
                             "(finetune.format: messages) or give plain prompts\n")


def test_bad_options_are_exit_2(cli, chat_run):
    result = cli("chat", chat_run, "--temperature", "-1")
    assert result.exit_code == 2 and "aigc chat: 'generate.temperature'" in result.stderr
    assert cli("chat", "nowhere").exit_code == 2
    result = cli("chat", chat_run, "train.max_steps=3")
    assert result.exit_code == 2 and "aigc chat takes generate.KEY=VALUE overrides only" in result.stderr


def test_chat_help_imports_no_torch():
    code = ("import sys\nfrom aigc_cli.cli import app\ntry:\n    app(['chat', '--help'])\nexcept SystemExit as e:\n    code = e.code\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\nsys.exit(code)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0 and "Usage:" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "[]"

"""`aigc serve CHECKPOINT`: check the inputs, take the port, load the model once, run uvicorn.

Everything a user can get wrong (the checkpoint, the device name, a port in use) is refused
before torch is imported. The socket is bound and listening before the model loads, so a port
taken meanwhile cannot fail the start after the wait, and a client that connects early waits in
the backlog instead of being refused. SIGTERM and Ctrl-C stop the server gracefully: uvicorn
stops accepting, the requests in flight finish (streams included) within SHUTDOWN_GRACE_S, the
rest are cancelled with their streams closed, and the process exits 0, as servers do: stopping
is how a server ends, not an interruption of work.
"""

from __future__ import annotations

import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from aigc_cli.errors import AigcError

DEVICES = ("auto", "cuda", "mps", "cpu")
SHUTDOWN_GRACE_S = 30


@dataclass
class ServeResult:
    model: str
    url: str
    stopped_by: str | None
    requests: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"model": self.model, "url": self.url, "stopped_by": self.stopped_by, "requests": self.requests}

    def summary_lines(self) -> list[str]:
        counts = ", ".join(f"{n} {what}" for what, n in self.requests.items())
        return [f"stopped{f' by {self.stopped_by}' if self.stopped_by else ''}: {counts or 'no requests'}"]


def serve_checkpoint(checkpoint: str, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
                     max_batch: int = 32, device: str = "auto", log: Callable[[str], None] = lambda _: None) -> ServeResult:
    from aigc_cli.backends import backend_of_checkpoint, spec
    from aigc_cli.runs.checkpoints import resolve_checkpoint

    if device not in DEVICES:
        raise AigcError(f"--device {device} is not a device aigc knows", f"use one of {', '.join(DEVICES)}")
    resolved = resolve_checkpoint(checkpoint)
    backend = backend_of_checkpoint(resolved)
    if spec(backend).modality != "text":
        raise AigcError(f"{resolved} holds a {backend} image model; aigc serve serves text models",
                        "pass a checkpoint of a gpt, rnn or lora run")
    name = Path(checkpoint).resolve().name
    sock = listening_socket(host, port)
    try:
        url = f"http://{_url_host(host)}:{sock.getsockname()[1]}/v1"
        app, worker = _load_app(resolved, name, api_key, max_batch, device, log)
        log(f"serving {name} ({resolved}) at {url} on {worker.loaded.device}, batches of up to {worker.max_batch}"
            f"{', API key required' if api_key else ''}; stop with Ctrl-C or SIGTERM")
        stopped_by = _run_uvicorn(app, sock)
    finally:
        sock.close()
    return ServeResult(name, url, stopped_by, dict(worker.counts))


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port and listening (port 0: any free port), or a one-line error."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise AigcError(f"--host {host} is not an address this machine can listen on ({exc.strerror})",
                        "use 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT after a restart is free; one in use is not
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        hint = "stop the server using it or pick another --port" if exc.errno == 98 else "pick another --host or --port"
        raise AigcError(f"cannot listen on {host}:{port}: {exc.strerror}", hint) from None
    return sock


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _load_app(checkpoint: Path, name: str, api_key: str | None, max_batch: int, device: str, log):
    from aigc_cli.inference.loading import load_model
    from aigc_cli.serve.api import ServedModel, build_app
    from aigc_cli.serve.engine import DecodeWorker

    loaded = load_model(checkpoint, device, modality="text")
    tokenizer = loaded.tokenizer
    worker = DecodeWorker(loaded, max_batch, {loaded.eos_id, *loaded.stop_ids}, log)  # stop_ids: a chat model's end-of-turn too
    served = ServedModel(name=name, context_length=loaded.backend.context_length(loaded.model),
                         encode=lambda text: tokenizer.encode(text, add_special_tokens=False).ids if text else [],
                         chat_prompt=_chat_prompt(checkpoint), worker=worker, created=int(time.time()))
    return build_app(served, api_key), worker


def _chat_prompt(checkpoint: Path) -> Callable[[list[dict]], str] | None:
    """messages → the prompt text, as `aigc generate` and `aigc chat` render it; None without a template."""
    from aigc_cli.inference.chat_format import chat_formatter, has_chat_template

    if not has_chat_template(checkpoint):
        return None
    render = chat_formatter(checkpoint)
    return lambda messages: render(messages, "the request")


def _run_uvicorn(app, sock: socket.socket) -> str | None:
    """Serve until SIGTERM or Ctrl-C; the name of the signal that stopped it."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=SHUTDOWN_GRACE_S)
    server = uvicorn.Server(config)
    caught: list[str] = []
    # uvicorn handles the signals while it runs, then re-raises them to the handlers it found:
    # these, which note the signal instead of unwinding (exit 143 is for interrupted work).
    def note(signum, frame):
        caught.append(signal.Signals(signum).name)
        server.should_exit = True  # a signal in the moment before uvicorn took the handlers over stops it too

    previous = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started and not caught:
        raise AigcError("the HTTP server did not start", "see uvicorn's messages above")
    return caught[0] if caught else None

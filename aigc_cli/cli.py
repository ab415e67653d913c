"""The `aigc` command line: one short function per verb.

Each verb's options are config overrides (`--seed 7` is generate.seed=7), merged in before the
config is validated. The verb checks its inputs on disk (preflight.py), imports its engine (torch
and friends load only then, so `--help` and config errors stay instant), makes one call and prints
what the result renders: its summary lines or, with --json, exactly one JSON object on stdout.
Every verb runs through `_run`, the one place where an error becomes a line on stderr and an exit code.
"""

from __future__ import annotations

import errno
import json
import math
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Optional, Protocol

import typer

from aigc_cli import __version__
from aigc_cli.errors import EXIT_GATE_FAILED, EXIT_INTERNAL, EXIT_SIGINT, EXIT_SIGTERM, EXIT_USAGE, AigcError, Terminated

if TYPE_CHECKING:  # imported inside the verbs: `aigc --help` needs neither pydantic nor yaml
    from aigc_cli.config import ExperimentConfig

class _OneLineUsageErrors(typer.core.TyperGroup):
    """Usage errors (an unknown option, `--num 0`, `--seed abc`, a missing CONFIG) end as every
    other error does: one `error: … — …` line on stderr and exit 2, not a boxed panel."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        click = typer.core._click  # typer 0.2x vendors click: its exceptions, not the click package's

        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:  # bare `aigc`: the help, as before
            from typer import rich_utils

            rich_utils.rich_format_error(exc)
            code = exc.exit_code
        except click.exceptions.ClickException as exc:
            where = exc.ctx.command_path if getattr(exc, "ctx", None) is not None else "aigc"
            message = " ".join(exc.format_message().split())
            print(f"error: {message} — see `{where} --help`", file=sys.stderr)
            code = exc.exit_code if exc.exit_code else EXIT_USAGE
        except typer.Abort:
            print("interrupted (Ctrl-C)", file=sys.stderr)
            code = EXIT_SIGINT
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_OneLineUsageErrors,
    name="aigc",
    help="Prepare data for, train, generate with and evaluate generative models. "
         "Every verb takes an experiment YAML plus section.key=value overrides.\n\n"
         "Start here: aigc init my-first --template text-gpt (aigc init --list names the templates).",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, PowerShell)
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _readable_type(param, ctx) -> str | None:
    """What the help's type column shows: the metavar people read (FILE, DIR, N), nothing for a
    flag or an argument (its name column already holds its metavar) — never a Python type
    (<str>, <bool>, <list[str]>) as Typer would."""
    if isinstance(param, typer.core.TyperArgument) or getattr(param, "is_flag", False):
        return None
    return param.metavar or param.name.upper()


typer.core.TyperArgument.display_type_rich = _readable_type
typer.core.TyperOption.display_type_rich = _readable_type

# Metavars people read: CONFIG, FILE, DIR, N.
ConfigArg = Annotated[str, typer.Argument(metavar="CONFIG", help="Experiment YAML file (see configs/).", show_default=False)]
OverridesArg = Annotated[Optional[list[str]], typer.Argument(metavar="SECTION.KEY=VALUE", help="Overrides such as train.max_steps=200 model.n_layer=2.", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout (logs go to stderr).")]
PrintConfigOpt = Annotated[bool, typer.Option("--print-config", help="Print the resolved config and exit.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show full tracebacks.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]
CheckpointOpt = Annotated[Optional[str], typer.Option("--checkpoint", metavar="DIR", help="Checkpoint directory, or a run directory (its latest checkpoint). Default: train.out_dir.")]


class VerbResult(Protocol):
    """What a verb's engine returns: it renders itself for the screen and for --json."""

    def to_json(self) -> Any: ...

    def summary_lines(self) -> list[str]: ...


@dataclass
class Shown:
    """The result of a verb whose output is made here (init, runs, info)."""

    json: Any
    lines: list[str]

    def to_json(self) -> Any:
        return self.json

    def summary_lines(self) -> list[str]:
        return self.lines


def _log(quiet: bool) -> Callable[[str], None]:
    return (lambda _: None) if quiet else (lambda text: print(text, file=sys.stderr, flush=True))


def _config(config: str, overrides: list[str] | None, options: dict[str, Any] | None = None) -> Callable[[], ExperimentConfig]:
    """Loads the config file with the overrides, then the verb's options, merged in."""

    def load() -> ExperimentConfig:
        from aigc_cli.config import load_config

        return load_config(config, overrides or [], options)

    return load


def _run(work: Callable[..., VerbResult], as_json: bool, debug: bool,
         load: Callable[[], ExperimentConfig] | None = None, print_config: bool = False) -> VerbResult | None:
    """Run `work` (on the config `load` returns, for the verbs that read one) and print its result:
    the summary lines, or with --json its JSON object. Every error of every verb ends here."""
    try:
        if load is None:
            result = work()
        else:
            cfg = load()
            if print_config:
                from aigc_cli.config import dump_config

                sys.stdout.write(dump_config(cfg))
                return None
            result = work(cfg)
        lines = [json.dumps(_json_safe(result.to_json()), ensure_ascii=False, allow_nan=False)] if as_json else result.summary_lines()
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 — every error becomes one line and an exit code
        if debug and not isinstance(exc, KeyboardInterrupt):
            raise
        raise typer.Exit(_report_error(exc)) from None
    for line in lines:
        print(line)
    return result


def _report_error(exc: BaseException) -> int:
    """Print the one line that says what went wrong; return the exit code."""
    if isinstance(exc, AigcError):
        print(f"{exc.label}: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        name = "SIGTERM" if isinstance(exc, Terminated) else "interrupted (Ctrl-C)"
        print(f"{name}: finished files are intact; run the same command again to continue "
              "(`aigc train CONFIG --resume` for training, generation skips what is done)", file=sys.stderr)
        return EXIT_SIGTERM if isinstance(exc, Terminated) else EXIT_SIGINT
    if isinstance(exc, OSError) and exc.errno in _ENVIRONMENT_ERRNOS:
        where = f" {exc.filename}" if exc.filename else ""
        print(f"error: cannot write or read{where}: {exc.strerror} — {_ENVIRONMENT_ERRNOS[exc.errno]}; "
              "files written before are unchanged", file=sys.stderr)
        return EXIT_USAGE
    # A bug: one line, and the way to see more.
    print(f"internal error: {type(exc).__name__}: {exc} — rerun with --debug for the traceback and report it", file=sys.stderr)
    return EXIT_INTERNAL


# Problems of the machine rather than of aigc: exit 2 with the path, not an internal error.
_ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: "free disk space or write elsewhere", errno.EDQUOT: "free space within your disk quota or write elsewhere",
    errno.EFBIG: "the file size limit (ulimit -f) or the filesystem's maximum was reached",
    errno.EROFS: "the filesystem is read-only; choose a writable directory",
    errno.EACCES: "permission denied; fix the permissions or choose another directory",
    errno.EPERM: "operation not permitted; fix the permissions or choose another directory",
    errno.ENOTDIR: "a part of the path is a file, not a directory", errno.EISDIR: "the path is a directory, not a file",
    errno.EEXIST: "a file is in the way where a directory is needed",
    errno.ENAMETOOLONG: "use a shorter path", errno.EIO: "the disk reported an I/O error",
}


def _terminate_like_ctrl_c() -> None:
    """SIGTERM (a CI time limit, `kill`) unwinds like Ctrl-C: temporaries are removed, exit 143.
    The training loop installs its own handlers, which finish the step and save a checkpoint."""

    def handler(signum, frame):
        raise Terminated

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:
        pass  # not the main thread: keep the default


@app.command()
def prep(config: ConfigArg, overrides: OverridesArg = None,
         force: Annotated[bool, typer.Option("--force", help="Replace data.prepared_dir when it holds other data.")] = False,
         as_json: JsonOpt = False, print_config: PrintConfigOpt = False, debug: DebugOpt = False, quiet: QuietOpt = False) -> None:
    """Clean and tokenize data.source into data.prepared_dir (tokenizer, train.bin, val.bin, meta.json).

    Example: aigc prep configs/quickstart.yaml data.tokenizer.kind=bpe data.tokenizer.vocab_size=4000
    """

    def work(cfg: ExperimentConfig):
        from aigc_cli.config import IMAGE_BACKENDS, LABEL_BACKENDS

        if cfg.model.backend in LABEL_BACKENDS:
            raise AigcError(f"model.backend={cfg.model.backend} reads its labelled records in `aigc train`: there is nothing to prepare",
                            f"run `aigc train {config}`")
        if cfg.model.backend in IMAGE_BACKENDS or (cfg.data is not None and cfg.data.image.captions):  # captioned: text-to-image
            from aigc_cli.data.images import prepare_images

            return prepare_images(cfg, force=force, log=_log(quiet))
        from aigc_cli.data.prepare import prepare_text_corpus

        return prepare_text_corpus(cfg, force=force, log=_log(quiet))

    _run(work, as_json, debug, _config(config, overrides), print_config)


@app.command()
def train(config: ConfigArg, overrides: OverridesArg = None,
          resume: Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint in train.out_dir.")] = False,
          as_json: JsonOpt = False, print_config: PrintConfigOpt = False, debug: DebugOpt = False, quiet: QuietOpt = False) -> None:
    """Train model.* on the prepared data; checkpoints and metrics go to train.out_dir.

    Example: aigc train configs/quickstart.yaml train.max_steps=200 model.n_layer=2
    """

    def work(cfg: ExperimentConfig):
        from aigc_cli.preflight import check_train

        check_train(config, cfg, resume)
        from aigc_cli.training import train_model

        return train_model(cfg, resume=resume, quiet=quiet)

    _run(work, as_json, debug, _config(config, overrides), print_config)


@app.command()
def finetune(config: ConfigArg, overrides: OverridesArg = None,
             merge: Annotated[bool, typer.Option("--merge", help="After LoRA training, also write a standalone model with the adapters merged in.")] = False,
             resume: Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint in train.out_dir.")] = False,
             as_json: JsonOpt = False, print_config: PrintConfigOpt = False, debug: DebugOpt = False, quiet: QuietOpt = False) -> None:
    """Fine-tune finetune.base on prompt/response pairs (full or LoRA); the loss covers responses only.

    Example: aigc finetune configs/multi30k-lora.yaml train.max_steps=200 --merge
    """

    def work(cfg: ExperimentConfig):
        from aigc_cli.preflight import check_finetune

        check_finetune(cfg, resume)
        from aigc_cli.training.finetune import finetune_model

        return finetune_model(cfg, resume=resume, merge=merge, quiet=quiet)

    _run(work, as_json, debug, _config(config, overrides), print_config)


@app.command()
def generate(config: ConfigArg, overrides: OverridesArg = None, checkpoint: CheckpointOpt = None,
             prompt: Annotated[Optional[list[str]], typer.Option("--prompt", metavar="TEXT", help="A prompt (repeatable).")] = None,
             prompts_file: Annotated[Optional[str], typer.Option("--prompts-file", metavar="FILE", help="One prompt per line, JSONL with a 'prompt' field, or JSONL conversations ('messages' rows, formatted by the checkpoint's chat template).")] = None,
             out: Annotated[Optional[str], typer.Option("--out", metavar="PATH", help="Text: JSONL output file (default generate.out, else <train.out_dir>/generations.jsonl). Images: output folder (default <train.out_dir>/samples).")] = None,
             num: Annotated[Optional[int], typer.Option("--num", min=1, metavar="N", help="Images to sample (generate.images.num_images); for text, completions per prompt.")] = None,
             seed: Annotated[Optional[int], typer.Option("--seed", metavar="N", help="Sampling seed (generate.seed); the same seed gives the same output.")] = None,
             stream: Annotated[bool, typer.Option("--stream", help="Print tokens as they are generated.")] = False,
             force: Annotated[bool, typer.Option("--force", help="Regenerate items the output's manifest already holds (by default a re-run generates only what is missing).")] = False,
             as_json: JsonOpt = False, print_config: PrintConfigOpt = False, debug: DebugOpt = False, quiet: QuietOpt = False) -> None:
    """Sample from a checkpoint: text completions (JSONL) or images (PNG files, grid.png, samples.json).

    Example: aigc generate configs/quickstart.yaml --prompt "Return the " --num 3 --seed 7
    """

    def load() -> ExperimentConfig:
        from aigc_cli.config import IMAGE_BACKENDS, backend_name, read_config, set_options, validate_config

        raw = read_config(config, overrides or [])
        count = "generate.images.num_images" if backend_name(raw) in IMAGE_BACKENDS else "generate.num_samples"
        options = {"generate.seed": seed, count: num, "generate.out": out, "generate.prompts": prompt}
        return validate_config(set_options(raw, options), source=str(Path(config)))

    def work(cfg: ExperimentConfig):
        from aigc_cli.config import IMAGE_BACKENDS, LABEL_BACKENDS
        from aigc_cli.preflight import check_generate

        if prompt and prompts_file:
            raise AigcError("--prompt and --prompts-file both given", "use one of them")
        from aigc_cli.preflight import text_to_image_checkpoint

        t2i = text_to_image_checkpoint(config, cfg, checkpoint, prompts_file)
        if t2i is not None:  # a text-to-image checkpoint (finetune on a pipeline, or latent-diffusion): images from prompts, --num per prompt
            from aigc_cli.generation.text_to_image import generate_from_prompts, read_prompt_lines

            prompts = prompt or (read_prompt_lines(prompts_file) if prompts_file else cfg.generate.prompts)
            return generate_from_prompts(cfg, t2i, prompts, num or cfg.generate.num_samples, log=_log(quiet), force=force)
        if cfg.model.backend in IMAGE_BACKENDS and (prompt or prompts_file or stream):
            raise AigcError("--prompt, --prompts-file and --stream are for text models", f"model.backend={cfg.model.backend} samples images; use --num and --seed")
        checkpoint_dir = check_generate(config, cfg, checkpoint, prompts_file)
        if cfg.model.backend in LABEL_BACKENDS:
            from aigc_cli.generation.classification import generate_predictions, read_texts

            texts = read_texts(prompts_file, cfg.data.jsonl_field if cfg.data else "text") if prompts_file else None
            return generate_predictions(cfg, checkpoint_dir, texts, log=_log(quiet), force=force)
        if cfg.model.backend in IMAGE_BACKENDS:
            from aigc_cli.generation.images import generate_images

            return generate_images(cfg, checkpoint_dir, log=_log(quiet), force=force)
        from aigc_cli.generation.text import generate_text, read_prompts_file

        records = read_prompts_file(prompts_file) if prompts_file else None
        return generate_text(cfg, checkpoint_dir, records, stream=stream, stream_to=sys.stderr if as_json else sys.stdout,
                             log=_log(quiet), force=force)

    _run(work, as_json, debug, load, print_config)


@app.command("chat")
def chat_verb(checkpoint: Annotated[str, typer.Argument(metavar="CHECKPOINT", help="A checkpoint, a run directory (its latest checkpoint), or a merged or LoRA adapter directory.", show_default=False)],
              overrides: Annotated[Optional[list[str]], typer.Argument(metavar="generate.KEY=VALUE", help="Sampling overrides such as generate.top_k=50 generate.repetition_penalty=1.1.", show_default=False)] = None,
              system: Annotated[Optional[str], typer.Option("--system", metavar="TEXT", help="The system message to start with (/system changes it).")] = None,
              temperature: Annotated[Optional[float], typer.Option("--temperature", metavar="T", help="Sampling temperature; 0 is greedy (generate.temperature, default 0.8).")] = None,
              top_p: Annotated[Optional[float], typer.Option("--top-p", metavar="P", help="Nucleus sampling mass; 1.0 is off (generate.top_p).")] = None,
              max_new_tokens: Annotated[Optional[int], typer.Option("--max-new-tokens", metavar="N", help="Longest reply in tokens (generate.max_new_tokens, default 200).")] = None,
              seed: Annotated[Optional[int], typer.Option("--seed", metavar="N", help="Sampling seed (generate.seed): the same conversation gets the same reply.")] = None,
              device: Annotated[str, typer.Option("--device", metavar="NAME", help="auto, cpu, cuda or mps.")] = "auto",
              debug: DebugOpt = False) -> None:
    """Chat with a checkpoint in the terminal: its chat template, streamed replies, the history kept.

    Type a message and Enter; /system TEXT sets the system message, /reset forgets the
    conversation, /help lists the commands, Ctrl-C stops a reply, Ctrl-D or /quit quits. When the
    conversation outgrows the model's context, its oldest turns are left out.

    Example: aigc chat runs/chat-sft --system "You answer briefly." --temperature 0.7
    """

    def work():
        from aigc_cli.config import apply_override, set_options, validate_config

        raw: dict = {}
        for item in overrides or []:
            if not item.startswith("generate."):
                raise AigcError(f"aigc chat takes generate.KEY=VALUE overrides only, not {item!r}", "sampling settings live under generate., e.g. generate.top_k=50")
            apply_override(raw, item)
        options = {"generate.temperature": temperature, "generate.top_p": top_p, "generate.max_new_tokens": max_new_tokens, "generate.seed": seed}
        cfg = validate_config(set_options(raw, options), source="aigc chat")
        from aigc_cli.generation.chat import chat_in_terminal

        return chat_in_terminal(checkpoint, cfg.generate, device, system)

    _run(work, False, debug)


@app.command("eval")
def evaluate(config: Annotated[Optional[str], typer.Argument(metavar="CONFIG", help="Experiment YAML file. Leave out to score files alone (--predictions, --references).", show_default=False)] = None,
             overrides: OverridesArg = None, checkpoint: CheckpointOpt = None,
             predictions: Annotated[Optional[str], typer.Option("--predictions", metavar="FILE", help="Predictions: the JSONL of `aigc generate`, any JSONL (--predictions-field) or a text file, one item per line; .gz allowed (eval.generations).")] = None,
             references: Annotated[Optional[list[str]], typer.Option("--references", metavar="FILE", help="References: a text file aligned by line, or JSONL (--references-field). Repeat for several references per item (eval.references).")] = None,
             metrics: Annotated[Optional[list[str]], typer.Option("--metrics", metavar="NAMES", help="Comma-separated, e.g. bleu,chrf,ter,rouge1,rouge2,rougeL,cider (eval.metrics). Default without a config: bleu,chrf,ter,rouge1,rouge2,rougeL; with no references: distinct1,distinct2,self_bleu,repetition,length.")] = None,
             lang: Annotated[Optional[str], typer.Option("--lang", metavar="LANG", help="Language of the texts: zh, ja, ko switch to their tokenizers (eval.lang).")] = None,
             predictions_field: Annotated[Optional[str], typer.Option("--predictions-field", metavar="FIELD", help="JSONL field of the predictions (default completion).")] = None,
             references_field: Annotated[Optional[str], typer.Option("--references-field", metavar="FIELD", help="JSONL field of the references (default reference).")] = None,
             out: Annotated[Optional[str], typer.Option("--out", metavar="FILE", help="Report path (eval.out); the Markdown table goes beside it (.md).")] = None,
             fail_under: Annotated[Optional[list[str]], typer.Option("--fail-under", metavar="NAME=VALUE", help="Exit 1 when the metric is below VALUE, e.g. bleu=25 or bleu=25,rougeL=0.3; repeatable (eval.fail_under).")] = None,
             fail_above: Annotated[Optional[list[str]], typer.Option("--fail-above", metavar="NAME=VALUE", help="Exit 1 when a lower-is-better metric (ter, perplexity, fid, ...) is above VALUE; repeatable (eval.fail_above).")] = None,
             baseline: Annotated[Optional[str], typer.Option("--baseline", metavar="FILE", help="A previous report.json, for --max-drop (eval.baseline).")] = None,
             max_drop: Annotated[Optional[list[str]], typer.Option("--max-drop", metavar="NAME=VALUE", help="Exit 1 when the metric is worse than in --baseline by more than VALUE; repeatable (eval.max_drop).")] = None,
             as_json: JsonOpt = False, print_config: PrintConfigOpt = False, debug: DebugOpt = False, quiet: QuietOpt = False) -> None:
    """Score a checkpoint (loss, perplexity), text (BLEU, chrF, TER, ROUGE, CIDEr-D, labels, diversity) or images: report.json, report.md and a table.

    Quality gates exit 1 and name every failing metric: --fail-under bleu=25 (repeat the option
    or join pairs with commas: bleu=25,rougeL=0.3), --fail-above ter=60 for lower-is-better
    metrics, --baseline previous.json --max-drop bleu=0.5. Bad input exits 2.

    Example: aigc eval --predictions out.jsonl --references ref.en.txt --metrics bleu,chrf --fail-under bleu=20
    """

    def load() -> ExperimentConfig:
        from aigc_cli.evaluation.options import eval_config
        from aigc_cli.evaluation.report import parse_bounds

        names = [m for value in metrics or [] for m in value.replace(",", " ").split()]
        bounds = {"fail_under": fail_under, "fail_above": fail_above, "max_drop": max_drop}
        gates = {f"eval.{key}": parse_bounds(values, "--" + key.replace("_", "-")) if values else None for key, values in bounds.items()}
        return eval_config(config, overrides, {
            "eval.generations": predictions, "eval.references": references[0] if references and len(references) == 1 else references,
            "eval.metrics": names or None, "eval.lang": lang, "eval.predictions_field": predictions_field,
            "eval.references_field": references_field, "eval.out": out, "eval.baseline": baseline, **gates})

    def work(cfg: ExperimentConfig):
        from aigc_cli.preflight import check_eval

        checkpoint_dir = check_eval(config, cfg, checkpoint)
        from aigc_cli.evaluation import evaluate

        result = evaluate(cfg, checkpoint_dir, log=_log(quiet), config_free=config is None)
        if not quiet:
            print(result.table, file=sys.stderr if as_json else sys.stdout, end="")
        return result

    result = _run(work, as_json, debug, load, print_config)
    if result is not None and result.failures:  # the command worked; the verdict comes after the report
        print(f"error: {result.gate_verdict()}", file=sys.stderr)
        raise typer.Exit(EXIT_GATE_FAILED)


@app.command()
def serve(checkpoint: Annotated[str, typer.Argument(metavar="CHECKPOINT", help="Checkpoint directory, or a run directory (its latest checkpoint); LoRA adapters and merged models too.", show_default=False)],
          host: Annotated[str, typer.Option("--host", metavar="HOST", help="Address to listen on; 0.0.0.0 for every interface.")] = "127.0.0.1",
          port: Annotated[int, typer.Option("--port", min=0, max=65535, metavar="N", help="Port to listen on (0: any free port, printed at start).")] = 8000,
          api_key: Annotated[Optional[str], typer.Option("--api-key", metavar="KEY", envvar="AIGC_API_KEY", show_envvar=True, show_default=False, help="Require `Authorization: Bearer KEY` on /v1 requests.")] = None,
          max_batch: Annotated[int, typer.Option("--max-batch", min=1, metavar="N", help="Requests decoded together at most; more wait for a free row.")] = 32,
          device: Annotated[str, typer.Option("--device", metavar="NAME", help="auto, cuda, mps or cpu.")] = "auto",
          debug: DebugOpt = False, quiet: QuietOpt = False) -> None:
    """Serve a text checkpoint over an OpenAI-compatible HTTP API: /v1/completions, /v1/chat/completions, /v1/models.

    Concurrent requests are decoded together in one batch; streaming uses server-sent events.
    SIGTERM or Ctrl-C finishes the requests in flight and exits 0.

    Example: aigc serve runs/text-gpt --port 8000, then any OpenAI client with base_url http://127.0.0.1:8000/v1
    """

    def work():
        from aigc_cli.serve.server import serve_checkpoint

        return serve_checkpoint(checkpoint, host, port, api_key, max_batch, device, log=_log(quiet))

    _run(work, False, debug)


@app.command(name="export")
def export_model(checkpoint: Annotated[str, typer.Argument(metavar="CHECKPOINT", help="Checkpoint directory, or a run directory (its latest checkpoint); LoRA adapters are merged into their base.", show_default=False)],
                 format: Annotated[str, typer.Option("--format", "-f", metavar="FORMAT", help="gguf (llama.cpp, Ollama), onnx (ONNX Runtime, transformers.js; with the key/value cache) or safetensors (a standalone transformers model directory).", show_default=False)],
                 out: Annotated[Optional[str], typer.Option("--out", metavar="DIR", help="Folder to write (default <run>/export/<format>).")] = None,
                 dtype: Annotated[Optional[str], typer.Option("--dtype", metavar="DTYPE", help="fp32, fp16 or bf16 (default fp32; onnx takes no bf16; gguf keeps norms in fp32).")] = None,
                 force: Annotated[bool, typer.Option("--force", help="Replace --out even when it holds files aigc did not export.")] = False,
                 as_json: JsonOpt = False, debug: DebugOpt = False) -> None:
    """Write a text checkpoint for other runtimes: GGUF, ONNX or merged safetensors, with its tokenizer.

    The folder appears whole or not at all; an earlier export in it is replaced.

    Example: aigc export runs/text-gpt --format onnx --json
    """

    def work():
        from aigc_cli.export import export_checkpoint

        return export_checkpoint(checkpoint, format, out, dtype, force)

    _run(work, as_json, debug)


def _json_safe(value):
    """NaN and infinity (a diverged validation loss) become null: JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _template_names() -> list[str]:
    from aigc_cli.starter_configs import template_names

    return template_names()


@app.command()
def init(directory: Annotated[str, typer.Argument(metavar="DIR", help="Folder to write the config into (created when missing).")] = ".",
         template: Annotated[Optional[str], typer.Option("--template", "-t", metavar="NAME", help="Which starter config (see --list).", autocompletion=_template_names)] = None,
         list_templates: Annotated[bool, typer.Option("--list", help="A table of the templates (task, data, measured time) and exit.")] = False,
         force: Annotated[bool, typer.Option("--force", help="Overwrite files that already exist.")] = False,
         as_json: JsonOpt = False, debug: DebugOpt = False,
         quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")] = False) -> None:
    """Write a commented starter config that runs as it is (text-gpt, text-rnn, finetune-lora, image-ddpm, image-vae, image-gan, text-to-image).

    Example: aigc init my-first --template text-gpt && aigc prep my-first/text-gpt.yaml
    """

    def work():
        from aigc_cli.starter_configs import template_facts, template_names, template_summary, template_table, write_starter

        if list_templates:
            rows = [{"name": name, "summary": template_summary(name), **template_facts(name)} for name in template_names()]
            return Shown({"templates": rows}, template_table(rows))
        if template is None:
            raise AigcError("no template chosen", f"pass --template NAME, one of: {', '.join(template_names())} (aigc init --list)")
        written = write_starter(template, directory, force)
        config_path = written[0].as_posix()
        summary = [f"wrote {path}" for path in written]
        if template == "finetune-lora":
            summary.append("next, after the text-gpt template has trained (see the comments in the file):")
            summary.append(f"  aigc finetune {config_path}")
        elif template in ("classify", "ner"):  # labelled records are read by train itself
            summary.append(f"next:  aigc train {config_path} && aigc eval {config_path}")
        else:
            summary.append(f"next:  aigc prep {config_path} && aigc train {config_path}")
        return Shown({"template": template, "written": [str(p) for p in written]}, [] if quiet else summary)

    _run(work, as_json, debug)


@app.command()
def runs(directory: Annotated[Optional[str], typer.Argument(metavar="DIR", help="Folder searched (recursively) for run directories. [default: runs]", show_default=False)] = None,
         as_json: JsonOpt = False, debug: DebugOpt = False) -> None:
    """List the runs under a folder: backend, steps, best validation loss, last checkpoint, status.

    Status: finished (the last checkpoint is at train.max_steps), running (a live process holds
    the run's lock file) or interrupted (continue with: aigc train CONFIG --resume).

    Example: aigc runs runs --json
    """

    def work():
        from dataclasses import asdict

        from aigc_cli.runs.inspection import find_runs

        # No ./runs yet just means no runs; a folder that was named and is missing is a mistake.
        found = [] if directory is None and not Path("runs").is_dir() else find_runs(directory or "runs")
        if not as_json:
            _print_runs_table(found, directory or "runs")
        return Shown([asdict(r) for r in found], [])

    _run(work, as_json, debug)


@app.command()
def info(path: Annotated[str, typer.Argument(metavar="PATH", help="A checkpoint, a run directory (train.out_dir), a prepared dataset (data.prepared_dir), or a folder or file `aigc export` wrote.", show_default=False)],
         as_json: JsonOpt = False, debug: DebugOpt = False) -> None:
    """Describe a checkpoint, run or prepared dataset: architecture, parameters, tokenizer, step, config hash, size.

    Reads file headers only (no model is loaded), so it is quick even for large checkpoints.

    Example: aigc info runs/quickstart/checkpoints/step-001500
    """

    def work():
        from aigc_cli.runs.inspection import describe

        described = describe(path)
        return Shown(described, _info_lines(described))

    _run(work, as_json, debug)


def _print_runs_table(found, directory: str) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    if not found:
        print(f"no runs under {directory} (a run directory holds config.yaml and metrics.jsonl or checkpoints/)")
        return
    table = Table(title=f"runs under {directory}", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("run", no_wrap=True)
    for column, justify in (("backend", "left"), ("steps", "right"), ("best val", "right"), ("checkpoint", "left"), ("status", "left")):
        table.add_column(column, justify=justify)
    colours = {"finished": "green", "running": "cyan", "interrupted": "yellow"}
    for run in found:  # Text, not markup: a folder name may hold [brackets]
        table.add_row(Text(run.name), run.backend, f"{run.steps}/{run.max_steps}" if run.max_steps else str(run.steps),
                      "—" if run.best_val_loss is None else f"{run.best_val_loss:.4f}",
                      Path(run.last_checkpoint).name if run.last_checkpoint else "—", Text(run.status, style=colours.get(run.status, "")))
    Console().print(table)


def _info_lines(info: dict, indent: str = "") -> list[str]:
    from aigc_cli.runs.inspection import human_size

    lines = []
    for key, value in info.items():
        if key == "latest":
            lines.append(f"{indent}latest checkpoint:")
            lines += _info_lines(value, indent + "  ")
            continue
        if value is None:
            continue
        if key == "size_bytes":
            key, value = "size on disk", human_size(value)
        elif key in ("parameters", "base_parameters") or isinstance(value, int) and not isinstance(value, bool) and value >= 10_000:
            value = f"{value:,}"
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in value.items() if v is not None)
        elif isinstance(value, list):
            value = ", ".join(str(v.get("path", v)) if isinstance(v, dict) else str(v) for v in value) or "—"
        elif isinstance(value, float):
            value = f"{value:.4f}"
        lines.append(f"{indent}{key.replace('_', ' ')}: {value}")
    return lines


def _version(value: bool) -> None:
    if value:
        print(f"aigc {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False) -> None:
    """Prepare data for, train, generate with and evaluate generative models."""


def main() -> None:
    _terminate_like_ctrl_c()
    app()

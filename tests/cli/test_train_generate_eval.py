"""The spine through the real CLI on tiny assets: prep → train → generate → eval, resume, errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import json_out, tiny_config


@pytest.fixture
def prepared(cli, tmp_path, corpus):
    cfg = tiny_config(tmp_path, corpus)
    json_out(cli("prep", cfg, "--json"))
    return cfg


@pytest.fixture
def trained(cli, prepared):
    out = json_out(cli("train", prepared, "--json"))
    return prepared, out


@pytest.mark.parametrize("backend, overrides", [("gpt", []), ("gpt", ["model.architecture=llama"]), ("rnn", ["model.cell=lstm"]),
                                                ("rnn", ["model.cell=gru", "train.grad_accum_steps=2"])],
                         ids=["gpt2", "llama", "lstm", "gru-accum"])
def test_train_each_backend_loss_falls(cli, tmp_path, corpus, backend, overrides):
    cfg = tiny_config(tmp_path, corpus, backend=backend)
    json_out(cli("prep", cfg, "--json"))
    out = json_out(cli("train", cfg, *overrides, "train.max_steps=30", "--json"))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    assert val[-1] < val[0] - 0.5
    assert out["val_loss"] == pytest.approx(val[-1])
    assert out["checkpoint"].endswith("step-000030")
    for name in ("config.yaml", "provenance.json", "metrics.jsonl", "loss.png"):
        assert (tmp_path / "run" / name).is_file()


def test_gpt_checkpoint_loads_in_plain_transformers(trained):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, out = trained
    model = AutoModelForCausalLM.from_pretrained(out["checkpoint"])
    tokenizer = AutoTokenizer.from_pretrained(out["checkpoint"])
    text = "床前明月光 To be 🙂"
    ids = tokenizer(text, return_tensors="pt").input_ids
    assert tokenizer.decode(ids[0]) == text
    assert model(ids).logits.shape == (1, ids.shape[1], model.config.vocab_size)
    assert model.config.n_positions == 16 and tokenizer.model_max_length == 16


def test_resume_continues_exactly(cli, tmp_path, corpus):
    schedule = {"lr_decay_steps": 20}  # the interrupted run must follow the same schedule
    straight = tiny_config(tmp_path / "a", corpus, train=schedule)
    json_out(cli("prep", straight, "--json"))
    full = json_out(cli("train", straight, "--json"))

    resumed_cfg = tiny_config(tmp_path / "b", corpus, train=schedule)
    json_out(cli("prep", resumed_cfg, "--json"))
    json_out(cli("train", resumed_cfg, "train.max_steps=10", "--json"))  # as if killed after step 10
    refused = cli("train", resumed_cfg)
    assert refused.exit_code == 2 and "--resume" in refused.stderr
    resumed = json_out(cli("train", resumed_cfg, "--resume", "--json"))

    assert resumed["val_loss"] == pytest.approx(full["val_loss"], abs=1e-6)
    a = load_file(f"{full['checkpoint']}/model.safetensors")
    b = load_file(f"{resumed['checkpoint']}/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines() if "train_loss" in line]
    assert steps == sorted(set(steps))  # one log, no repeated steps


def test_keep_last_prunes_old_ones(cli, prepared, tmp_path):
    json_out(cli("train", prepared, "train.save_every=5", "train.keep_last=2", "--json"))
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*"))
    assert kept == ["step-000015", "step-000020"]


def test_generate_is_deterministic_by_seed(cli, trained, tmp_path):
    cfg, out = trained
    args = ["generate", cfg, "--checkpoint", out["checkpoint"], "--prompt", "To be", "--prompt", "床前", "generate.num_samples=2", "--json"]
    first = json_out(cli(*args, "--out", tmp_path / "g1.jsonl"))
    second = json_out(cli(*args, "--out", tmp_path / "g2.jsonl"))
    other = json_out(cli(*args, "generate.seed=7", "--out", tmp_path / "g3.jsonl"))
    assert first["count"] == 4
    rows1 = [json.loads(line) for line in open(first["outputs"], encoding="utf-8")]
    rows2 = [json.loads(line) for line in open(second["outputs"], encoding="utf-8")]
    rows3 = [json.loads(line) for line in open(other["outputs"], encoding="utf-8")]
    assert [r["completion"] for r in rows1] == [r["completion"] for r in rows2]
    assert [r["completion"] for r in rows1] != [r["completion"] for r in rows3]
    assert rows1[0]["prompt"] == "To be" and rows1[0]["params"]["temperature"] == 0.8
    assert (tmp_path / "g1.jsonl.provenance.json").is_file()
    # A completion does not depend on which other prompts share the batch.
    alone = json_out(cli("generate", cfg, "--checkpoint", out["checkpoint"], "--prompt", "床前", "--json", "--out", tmp_path / "g4.jsonl"))
    assert json.loads(open(alone["outputs"], encoding="utf-8").readline())["completion"] == rows1[2]["completion"]


def test_generate_prompts_file_stream_and_greedy(cli, trained, tmp_path):
    cfg, out = trained
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "The slings"}\n"Whether"\n', encoding="utf-8")
    result = cli("generate", cfg, "--prompts-file", prompts, "--stream", "generate.temperature=0", "--out", tmp_path / "g.jsonl")
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in open(tmp_path / "g.jsonl", encoding="utf-8")]
    assert [r["prompt"] for r in rows] == ["The slings", "Whether"]
    assert rows[0]["completion"] in result.stdout  # streamed text is the written text


def test_eval_writes_report(cli, trained, tmp_path):
    cfg, out = trained
    report = json_out(cli("eval", cfg, "--checkpoint", out["checkpoint"], "--json"))
    body = json.loads(open(report["report"]).read())
    assert body["metrics"]["perplexity"] == pytest.approx(torch.tensor(body["metrics"]["loss"]).exp().item(), rel=1e-5)
    assert report["metrics"] == body["metrics"] and body["tokens"] > 0
    # A run directory stands for its latest checkpoint.
    again = json_out(cli("eval", cfg, "--checkpoint", tmp_path / "run", "--json"))
    assert again["metrics"] == report["metrics"]


def test_prediction_perplexity_agrees_with_the_model_and_ranks_fluency(cli, prepared, tmp_path):
    from transformers import AutoModelForCausalLM

    from aigc_cli.data.tokenization import load_tokenizer
    from tests.conftest import TINY_TEXT

    out = json_out(cli("train", prepared, "train.max_steps=150", "train.eval_every=150", "train.save_every=150", "--json"))
    fluent = TINY_TEXT.splitlines()[:6]
    garbled = ["".join(sorted(line, key=lambda c: (ord(c) * 7919) % 101)) for line in fluent]  # same characters, scrambled
    scores = {}
    for name, lines in (("fluent", fluent), ("garbled", garbled)):
        path = tmp_path / f"{name}.txt"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        scores[name] = json_out(cli("eval", "--predictions", path, "--metrics", "prediction_perplexity", "--checkpoint", out["checkpoint"], "--json"))
    assert scores["fluent"]["metrics"]["prediction_perplexity"] < 0.8 * scores["garbled"]["metrics"]["prediction_perplexity"]

    # The same number from the model's logits, in lm-evaluation-harness's rolling windows
    # (lm_eval.utils.get_rolling_token_windows with context_len=1, then make_disjoint_window;
    # block_size 16: most lines need several windows, and the last one keeps a full context).
    model = AutoModelForCausalLM.from_pretrained(out["checkpoint"]).eval()
    tokenizer = load_tokenizer(out["checkpoint"])
    scored = scores["fluent"]["prediction_perplexity"]
    total, count, max_len = 0.0, 0, 16
    with torch.no_grad():
        for line in fluent:
            tokens = tokenizer.encode(line, add_special_tokens=False).ids
            first = min(max_len, len(tokens))
            pairs = [([model.config.eos_token_id] + tokens[:first - 1], tokens[:first])]
            predicted = first
            while predicted < len(tokens):
                n = min(len(tokens) - predicted, max_len)
                end = predicted + n
                pairs.append((tokens[max(0, end - max_len - 1):end - 1], tokens[end - n:end]))
                predicted += n
            for context, continuation in pairs:
                window = (context[:len(context) - (len(continuation) - 1)] + continuation)[-(max_len + 1):]
                logits = model(input_ids=torch.tensor([window[:-1]])).logits[0, -len(continuation):]
                total += torch.nn.functional.cross_entropy(logits, torch.tensor(continuation), reduction="sum").item()
                count += len(continuation)
    assert scored["tokens"] == count and scored["items"] == len(fluent)
    assert scores["fluent"]["metrics"]["prediction_loss"] == pytest.approx(total / count, rel=1e-4)


def test_prediction_perplexity_without_a_checkpoint_is_a_clear_error(cli, tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("a line\n", encoding="utf-8")
    result = cli("eval", "--predictions", path, "--metrics", "prediction_perplexity")
    assert result.exit_code == 2 and "pass --checkpoint DIR" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("verb, extra, message", [
    ("generate", ["--checkpoint", "/nonexistent/ckpt"], "checkpoint not found"),
    ("eval", ["--checkpoint", "/nonexistent/ckpt"], "checkpoint not found"),
    ("generate", ["--prompts-file", "/nonexistent/prompts.txt"], "prompts file not found"),
    ("train", ["data.prepared_dir=/nonexistent/prepared"], "run `aigc prep {config}` first"),  # names the user's config
    ("train", ["model.block_size=100000"], "fewer than block_size+1"),
    ("train", ["train.device=cuda"] if not torch.cuda.is_available() else ["model.block_size=100000"], "cuda" if not torch.cuda.is_available() else "block_size"),
])
def test_bad_input_exits_2_with_one_line(cli, prepared, verb, extra, message):
    result = cli(verb, prepared, *extra)
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message.format(config=prepared) in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_auto_precision_is_bf16_on_cpu_only_where_it_pays(monkeypatch):
    from aigc_cli.training import precision
    from aigc_cli.backends import spec

    # Which backends gain from bf16 on a CPU with native bf16 was measured; the figures are in the
    # README (Training), not repeated here.
    faster, others = [spec(n) for n in ("gpt", "lora", "ddpm", "gan")], [spec(n) for n in ("rnn", "vae")]
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert all(precision.pick_precision("auto", "cpu", b) is torch.bfloat16 for b in faster)
    assert all(precision.pick_precision("auto", "cpu", b) is None for b in others)
    assert precision.pick_precision("fp32", "cpu", faster[0]) is None
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)  # emulated bf16 would be slower than fp32
    assert precision.pick_precision("auto", "cpu", faster[0]) is None


def test_a_bf16_run_records_its_precision_and_learns_like_fp32(cli, tmp_path, corpus, monkeypatch):
    from aigc_cli.training import precision

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    cfg = tiny_config(tmp_path, corpus, train={"max_steps": 40, "eval_every": 40, "save_every": 0})
    json_out(cli("prep", cfg, "--json"))
    losses = {}
    for precision in ("auto", "fp32"):
        out = json_out(cli("train", cfg, f"train.precision={precision}", f"train.out_dir={tmp_path / precision}", "--json"))
        provenance = json.loads((tmp_path / precision / "provenance.json").read_text())
        assert provenance["precision"] == {"auto": "torch.bfloat16", "fp32": "fp32"}[precision]
        losses[precision] = out["val_loss"]
    assert losses["auto"] != losses["fp32"]  # bf16 really ran ...
    assert losses["auto"] == pytest.approx(losses["fp32"], rel=0.03)  # ... and learned as much

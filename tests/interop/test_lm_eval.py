"""prediction_perplexity against lm-evaluation-harness itself: its HFLM on the same checkpoint,
`loglikelihood_rolling` over texts longer than the model's context (several windows each)."""

from __future__ import annotations

import math

import pytest

from tests.conftest import TINY_TEXT, json_out, tiny_config


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_prediction_perplexity_equals_lm_eval_loglikelihood_rolling(cli, tmp_path, corpus, architecture):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    cfg = tiny_config(tmp_path, corpus)
    json_out(cli("prep", cfg, "--json"))
    out = json_out(cli("train", cfg, f"model.architecture={architecture}", "train.max_steps=40", "train.eval_every=40",
                       "train.save_every=40", "--json"))
    # Lines of different lengths, the longest several times the 16-token context; one line of one character.
    texts = [" ".join(TINY_TEXT.splitlines()[i:i + 3]) for i in range(0, 12, 3)] + ["T", TINY_TEXT[:200].replace("\n", " ")]
    predictions = tmp_path / "predictions.txt"
    predictions.write_text("\n".join(texts) + "\n", encoding="utf-8")
    report = json_out(cli("eval", "--predictions", predictions, "--metrics", "prediction_perplexity",
                          "--checkpoint", out["checkpoint"], "--json"))
    context = report["prediction_perplexity"]["context"]
    assert context == 16 and max(len(t) for t in texts) > 4 * context

    lm = HFLM(pretrained=out["checkpoint"], backend="causal", max_length=context, batch_size=1, device="cpu")
    requests = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=i) for i, text in enumerate(texts)]
    logliks = lm.loglikelihood_rolling(requests, disable_tqdm=True)
    tokens = sum(len(lm.tok_encode(text)) for text in texts)
    assert report["prediction_perplexity"]["tokens"] == tokens
    assert report["metrics"]["prediction_loss"] == pytest.approx(-sum(logliks) / tokens, abs=1e-4)
    assert report["metrics"]["prediction_perplexity"] == pytest.approx(math.exp(-sum(logliks) / tokens), rel=1e-4)

"""`aigc eval` on files: agreement with sacrebleu's command line and rouge-score, CIDEr-D against
a published value, Chinese text, labels, diversity, inputs (ids, lines, bad files), the report
and the quality gates with their exit codes."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import json_out

REPO = Path(__file__).resolve().parents[2]
WORDS = "a man woman dog child red blue ball street runs sits plays with in on the of near big small green".split()
ZH = ["今天天气很好，我们去公园散步。", "他在图书馆里看书。", "这只小猫非常可爱。", "我喜欢吃苹果和香蕉。", "明天我们要去北京开会。",
      "孩子们在操场上踢足球。", "妈妈正在厨房做饭。", "这本书的故事很有意思。", "火车站离这里不远。", "老师给学生们讲了一个故事。"]
JA = ["今日はとても良い天気です。", "私は毎朝コーヒーを飲みます。", "駅の前に新しい本屋ができました。", "子供たちは公園でサッカーをしています。",
      "明日は東京で会議があります。", "この映画はとても面白かった。", "母は台所で料理を作っています。", "電車が遅れて学校に遅刻しました。",
      "週末に友達と海へ行きたいです。", "先生が学生に新しい話をしました。"]
KO = ["오늘은 날씨가 정말 좋습니다.", "나는 매일 아침 커피를 마십니다.", "역 앞에 새로운 서점이 생겼어요.", "아이들이 공원에서 축구를 하고 있습니다.",
      "내일은 서울에서 회의가 있습니다.", "이 영화는 아주 재미있었어요.", "어머니가 부엌에서 요리를 하고 계십니다.", "기차가 늦어서 학교에 지각했습니다.",
      "주말에 친구와 바다에 가고 싶어요.", "선생님이 학생들에게 새로운 이야기를 해 주셨습니다."]


def _sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 14))]
        words[0] = words[0].capitalize()
        out.append(" ".join(words) + rng.choice([".", "!", "", " ?"]))
    return out


def _edit(sentences: list[str], seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for s in sentences:
        words = s.split()
        if len(words) > 2 and rng.random() < 0.5:
            del words[rng.randrange(len(words))]
        if rng.random() < 0.5:
            words[rng.randrange(len(words))] = rng.choice(WORDS).upper() if rng.random() < 0.2 else rng.choice(WORDS)
        out.append(" ".join(words))
    return out


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _sacrebleu_cli(refs: list[Path], hyp: Path, *extra: str) -> list[float]:
    out = subprocess.run([sys.executable, "-m", "sacrebleu", *map(str, refs), "-i", str(hyp), "-m", "bleu", "chrf", "ter", "-b", "-w", "4", *extra],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


# ja and ko: sacrebleu's MeCab tokenizers (the dev extra installs sacrebleu[ja,ko]).
BLEU_TOKENIZER = {"en": "13a", "zh": "zh", "ja": "ja-mecab", "ko": "ko-mecab"}


@pytest.mark.parametrize("lang", list(BLEU_TOKENIZER))
def test_bleu_chrf_ter_equal_the_sacrebleu_command_line(cli, tmp_path, monkeypatch, lang):
    """Chunks of 7 items summed by aigc give the numbers sacrebleu prints for the whole files."""
    from aigc_cli.evaluation import scoring

    monkeypatch.setattr(scoring, "CHUNK", 7)
    if lang == "en":
        refs_a = _sentences(60, 1)
        refs_b, hyps, extra = _edit(refs_a, 2), _edit(refs_a, 3), []
    else:
        refs_a = {"zh": ZH, "ja": JA, "ko": KO}[lang] * 3
        refs_b = [s.replace("我们", "大家").replace("私は", "僕は").replace("나는", "저는") for s in refs_a]
        hyps = [s[: len(s) // 2] + "的" + s[len(s) // 2 + 1:] if i % 3 else s[::-1] for i, s in enumerate(refs_a)]
        extra = ["-tok", BLEU_TOKENIZER[lang], "--ter-normalized", "--ter-asian-support"]
    ref_files = [_write(tmp_path / "a.txt", refs_a), _write(tmp_path / "b.txt", refs_b)]
    hyp = _write(tmp_path / "hyp.txt", hyps)
    out = json_out(cli("eval", "--predictions", hyp, "--references", ref_files[0], "--references", ref_files[1],
                       "--metrics", "bleu,chrf,ter", "--lang", lang, "--json"))
    bleu, chrf, ter = _sacrebleu_cli(ref_files, hyp, *extra)
    assert 5 < bleu < 95  # a non-trivial case
    assert out["metrics"]["bleu"] == pytest.approx(bleu, abs=6e-5)
    assert out["metrics"]["chrf"] == pytest.approx(chrf, abs=6e-5)
    assert out["metrics"]["ter"] == pytest.approx(ter, abs=6e-5)
    assert list(out["metrics"]) == ["bleu", "chrf", "ter"]
    assert out["signatures"]["bleu"].startswith("nrefs:2|") and f"tok:{BLEU_TOKENIZER[lang]}" in out["signatures"]["bleu"]


def test_a_missing_mecab_is_a_clear_error(cli, tmp_path, monkeypatch):
    from sacrebleu.tokenizers import tokenizer_ja_mecab

    monkeypatch.setattr(tokenizer_ja_mecab, "MeCab", None)  # as when sacrebleu[ja] is not installed
    files = _write(tmp_path / "h.txt", JA), _write(tmp_path / "r.txt", JA)
    result = cli("eval", "--predictions", files[0], "--references", files[1], "--metrics", "bleu", "--lang", "ja")
    assert result.exit_code == 2
    assert "ja-mecab tokenizer needs packages that are not installed" in result.output and "sacrebleu[ja]" in result.output
    assert "Traceback" not in result.output


def test_rouge_equals_rouge_score(cli, tmp_path):
    from rouge_score import rouge_scorer

    refs, hyps = _sentences(40, 4), _edit(_sentences(40, 4), 5)
    refs2 = _edit(refs, 6)
    files = [_write(tmp_path / "r1.txt", refs), _write(tmp_path / "r2.txt", refs2)]
    out = json_out(cli("eval", "--predictions", _write(tmp_path / "h.txt", hyps), "--references", files[0], "--references", files[1],
                       "--metrics", "rouge1 rouge2 rougeL rougeLsum", "--json"))
    types = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    scorer = rouge_scorer.RougeScorer(types, use_stemmer=False)
    direct = [scorer.score_multi([a, b], h) for a, b, h in zip(refs, refs2, hyps)]
    for t in types:
        assert out["metrics"][t] == pytest.approx(sum(d[t].fmeasure for d in direct) / len(direct), rel=1e-12)
    assert 0.2 < out["metrics"]["rougeL"] < 1  # 0..1, not ×100


def test_rouge_stemmer_option_equals_rouge_score(cli, tmp_path):
    from rouge_score import rouge_scorer

    refs, hyps = ["the runners were running quickly", "cats jumped over fences"], ["a runner runs quick", "the cat jumps over the fence"]
    config = tmp_path / "e.yaml"
    config.write_text(json.dumps({"eval": {"metrics": ["rougeL"], "rouge_stemmer": True, "generations": str(_write(tmp_path / "h.txt", hyps)),
                                           "references": str(_write(tmp_path / "r.txt", refs)), "out": str(tmp_path / "rep.json")}}))
    out = json_out(cli("eval", config, "--json"))
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    expected = sum(scorer.score(r, h)["rougeL"].fmeasure for r, h in zip(refs, hyps)) / 2
    assert out["metrics"]["rougeL"] == pytest.approx(expected) and expected > 0.4


def test_chinese_rouge_keeps_the_characters(cli, tmp_path):
    from rouge_score import rouge_scorer

    same = json_out(cli("eval", "--predictions", _write(tmp_path / "h.txt", ZH), "--references", _write(tmp_path / "r.txt", ZH),
                        "--metrics", "rouge1,rougeL,bleu", "--lang", "zh", "--json"))
    assert same["metrics"]["rougeL"] == pytest.approx(1.0) and same["metrics"]["bleu"] == pytest.approx(100.0)
    unrelated = ZH[5:] + ZH[:5]
    other = json_out(cli("eval", "--predictions", _write(tmp_path / "h2.txt", unrelated), "--references", tmp_path / "r.txt",
                         "--metrics", "rougeL", "--lang", "zh", "--json"))
    assert other["metrics"]["rougeL"] < 0.25
    # The failure this guards against: rouge-score's own tokenizer deletes every Chinese character.
    assert rouge_scorer.RougeScorer(["rougeL"]).score(ZH[0], ZH[0])["rougeL"].fmeasure == 0.0


def test_unicode_tokenizer_is_rouge_scores_on_ascii_and_keeps_other_scripts():
    from rouge_score import tokenizers

    from aigc_cli.evaluation.text_metrics import UnicodeTokenizer

    text = "The quick-brown fox's 3 jumps, over_the lazy dogs!"
    for stem in (False, True):
        assert UnicodeTokenizer(stem).tokenize(text) == tokenizers.DefaultTokenizer(stem).tokenize(text)
    assert UnicodeTokenizer().tokenize("Grüße aus 東京, हिन्दी!") == ["grüße", "aus", "東", "京", "हिन्दी"]


def test_cider_d_matches_the_published_example(cli, tmp_path):
    """nlg-eval's README example (examples/hyp.txt, ref1.txt, ref2.txt in github.com/Maluuba/nlg-eval),
    scored by coco-caption's CIDEr-D code: "CIDEr: 1.242192" (README; asserted in
    nlgeval/tests/test_nlgeval.py)."""
    hyp = _write(tmp_path / "hyp.txt", ["this is the model generated sentence1 which seems good enough",
                                        "this is sentence2 which has been generated by your model"])
    ref1 = _write(tmp_path / "ref1.txt", ["this is one reference sentence for sentence1",
                                          "this is a reference sentence for sentence2 which was generated by your model"])
    ref2 = _write(tmp_path / "ref2.txt", ["this is one more reference sentence for sentence1",
                                          "this is the second reference sentence for sentence2"])
    out = json_out(cli("eval", "--predictions", hyp, "--references", ref1, "--references", ref2, "--metrics", "cider", "--json"))
    assert out["metrics"]["cider"] == pytest.approx(1.242192, abs=5e-7)


def test_metrics_without_references(cli, tmp_path):
    import sacrebleu

    texts = ["the cat sat on the mat the cat sat on the mat", "a dog runs", "the cat sat on the mat", "birds fly high in the sky"]
    out = json_out(cli("eval", "--predictions", _write(tmp_path / "p.txt", texts), "--json"))
    m = out["metrics"]
    assert list(m) == ["distinct1", "distinct2", "self_bleu", "repetition", "length_mean", "length_median", "length_min", "length_max"]
    # 12+3+6+6 = 27 words, distinct: the cat sat on mat a dog runs birds fly high in sky = 13
    assert m["distinct1"] == pytest.approx(13 / 27)
    # first text: 9 four-grams, 6 distinct ("the cat sat on" ... "the mat the cat"): 1/3 repeated; others none
    assert m["repetition"] == pytest.approx((1 / 3) / 4)
    assert (m["length_mean"], m["length_median"], m["length_min"], m["length_max"]) == (27 / 4, 6.0, 3.0, 12.0)
    direct = [sacrebleu.sentence_bleu(t, texts[:i] + texts[i + 1:]).score for i, t in enumerate(texts)]
    assert m["self_bleu"] == pytest.approx(sum(direct) / len(direct)) and m["self_bleu"] > 10


def test_labels_accuracy_and_per_class_scores(cli, tmp_path):
    from sklearn.metrics import precision_recall_fscore_support

    truth = ["pos", "neg", "pos", "neu", "neg", "pos", "neg", "neu"]
    guess = ["pos", "neg", "neg", "neu", "neg", "pos ", "pos", "neg"]
    preds = tmp_path / "p.jsonl"
    preds.write_text("".join(json.dumps({"label": g}) + "\n" for g in guess))
    out = json_out(cli("eval", "--predictions", preds, "--predictions-field", "label", "--references", _write(tmp_path / "r.txt", truth),
                       "--metrics", "accuracy,precision,recall,f1", "--json"))
    guess = [g.strip() for g in guess]
    p, r, f, s = precision_recall_fscore_support(truth, guess, labels=["neg", "neu", "pos"], zero_division=0)
    assert out["metrics"]["accuracy"] == pytest.approx(5 / 8)
    assert out["metrics"]["f1"] == pytest.approx(f.mean()) and out["metrics"]["recall"] == pytest.approx(r.mean())
    assert out["per_class"]["neu"] == {"precision": pytest.approx(p[1]), "recall": pytest.approx(r[1]), "f1": pytest.approx(f[1]), "support": 2}
    assert "| neu |" in Path(out["markdown"]).read_text()


def test_generate_jsonl_ids_gz_and_list_references(cli, tmp_path):
    """aigc generate's JSONL (sample 0 scored), references as JSONL with ids in another order,
    a list of references per item, gzip."""
    preds = tmp_path / "g.jsonl"
    rows = [{"id": i, "input": f"q{i}", "completion": c, "sample": s} for i, c in enumerate(["a big red ball here", "the dog runs very fast", "a small child laughs loudly"]) for s in (0, 1)]
    for row in rows:
        if row["sample"]:
            row["completion"] = "garbage garbage"
    preds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    refs = tmp_path / "r.jsonl.gz"
    with gzip.open(refs, "wt", encoding="utf-8") as handle:
        for i, ref in [(2, ["a small child laughs loudly", "one child"]), (0, ["a big red ball here", "the ball"]), (1, ["the dog runs very fast", "dogs run"])]:
            handle.write(json.dumps({"id": i, "reference": ref}) + "\n")
    out = json_out(cli("eval", "--predictions", preds, "--references", refs, "--metrics", "bleu,rougeL", "--json"))
    assert out["metrics"]["bleu"] == pytest.approx(100.0) and out["metrics"]["rougeL"] == pytest.approx(1.0)
    assert out["items"] == 3 and out["signatures"]["bleu"].startswith("nrefs:2|")
    assert out["inputs"][1] == {"role": "references", "path": str(refs), "sha256": hashlib.sha256(refs.read_bytes()).hexdigest()}


@pytest.mark.parametrize("pred_lines, ref_lines, message", [
    (["a", "b", "c"], ["a", "b"], "r.txt has 2 items but the predictions go on: {p}:3 has no reference"),
    (["a", "b"], ["a", "b", "c"], "r.txt has more items than the predictions (2): {r}:3 has no prediction"),
    (['{"id": 1, "completion": "a"}', '{"completion": "b"}'], ['{"id": 1, "reference": "a"}', '{"id": 2, "reference": "b"}'], "{p}:2: no 'id'"),
    (['{"id": 1, "completion": "a"}', '{"id": 3, "completion": "b"}'], ['{"id": 1, "reference": "a"}', '{"id": 2, "reference": "b"}'], "{p}:2: id '3' has no reference"),
    (['{"completion": "a"}', '{oops'], ["a", "b"], "{p}:2: malformed JSON"),
    (['{"text": "a"}'], ["a"], "{p}:1: no field 'completion' in the predictions"),
])
def test_bad_inputs_exit_2_naming_the_item(cli, tmp_path, pred_lines, ref_lines, message):
    suffix = ".jsonl" if pred_lines[0].startswith("{") else ".txt"
    p = _write(tmp_path / f"p{suffix}", pred_lines)
    r = _write(tmp_path / ("r.jsonl" if ref_lines[0].startswith("{") else "r.txt"), ref_lines)
    result = cli("eval", "--predictions", p, "--references", r, "--metrics", "bleu")
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message.format(p=p, r=r) in errors[0], result.stderr
    assert not (tmp_path / "p.eval.json").exists()


@pytest.mark.parametrize("args, message", [
    (["--metrics", "bleu,blue"], "eval.metrics.1"),
    (["--fail-under", "blue=20"], "unknown metric 'blue' in --fail-under — did you mean 'bleu'?"),
    (["--fail-under", "ter=20"], "use --fail-above ter=VALUE"),
    (["--fail-under", "bleu:20"], "bad --fail-under value 'bleu:20'"),
    (["--max-drop", "bleu=1"], "--max-drop needs --baseline"),
    (["--fail-under", "bleu=20", "rougeL=0.3"], "'rougeL=0.3' is not a config file"),
    (["--metrics", "bleu,perplexity"], "pass the experiment CONFIG as well"),
    ([], "nothing to evaluate"),
])
def test_usage_errors_exit_2(cli, tmp_path, args, message):
    files = [] if not args else ["--predictions", _write(tmp_path / "p.txt", ["a b c"]), "--references", _write(tmp_path / "r.txt", ["a b c"])]
    result = cli("eval", *files, *args) if args else cli("eval")
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.stderr


def _gate_files(tmp_path):
    refs = _sentences(30, 7)
    return ["--predictions", _write(tmp_path / "p.txt", _edit(refs, 8)), "--references", _write(tmp_path / "r.txt", refs)]


def test_gates_pass(cli, tmp_path):
    result = cli("eval", *_gate_files(tmp_path), "--metrics", "bleu,rougeL,ter", "--fail-under", "bleu=10,rougeL=0.3", "--fail-above", "ter=90")
    assert result.exit_code == 0, result.stderr
    assert "bleu | " in result.stdout and "≥ 10.00 ok" in result.stdout
    report = json.loads((tmp_path / "p.eval.json").read_text())
    assert report["gates"]["passed"] and report["gates"]["fail_under"] == {"bleu": 10.0, "rougeL": 0.3}


def test_gates_fail_under_lists_every_failing_metric(cli, tmp_path):
    result = cli("eval", *_gate_files(tmp_path), "--metrics", "bleu,chrf,rougeL", "--fail-under", "bleu=99",
                 "--fail-under", "rougeL=0.99,chrf=1", "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)  # the report still comes out, and is written
    bleu, rouge = report["metrics"]["bleu"], report["metrics"]["rougeL"]
    line = [x for x in result.stderr.splitlines() if x.startswith("error: quality gate failed")][0]
    assert f"bleu {bleu:.2f} < 99.00 (fail-under)" in line and f"rougeL {rouge:.4f} < 0.9900 (fail-under)" in line and "chrf" not in line
    assert report["gates"]["passed"] is False and len(report["gates"]["failures"]) == 2
    assert "**FAILED**" in Path(report["markdown"]).read_text() and "| metric | value | gate |" in result.stderr


def test_gates_regression_against_a_baseline(cli, tmp_path):
    files = _gate_files(tmp_path)
    good = json_out(cli("eval", *files, "--metrics", "bleu,ter", "--out", tmp_path / "before.json", "--json"))
    worse = _write(tmp_path / "worse.txt", _edit(_edit(_sentences(30, 7), 9), 10))
    ok = cli("eval", *files, "--metrics", "bleu,ter", "--baseline", tmp_path / "before.json", "--max-drop", "bleu=0.5,ter=0.5")
    assert ok.exit_code == 0, ok.stderr  # same predictions: no drop
    bad = cli("eval", "--predictions", worse, *files[2:], "--metrics", "bleu,ter", "--baseline", tmp_path / "before.json",
              "--max-drop", "bleu=0.5", "--max-drop", "ter=0.5", "--json")
    assert bad.exit_code == 1
    now = json.loads(bad.stdout)["metrics"]
    assert now["bleu"] < good["metrics"]["bleu"] - 0.5 and now["ter"] > good["metrics"]["ter"] + 0.5
    assert f"bleu dropped from {good['metrics']['bleu']:.2f} to {now['bleu']:.2f}" in bad.stderr
    assert f"ter rose from {good['metrics']['ter']:.2f} to {now['ter']:.2f}" in bad.stderr


def test_report_files_and_config_path(cli, tmp_path):
    """The config route: eval.* keys, report.json + report.md + provenance beside it, --json on stdout only."""
    hyps, refs = _write(tmp_path / "h.txt", ["a man rides a horse", "two dogs play"]), _write(tmp_path / "r.txt", ["a man rides a horse", "two cats sleep"])
    config = tmp_path / "e.yaml"
    config.write_text(json.dumps({"data": {"source": "x"}, "eval": {"metrics": ["bleu", "chrf", "rougeL"], "generations": str(hyps),
                                                                    "references": [str(refs)], "out": str(tmp_path / "ev" / "report.json"),
                                                                    "fail_under": {"rougeL": 0.5}}}))
    result = cli("eval", config, "--json", "--fail-under", "bleu=1")
    out = json_out(result)
    assert out["metrics"]["rougeL"] == pytest.approx((1 + 1 / 3) / 2) and out["gates"]["passed"]
    assert out["gates"]["fail_under"] == {"rougeL": 0.5, "bleu": 1.0}  # the command line adds to the config's gates
    assert out == {**json.loads((tmp_path / "ev" / "report.json").read_text()), "report": out["report"], "markdown": out["markdown"]}
    assert {"sacrebleu", "rouge-score", "aigc", "python"} <= set(out["versions"]) and out["items"] == 2
    assert out["inputs"][0]["sha256"] == hashlib.sha256(hyps.read_bytes()).hexdigest()
    assert (tmp_path / "ev" / "report.md").read_text() in result.stderr
    assert (tmp_path / "ev" / "provenance.json").is_file() and out["config"]["eval"]["references"] == [str(refs)]


def test_config_free_eval_does_not_import_torch(tmp_path):
    code = ("import sys; from aigc_cli.cli import app\n"
            "try: app(sys.argv[1:])\nexcept SystemExit as e: assert e.code == 0, e.code\n"
            "assert 'torch' not in sys.modules")
    hyp, ref = _write(tmp_path / "h.txt", ["a b c d"]), _write(tmp_path / "r.txt", ["a b c d"])
    subprocess.run([sys.executable, "-c", code, "eval", "--predictions", str(hyp), "--references", str(ref), "--metrics", "bleu,chrf,ter,cider", "-q"],
                   check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_benchmark_script_runs(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "bench" / "eval.py"), "--smoke"], capture_output=True, text=True,
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    assert "ratio" in out.stdout and "memory: aigc peaked" in out.stdout


@pytest.mark.parametrize("lang, reference, prediction", [
    ("zh", "我们今天去公园散步，天气很好。", "我们今天去公园散步，天气不错。"),
    ("ja", "私たちは今日公園を散歩しました。", "私たちは今日公園を歩きました。"),
    ("ko", "우리는 오늘 공원에서 산책했습니다", "우리는 오늘 공원을 걸었습니다"),
])
def test_cjk_bleu_without_lang_is_not_silently_zero(cli, tmp_path, lang, reference, prediction):
    """No eval.lang: the language is guessed from the references, said on stderr, and BLEU scores
    as with eval.lang set (13a would split nothing and give 0.0)."""
    hyp, ref = tmp_path / "h.txt", tmp_path / "r.txt"
    hyp.write_text(prediction + "\n", encoding="utf-8")
    ref.write_text(reference + "\n", encoding="utf-8")
    guessed = cli("eval", "--predictions", hyp, "--references", ref, "--metrics", "bleu", "--json", "--out", tmp_path / "a.json")
    stated = cli("eval", "--predictions", hyp, "--references", ref, "--metrics", "bleu", "--lang", lang, "--json", "--out", tmp_path / "b.json")
    assert guessed.exit_code == 0 and stated.exit_code == 0, guessed.stderr + stated.stderr
    assert "look like" in guessed.stderr and "eval.lang" in guessed.stderr
    a, b = json.loads(guessed.stdout)["metrics"]["bleu"], json.loads(stated.stdout)["metrics"]["bleu"]
    assert a > 0 and a == pytest.approx(b)

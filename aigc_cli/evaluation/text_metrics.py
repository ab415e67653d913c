"""Text metrics for `aigc eval`. Every scorer takes the items chunk by chunk (`add`) and answers
at the end (`result`), so a corpus of any size streams through in flat memory.

- BLEU, chrF, TER: sacrebleu's own per-segment statistics, summed over chunks; its corpus score
  is a function of those sums, so the numbers are the ones `sacrebleu` prints for the whole file.
- ROUGE-1/2/L/Lsum: rouge-score, mean F1 over items (the best reference when there are several),
  with a tokenizer that keeps every script (rouge-score's default one deletes non-ASCII text).
- CIDEr-D: coco-caption's formula, written out here (the pip package that carries it is a 100 MB
  bundle of Java tools).
- Without references: distinct-1/2, self-BLEU, repetition, length statistics.
- Labels: accuracy and per-class precision/recall/F1 (scikit-learn).
"""

from __future__ import annotations

import functools
import math
import random
import re
from collections import Counter, defaultdict

from aigc_cli.errors import AigcError

_BLEU_TOKENIZER_BY_LANG = {"zh": "zh", "ja": "ja-mecab", "ko": "ko-mecab"}
CJK_LANGS = ("zh", "ja", "ko")
# Scripts written without spaces between words: each character is a token (as sacrebleu's zh tokenizer does).
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_CJK_CHAR = re.compile(f"([{_CJK}])")


def base_lang(lang: str | None) -> str:
    return (lang or "").lower().replace("_", "-").split("-")[0]


@functools.lru_cache(maxsize=1)
def _word_pattern() -> re.Pattern:
    """A run of letters, digits and combining marks in any script (\\w alone would cut Hindi or
    decomposed accents apart at every mark)."""
    import unicodedata

    marks, start = [], None
    for code in range(0x300, 0x20000):
        is_mark = unicodedata.category(chr(code)).startswith("M")
        if is_mark and start is None:
            start = code
        elif not is_mark and start is not None:
            marks.append(f"{re.escape(chr(start))}-{re.escape(chr(code - 1))}")
            start = None
    return re.compile(f"(?:[^\\W_]|[{''.join(marks)}\U000e0100-\U000e01ef])+")


class UnicodeTokenizer:
    """For rouge_scorer.RougeScorer(tokenizer=...): on ASCII text exactly rouge-score's default
    tokenizer (lowercase, letters and digits, optional Porter stemming of words over 3 letters);
    on other text the words of every script survive, and each CJK character is a token."""

    def __init__(self, use_stemmer: bool = False):
        self._stemmer = None
        if use_stemmer:
            from nltk.stem import porter  # (a 1-2 s import, so only when asked for)

            self._stemmer = porter.PorterStemmer()

    def tokenize(self, text: str) -> list[str]:
        if text.isascii():
            from rouge_score import tokenize as rouge_tokenize

            return rouge_tokenize.tokenize(text, self._stemmer)
        tokens = _word_pattern().findall(_CJK_CHAR.sub(r" \1 ", text.lower()))
        if self._stemmer:
            tokens = [self._stemmer.stem(t) if len(t) > 3 and t.isascii() else t for t in tokens]
        return tokens


# ----------------------------------------------------------------------------- sacrebleu
def sacrebleu_metric(name: str, lang: str | None, bleu_tokenize: str | None):
    """The sacrebleu metric object for bleu / chrf / ter, set up for the language."""
    from sacrebleu.metrics import BLEU, CHRF, TER

    cjk = base_lang(lang) in CJK_LANGS
    if name == "chrf":
        return CHRF()
    if name == "ter":
        # TER splits CJK text into characters only in its normalized mode (sacrebleu's own advice).
        return TER(normalized=cjk, asian_support=cjk)
    tokenize = bleu_tokenize or _BLEU_TOKENIZER_BY_LANG.get(base_lang(lang), "13a")
    try:
        return BLEU(tokenize=tokenize)
    except (ImportError, ModuleNotFoundError, RuntimeError) as exc:
        extra = "ja" if tokenize.startswith("ja") else "ko"
        raise AigcError(f"sacrebleu's {tokenize} tokenizer needs packages that are not installed ({type(exc).__name__})",
                        f"pip install 'sacrebleu[{extra}]', or set eval.bleu_tokenize=char") from None


_KANA, _HANGUL, _HAN = re.compile("[\u3040-\u30ff]"), re.compile("[\uac00-\ud7af\u1100-\u11ff]"), re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def guess_cjk_language(texts: list[str]) -> str | None:
    """zh, ja or ko when CJK characters are at least 30% of the texts' non-space characters."""
    sample = "".join(texts[:500])
    letters = sum(not c.isspace() for c in sample)
    kana, hangul, han = (len(p.findall(sample)) for p in (_KANA, _HANGUL, _HAN))
    if not letters or (kana + hangul + han) / letters < 0.3:
        return None
    return "ja" if kana else "ko" if hangul > han else "zh"


def _metric_for_guessed_language(name: str, references: list[str]):
    from aigc_cli.errors import warn

    lang = guess_cjk_language(references)
    if lang is None:
        return sacrebleu_metric(name, None, None)
    if name == "bleu" and lang in ("ja", "ko"):
        try:
            metric = sacrebleu_metric(name, lang, None)
        except AigcError:  # no MeCab: characters, which need no tokenizer package
            warn(f"eval: the references look like {_LANG_NAMES[lang]} and eval.lang is not set; MeCab is not installed, so BLEU "
                 f"splits them into characters (sacrebleu's char tokenizer) — set eval.lang={lang} with pip install 'sacrebleu[{lang}]'")
            return sacrebleu_metric(name, None, "char")
    else:
        metric = sacrebleu_metric(name, lang, None)
    warn(f"eval: the references look like {_LANG_NAMES[lang]} and eval.lang is not set; {name.upper()} is scored as for "
         f"eval.lang={lang} (set eval.lang to choose, or eval.bleu_tokenize)")
    return metric


_LANG_NAMES = {"zh": "Chinese", "ja": "Japanese", "ko": "Korean"}


def _clear_tokenizer_caches(metric) -> None:
    """sacrebleu's tokenizers memoise up to 65,536 sentences each (functools.lru_cache on the
    class). A streamed pass tokenizes each sentence once, so the cache only grows memory with the
    corpus: empty it after every chunk."""
    tokenizer = getattr(metric, "tokenizer", None)
    for part in [tokenizer, *vars(tokenizer).values()] if tokenizer is not None else []:
        for attribute in type(part).__dict__.values():
            if hasattr(attribute, "cache_clear"):
                attribute.cache_clear()


class SacrebleuScorer:
    """Corpus BLEU, chrF or TER from per-segment statistics summed chunk by chunk."""

    def __init__(self, name: str, lang: str | None, bleu_tokenize: str | None):
        self.name = name
        # Without eval.lang, BLEU and TER on Chinese, Japanese or Korean would split nothing (13a
        # splits at spaces, which these scripts do not write) and score 0.0 silently: the
        # language is then guessed from the first references, and said.
        guess = lang is None and bleu_tokenize is None and name in ("bleu", "ter")
        self.metric = None if guess else sacrebleu_metric(name, lang, bleu_tokenize)
        self.totals: list | None = None
        self.reference_counts: set[int] = set()

    def add(self, predictions: list[str], references: list[list[str]]) -> None:
        from sacrebleu.utils import sum_of_lists

        if self.metric is None:
            self.metric = _metric_for_guessed_language(self.name, [r for refs in references for r in refs])

        width = max(len(refs) for refs in references)
        streams = [[refs[j] if j < len(refs) else None for refs in references] for j in range(width)]
        chunk = sum_of_lists(self.metric._extract_corpus_statistics(predictions, streams))
        self.reference_counts.add(self.metric.num_refs)
        _clear_tokenizer_caches(self.metric)
        self.totals = chunk if self.totals is None else [a + b for a, b in zip(self.totals, chunk)]

    def result(self) -> dict[str, float]:
        if len(self.reference_counts) > 1:
            self.metric.num_refs = -1  # what sacrebleu records for a varying number of references
        return {self.name: float(self.metric._compute_score_from_stats(self.totals).score)}

    def signature(self) -> str:
        return str(self.metric.get_signature())


# ----------------------------------------------------------------------------- ROUGE
class RougeScorer:
    """Mean F1 over items of each ROUGE type (rouge-score; several references: the best one)."""

    def __init__(self, names: list[str], stemmer: bool):
        from rouge_score import rouge_scorer

        self.names, self.stemmer = names, stemmer
        self.scorer = rouge_scorer.RougeScorer(names, tokenizer=UnicodeTokenizer(stemmer))
        self.sums = dict.fromkeys(names, 0.0)
        self.count = 0

    def add(self, predictions: list[str], references: list[list[str]]) -> None:
        for prediction, refs in zip(predictions, references):
            scores = self.scorer.score(refs[0], prediction) if len(refs) == 1 else self.scorer.score_multi(refs, prediction)
            for name in self.names:
                self.sums[name] += scores[name].fmeasure
        self.count += len(predictions)

    def result(self) -> dict[str, float]:
        return {name: self.sums[name] / self.count for name in self.names}

    def signature(self) -> str:
        from importlib import metadata

        return (f"rouge-score {metadata.version('rouge-score')}|tok:unicode (rouge-score's on ASCII)|"
                f"stemmer:{'porter' if self.stemmer else 'no'}|mean F1, best of refs")


# ----------------------------------------------------------------------------- CIDEr-D
def _ngram_counts(tokens: list[str], max_n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for n in range(1, max_n + 1) for i in range(len(tokens) - n + 1))


class CiderD:
    """CIDEr-D (Vedantam, Zitnick and Parikh, CVPR 2015), as coco-caption's `cider` scorer computes it:
    tf-idf vectors of 1..4-grams with document frequencies over the items' reference sets, cosine
    similarity clipped by the reference's counts, a Gaussian length penalty (sigma 6), averaged over
    n and references, times 10; the corpus score is the mean over items. Text is lowercased and
    stripped of punctuation first (coco-caption tokenizes with the PTB tokenizer before scoring).

    Needs two passes: `add_references` over every item first (document frequencies), then `add`."""

    def __init__(self, max_n: int = 4, sigma: float = 6.0):
        self.max_n, self.sigma = max_n, sigma
        self.tokenizer = UnicodeTokenizer()
        self.document_frequency: Counter = Counter()
        self.documents = 0
        self.total, self.count = 0.0, 0

    def add_references(self, references: list[list[str]]) -> None:
        for refs in references:
            self.document_frequency.update({g for ref in refs for g in _ngram_counts(self.tokenizer.tokenize(ref), self.max_n)})
        self.documents += len(references)

    def _vector(self, text: str) -> tuple[list[dict], list[float], int]:
        tokens = self.tokenizer.tokenize(text)
        log_documents = math.log(float(self.documents))
        vector: list[dict] = [{} for _ in range(self.max_n)]
        norm = [0.0] * self.max_n
        for gram, count in _ngram_counts(tokens, self.max_n).items():
            weight = count * (log_documents - math.log(max(1.0, self.document_frequency[gram])))
            vector[len(gram) - 1][gram] = weight
            norm[len(gram) - 1] += weight * weight
        return vector, [math.sqrt(x) for x in norm], len(tokens)

    def _similarity(self, hyp, ref) -> float:
        (vec_h, norm_h, len_h), (vec_r, norm_r, len_r) = hyp, ref
        penalty = math.exp(-((len_h - len_r) ** 2) / (2 * self.sigma ** 2))
        total = 0.0
        for n in range(self.max_n):
            dot = sum(min(w, vec_r[n].get(g, 0.0)) * vec_r[n].get(g, 0.0) for g, w in vec_h[n].items())
            if norm_h[n] and norm_r[n]:
                dot /= norm_h[n] * norm_r[n]
            total += dot * penalty
        return total / self.max_n

    def add(self, predictions: list[str], references: list[list[str]]) -> None:
        for prediction, refs in zip(predictions, references):
            hyp = self._vector(prediction)
            self.total += 10.0 * sum(self._similarity(hyp, self._vector(ref)) for ref in refs) / len(refs)
        self.count += len(predictions)

    def result(self) -> dict[str, float]:
        return {"cider": self.total / self.count}

    def signature(self) -> str:
        return f"CIDEr-D|n:{self.max_n}|sigma:{self.sigma}|df:references of the {self.documents} items|tok:unicode lowercase"


# ----------------------------------------------------------------------------- without references
class PredictionStats:
    """distinct-1/2 (Li et al. 2016: distinct n-grams / all n-grams, over all predictions),
    repetition (seq-rep-4 of Welleck et al. 2020: the share of repeated 4-grams within a
    prediction, averaged) and length in tokens (words; CJK characters). The distinct n-gram sets
    are the one thing here that grows with the corpus."""

    def __init__(self, names: list[str]):
        self.names = names
        self.tokenizer = UnicodeTokenizer()
        self.seen: dict[int, set] = {1: set(), 2: set()}
        self.ngrams = {1: 0, 2: 0}
        self.repetition, self.count = 0.0, 0
        self.lengths: Counter = Counter()

    def add(self, predictions: list[str], references=None) -> None:
        for text in predictions:
            tokens = self.tokenizer.tokenize(text)
            for n in (1, 2):
                grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
                self.seen[n].update(grams)
                self.ngrams[n] += len(grams)
            fours = [tuple(tokens[i:i + 4]) for i in range(len(tokens) - 3)]
            self.repetition += 1.0 - len(set(fours)) / len(fours) if fours else 0.0
            self.lengths[len(tokens)] += 1
        self.count += len(predictions)

    def result(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for n in (1, 2):
            if f"distinct{n}" in self.names:
                out[f"distinct{n}"] = len(self.seen[n]) / self.ngrams[n] if self.ngrams[n] else 0.0
        if "repetition" in self.names:
            out["repetition"] = self.repetition / self.count
        if "length" in self.names:
            out.update(length_mean=sum(k * v for k, v in self.lengths.items()) / self.count,
                       length_median=float(_median(self.lengths, self.count)),
                       length_min=float(min(self.lengths)), length_max=float(max(self.lengths)))
        return out


def _median(counts: Counter, total: int) -> float:
    ordered = sorted(counts.items())

    def at(rank: int) -> int:
        seen = 0
        for value, count in ordered:
            seen += count
            if seen > rank:
                return value
        return ordered[-1][0]

    return (at((total - 1) // 2) + at(total // 2)) / 2


class SelfBleu:
    """Self-BLEU (Zhu et al. 2018, Texygen): the mean sentence BLEU (sacrebleu, exp smoothing) of
    each prediction against all the others as references, on a seeded random sample. The best
    match count of an n-gram among "all the others" is the largest count anywhere, or the
    second-largest when the prediction itself holds the largest, so one pass does it."""

    def __init__(self, sample: int, lang: str | None, bleu_tokenize: str | None, seed: int = 1337):
        from sacrebleu.metrics import BLEU

        self.sample, self.random = sample, random.Random(seed)
        self.bleu: BLEU = sacrebleu_metric("bleu", lang, bleu_tokenize)
        self.kept: list[str] = []
        self.seen = 0

    def add(self, predictions: list[str], references=None) -> None:
        for text in predictions:  # reservoir sampling: every prediction equally likely to be kept
            self.seen += 1
            if len(self.kept) < self.sample:
                self.kept.append(text)
            elif (slot := self.random.randrange(self.seen)) < self.sample:
                self.kept[slot] = text

    def result(self) -> dict[str, float]:
        from sacrebleu.metrics import BLEU
        from sacrebleu.metrics.helpers import extract_all_word_ngrams

        if len(self.kept) < 2:
            return {"self_bleu": 0.0}
        order = self.bleu.max_ngram_order
        counted = [extract_all_word_ngrams(self.bleu._preprocess_segment(t), 1, order) for t in self.kept]
        best: dict[tuple, list] = defaultdict(lambda: [0, -1, 0])  # largest count, who holds it, second largest
        for index, (grams, _) in enumerate(counted):
            for gram, count in grams.items():
                top = best[gram]
                if count > top[0]:
                    top[:] = [count, index, top[0]]
                elif count > top[2]:
                    top[2] = count
        lengths = Counter(length for _, length in counted)
        total = 0.0
        for index, (grams, length) in enumerate(counted):
            correct, guessed = [0] * order, [0] * order
            for gram, count in grams.items():
                top = best[gram]
                others = top[2] if top[1] == index else top[0]
                guessed[len(gram) - 1] += count
                correct[len(gram) - 1] += min(count, others)
            lengths[length] -= 1
            ref_len = self.bleu._get_closest_ref_len(length, [n for n, c in lengths.items() if c > 0])
            lengths[length] += 1
            total += BLEU.compute_bleu(correct, guessed, length, ref_len, smooth_method="exp", effective_order=True).score
        return {"self_bleu": total / len(counted)}

    def signature(self) -> str:
        return f"mean sentence BLEU vs the rest|sample:{len(self.kept)} of {self.seen}|tok:{self.bleu.tokenizer.signature()}|smooth:exp|eff:yes"


# ----------------------------------------------------------------------------- labels
class LabelScorer:
    """Predictions and references as class labels (the first reference of each item, stripped):
    accuracy, and precision/recall/F1 per reference class and their macro means (scikit-learn).
    Only the (reference, prediction) pair counts are kept, passed to scikit-learn as sample weights."""

    def __init__(self, names: list[str]):
        self.names = names
        self.pairs: Counter = Counter()

    def add(self, predictions: list[str], references: list[list[str]]) -> None:
        self.pairs.update((refs[0].strip(), prediction.strip()) for prediction, refs in zip(predictions, references))

    def result(self) -> dict[str, float]:
        return self.report()[0]

    def report(self) -> tuple[dict[str, float], dict]:
        from sklearn.metrics import accuracy_score, precision_recall_fscore_support

        truth, guess = zip(*self.pairs)
        weights = list(self.pairs.values())
        classes = sorted(set(truth))
        precision, recall, f1, _ = precision_recall_fscore_support(truth, guess, labels=classes, sample_weight=weights, zero_division=0)
        support = Counter()
        for (label, _), count in self.pairs.items():
            support[label] += count
        macro = {"precision": float(precision.mean()), "recall": float(recall.mean()), "f1": float(f1.mean()),
                 "accuracy": float(accuracy_score(truth, guess, sample_weight=weights))}
        per_class = {label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": support[label]}
                     for label, p, r, f in zip(classes, precision, recall, f1)}
        other = sum(count for (_, predicted), count in self.pairs.items() if predicted not in support)
        return {name: macro[name] for name in self.names}, {"per_class": per_class, "predictions_outside_classes": other}


def library_versions(names: list[str]) -> dict[str, str]:
    from importlib import metadata

    wanted = {"sacrebleu": {"bleu", "chrf", "ter", "self_bleu"}, "rouge-score": {"rouge1", "rouge2", "rougeL", "rougeLsum"},
              "nltk": {"rouge1", "rouge2", "rougeL", "rougeLsum"}, "scikit-learn": {"accuracy", "precision", "recall", "f1"}}
    versions = {}
    for package, metrics in wanted.items():
        if metrics & set(names):
            try:
                versions[package] = metadata.version(package)
            except metadata.PackageNotFoundError:
                pass
    return versions


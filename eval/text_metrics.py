"""Text metrics of the LLM stage: captioning (BLEU, ROUGE-L, METEOR) and multiple-choice VQA about a slide.

Everything runs offline (no corpus downloads): BLEU is counted here with nltk's length helpers, ROUGE-L comes from
`rouge-score`, METEOR is implemented here without its WordNet synonym stage. All three use the tokeniser `tokenize`.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from itertools import groupby
from types import SimpleNamespace

from nltk.stem import PorterStemmer
from nltk.translate.bleu_score import brevity_penalty, closest_ref_length
from rouge_score import rouge_scorer

from modeling_pathflip.options_pathflip import parse_option_letter, tokenize

METEOR_ALPHA, METEOR_BETA, METEOR_GAMMA = 0.9, 3.0, 0.5
BLEU_EPSILON = 0.1  # count given to an n-gram order without any match (nltk's smoothing method 1)


@lru_cache(maxsize=65536)
def _stem(token: str) -> str:
    return PorterStemmer().stem(token)


def _check_lengths(name: str, predictions: Sequence, other_name: str, other: Sequence) -> None:
    if len(predictions) == 0:
        raise ValueError(f"{name} is empty: nothing to score")
    if len(predictions) != len(other):
        raise ValueError(f"{len(predictions)} {name} but {len(other)} {other_name}: they must pair up one to one")


def _reference_lists(references: Sequence[str] | Sequence[Sequence[str]]) -> list[list[str]]:
    """Per item, its list of reference strings (a bare string is one reference)."""
    lists = [[item] if isinstance(item, str) else list(item) for item in references]
    for index, refs in enumerate(lists):
        if not refs:
            raise ValueError(f"item {index} has no reference caption")
    return lists


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu_scores(
    references: list[list[list[str]]], hypotheses: list[list[str]], max_order: int = 4
) -> list[float]:
    """Corpus BLEU-1..max_order of tokenised hypotheses, cumulative uniform weights (COCO convention).

    Clipped n-gram matches and n-gram counts are summed over the corpus; the brevity penalty uses each hypothesis'
    closest reference length (nltk's helpers). An order without any match gets precision epsilon / its count (nltk's
    smoothing method 1). Unlike nltk's `corpus_bleu`, a hypothesis shorter than n words adds no n-gram (nltk counts
    one), so an empty hypothesis only adds its reference length.
    """
    matches, totals = [0] * max_order, [0] * max_order
    hyp_length = ref_length = 0
    for refs, hyp in zip(references, hypotheses, strict=True):
        for n in range(1, max_order + 1):
            counts, most_in_a_ref = _ngrams(hyp, n), Counter()
            for ref in refs:
                most_in_a_ref |= _ngrams(ref, n)
            matches[n - 1] += sum((counts & most_in_a_ref).values())
            totals[n - 1] += sum(counts.values())
        hyp_length += len(hyp)
        ref_length += closest_ref_length(refs, len(hyp))
    if matches[0] == 0:
        return [0.0] * max_order
    log_p = [math.log(m / t if m else BLEU_EPSILON / max(t, 1)) for m, t in zip(matches, totals, strict=True)]
    penalty = brevity_penalty(ref_length, hyp_length)
    return [penalty * math.exp(sum(log_p[:n]) / n) for n in range(1, max_order + 1)]


def _diagonal_runs(hyp: list[str], ref: list[str]) -> list[tuple[int, int, int]]:
    """Heap of maximal runs ``(-length, i, j)`` of equal keys starting at hyp[i] and ref[j]."""
    positions: dict[str, list[int]] = {}
    for j, key in enumerate(ref):
        positions.setdefault(key, []).append(j)
    runs = []
    for i, key in enumerate(hyp):
        for j in positions.get(key, ()):
            if i > 0 and j > 0 and hyp[i - 1] == ref[j - 1]:
                continue  # inside a run that starts earlier
            length = 1
            while i + length < len(hyp) and j + length < len(ref) and hyp[i + length] == ref[j + length]:
                length += 1
            runs.append((-length, i, j))
    heapq.heapify(runs)
    return runs


def _align_stage(hyp: list[str], ref: list[str], pairs: dict[int, int]) -> None:
    """Add to ``pairs`` (hyp -> ref index) matches of equal keys among free words, longest common runs first.

    Every free equal pair gets matched (maximum matches); fewest chunks is NP-hard (minimum common string
    partition), so runs are taken greedily, longest first, ties to the earliest hypothesis then reference word.
    """
    used_ref = set(pairs.values())
    heap = _diagonal_runs(hyp, ref)
    while heap:
        negative_length, i, j = heapq.heappop(heap)
        free = [i + k not in pairs and j + k not in used_ref for k in range(-negative_length)]
        if all(free):
            pairs.update((i + k, j + k) for k in range(-negative_length))
            used_ref.update(j + k for k in range(-negative_length))
            continue
        for is_free, group in groupby(range(len(free)), key=free.__getitem__):  # queue the still-free sub-runs again
            if is_free:
                ks = list(group)
                heapq.heappush(heap, (-len(ks), i + ks[0], j + ks[0]))


def _meteor_single(hyp: list[str], ref: list[str]) -> float:
    """METEOR of one tokenised hypothesis against one tokenised reference (exact, then Porter-stem matches)."""
    if not hyp or not ref:
        return 0.0
    pairs: dict[int, int] = {}
    _align_stage(hyp, ref, pairs)
    _align_stage([_stem(token) for token in hyp], [_stem(token) for token in ref], pairs)
    matches = len(pairs)
    if matches == 0:
        return 0.0
    chunks = sum(pairs.get(i - 1) != j - 1 for i, j in pairs.items())  # a chunk starts where the diagonal breaks
    precision, recall = matches / len(hyp), matches / len(ref)
    fmean = precision * recall / (METEOR_ALPHA * precision + (1 - METEOR_ALPHA) * recall)
    penalty = METEOR_GAMMA * (chunks / matches) ** METEOR_BETA
    return fmean * (1 - penalty)


def meteor_score(prediction: str, references: Sequence[str]) -> float:
    """METEOR of one prediction: the best score over its references (see `caption_metrics` for the caveats)."""
    hyp = tokenize(prediction)
    return max(_meteor_single(hyp, tokenize(reference)) for reference in references)


def caption_metrics(
    predictions: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]]
) -> dict[str, float]:
    """Corpus BLEU-1..4, mean ROUGE-L F-measure and mean METEOR of captions against one or more references each.

    BLEU is corpus BLEU (`corpus_bleu_scores`: cumulative uniform weights as in COCO, epsilon smoothing of orders
    without any match). ROUGE-L and METEOR take the best reference per prediction. METEOR
    follows Banerjee & Lavie (2005) / nltk (alpha 0.9, beta 3, gamma 0.5) with exact then Porter-stem matching but
    WITHOUT the WordNet synonym stage (it needs a corpus download), so it is a lower bound of nltk's METEOR up to the
    alignment: it never finds more matches, but its greedy fewest-chunks alignment may have fewer chunks than nltk's
    left-to-right one. An empty prediction scores 0.
    """
    _check_lengths("predictions", predictions, "references", references)
    reference_lists = _reference_lists(references)
    tokenised_refs = [[tokenize(reference) for reference in refs] for refs in reference_lists]
    bleu = corpus_bleu_scores(tokenised_refs, [tokenize(prediction) for prediction in predictions])
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=SimpleNamespace(tokenize=tokenize))
    rouge = [
        scorer.score_multi(refs, prediction)["rougeL"].fmeasure
        for prediction, refs in zip(predictions, reference_lists, strict=True)
    ]
    meteor = [meteor_score(prediction, refs) for prediction, refs in zip(predictions, reference_lists, strict=True)]
    metrics = {f"bleu_{n}": float(score) for n, score in enumerate(bleu, start=1)}
    metrics["rouge_l"] = float(sum(rouge) / len(rouge))
    metrics["meteor"] = float(sum(meteor) / len(meteor))
    return metrics


def vqa_accuracy(
    predictions: Sequence[str], answers: Sequence[str], options: Sequence[Sequence[str]]
) -> dict[str, float]:
    """Multiple-choice accuracy of generated answers (unparsed ones count as wrong) and the parsed fraction."""
    _check_lengths("predictions", predictions, "answers", answers)
    _check_lengths("predictions", predictions, "option lists", options)
    parsed = [parse_option_letter(text, opts) for text, opts in zip(predictions, options, strict=True)]
    correct = sum(
        letter is not None and letter == answer.strip().upper() for letter, answer in zip(parsed, answers, strict=True)
    )
    return {
        "vqa_accuracy": correct / len(predictions),
        "vqa_parsed_rate": sum(letter is not None for letter in parsed) / len(predictions),
    }


def majority_baseline_accuracy(answers: Sequence[str]) -> float:
    """Accuracy of always answering the most frequent letter among ``answers``."""
    if len(answers) == 0:
        raise ValueError("answers is empty: no majority baseline")
    return Counter(answer.strip().upper() for answer in answers).most_common(1)[0][1] / len(answers)

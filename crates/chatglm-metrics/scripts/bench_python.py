"""Time the official compute_metrics loop over the 10,000 pairs benches/metrics.rs scores.

Dev tool, not part of CI. Needs jieba==0.42.1 rouge_chinese==1.0.3 nltk==3.10.4 numpy.
Usage: python3 bench_python.py [../tests/fixtures/pairs.jsonl]
Builds the same pairs as the Rust bench (non-empty fixture pairs, cycled, each turn rotated one
more character), initialises jieba's dictionary first (not timed; the Rust bench also loads
it outside the timed loop), then times the loop of ptuning/main.py plus the numpy means.
"""
import json
import sys
import time

import jieba
import numpy as np
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from rouge_chinese import Rouge

jieba.setLogLevel(60)
PAIRS = 10_000


def rotate(text, by):
    if not text:
        return text
    k = by % len(text)
    return text[k:] + text[:k]


def bench_pairs(path):
    base = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            if d["official_error"] is None:
                base.append((d["prediction"], d["label"]))
    return [tuple(rotate(t, i // len(base)) for t in base[i % len(base)]) for i in range(PAIRS)]


def compute_metrics(decoded_preds, decoded_labels):
    # The loop of ChatGLM-6B ptuning/main.py compute_metrics.
    score_dict = {"rouge-1": [], "rouge-2": [], "rouge-l": [], "bleu-4": []}
    for pred, label in zip(decoded_preds, decoded_labels):
        hypothesis = list(jieba.cut(pred))
        reference = list(jieba.cut(label))
        rouge = Rouge()
        scores = rouge.get_scores(' '.join(hypothesis), ' '.join(reference))
        result = scores[0]
        for k, v in result.items():
            score_dict[k].append(round(v["f"] * 100, 4))
        bleu_score = sentence_bleu([list(label)], list(pred), smoothing_function=SmoothingFunction().method3)
        score_dict["bleu-4"].append(round(bleu_score * 100, 4))
    for k, v in score_dict.items():
        score_dict[k] = float(np.mean(v))
    return score_dict


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "../tests/fixtures/pairs.jsonl"
    pairs = bench_pairs(path)
    jieba.initialize()
    preds = [p for p, _ in pairs]
    labels = [l for _, l in pairs]
    best = None
    for _ in range(3):
        start = time.perf_counter()
        result = compute_metrics(preds, labels)
        elapsed = time.perf_counter() - start
        best = elapsed if best is None else min(best, elapsed)
    seg_start = time.perf_counter()
    for p, l in pairs:
        list(jieba.cut(p))
        list(jieba.cut(l))
    seg = time.perf_counter() - seg_start
    print(json.dumps({"pairs": len(pairs), "best_of_3_s": round(best, 4), "jieba_only_s": round(seg, 4),
                      "means": result}, ensure_ascii=False))


if __name__ == "__main__":
    main()

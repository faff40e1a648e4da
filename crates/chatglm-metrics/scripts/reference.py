"""Score (prediction, label) pairs with the official ChatGLM-6B ptuning/main.py logic.

Dev tool, not part of CI. Needs: pip install jieba==0.42.1 rouge_chinese==1.0.3 nltk==3.10.4 numpy
Usage: python3 reference.py IN.jsonl OUT.jsonl
IN lines hold `prediction`/`label` (or `predict`/`labels`); OUT lines add Python jieba's cuts
(`jieba_pred`, `jieba_label`), the rounded per-pair scores (`rouge1`, `rouge2`, `rougel`, `bleu4`)
and `official_error` (the exception the official loop raises, or null).
"""
import json
import sys

import jieba
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from rouge_chinese import Rouge

jieba.setLogLevel(60)


def official(pred, label):
    # Body of the official compute_metrics loop (ptuning/main.py).
    hypothesis = list(jieba.cut(pred))
    reference = list(jieba.cut(label))
    rouge = Rouge()
    scores = rouge.get_scores(' '.join(hypothesis), ' '.join(reference))
    result = scores[0]
    out = {}
    for k, v in result.items():
        out[k] = round(v["f"] * 100, 4)
    bleu_score = sentence_bleu([list(label)], list(pred), smoothing_function=SmoothingFunction().method3)
    out["bleu-4"] = round(bleu_score * 100, 4)
    return out


def main():
    src, dst = sys.argv[1], sys.argv[2]
    with open(src, encoding="utf-8") as f, open(dst, "w", encoding="utf-8") as g:
        for line in f:
            if not line.strip():
                continue
            d = json.loads(line)
            pred = d.get("prediction", d.get("predict"))
            label = d.get("label", d.get("labels"))
            rec = {"prediction": pred, "label": label,
                   "jieba_pred": list(jieba.cut(pred)), "jieba_label": list(jieba.cut(label))}
            try:
                s = official(pred, label)
                rec.update(rouge1=s["rouge-1"], rouge2=s["rouge-2"], rougel=s["rouge-l"],
                           bleu4=s["bleu-4"], official_error=None)
            except ValueError as e:
                rec.update(rouge1=0.0, rouge2=0.0, rougel=0.0, bleu4=0.0,
                           official_error=f"ValueError: {e}")
            g.write(json.dumps(rec, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()

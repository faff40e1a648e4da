"""Times the Python original on the corpus of benches/encode.rs (1 MB of mixed Chinese text).

ChatGLM-6B's `SPTokenizer.encode` (the fast path: text rules in Python, then SentencePiece C++)
and the `ChatGLMTokenizer.encode` path of transformers 4.33 (special-token split, per-chunk
`_tokenize` to pieces, then one `convert_tokens_to_ids` call per piece), rebuilt here from the
original code with the pip `sentencepiece` package. Usage: python3 python_encode.py"""
import json
import re
import time

import sentencepiece as spm

DIR = __file__.rsplit("/benches/", 1)[0] + "/tests/fixtures/tokenizers"


def corpus():
    texts = [json.loads(l)["text"] for l in open(DIR + "/v1/cases.jsonl", encoding="utf-8")]
    block = "\n".join(texts)
    out = ""
    while len(out.encode()) < 1_000_000:
        out += block + "\n"
    return out


def preprocess(text, max_len=80):
    text = text.replace("\n", "<n>")
    text = text.replace("\t", "<|tab|>")
    for i in range(max_len, 1, -1):
        text = text.replace(" " * i, f"<|blank_{i}|>")
    return text


def sp_encode(sp, text, n_img=0):
    return [x + n_img for x in sp.encode(preprocess(text))]


SPECIALS = ["<sop>", "<eop>", "<unk>", "<pad>", "[MASK]"]
SPLIT = re.compile("(" + "|".join(re.escape(s) for s in SPECIALS) + ")")


def hf_encode(sp, text, n_img=0):
    parts = SPLIT.split(text)
    tokens = []
    for i, part in enumerate(parts):
        if part in SPECIALS:
            tokens.append(part)
            continue
        if i > 0:
            part = part.lstrip()
        if i < len(parts) - 1:
            part = part.rstrip()
        if part:
            tokens.extend(sp.encode(preprocess(part), out_type=str))
    ids = [sp.piece_to_id(t) + n_img for t in tokens]
    return ids + [sp.piece_to_id("[gMASK]"), sp.piece_to_id("<sop>")]


def best(fn, repeat=5):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    text = corpus()
    print(f"corpus: {len(text.encode())} bytes")
    for name in ["v1", "v1_unigram"]:
        sp = spm.SentencePieceProcessor(model_file=f"{DIR}/{name}/ice_text.model")
        print(f"{name} SPTokenizer.encode: {best(lambda: sp_encode(sp, text)) * 1000:.1f} ms")
        print(f"{name} ChatGLMTokenizer.encode: {best(lambda: hf_encode(sp, text)) * 1000:.1f} ms")


main()

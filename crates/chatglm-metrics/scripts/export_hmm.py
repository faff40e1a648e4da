"""Export Python jieba 0.42.1's HMM emission table as integer counts: data/jieba_hmm_counts.txt.

Dev tool, not part of CI. jieba-rs's built-in HMM has the emission log-probabilities rounded to
6 decimals, which flips rare near-tie Viterbi decisions (常在便细领管: Python S S S S B E, rounded
B E S S B E). Every value of jieba's `finalseg/prob_emit.py` is exactly `math.log(count / total)`
for an integer count and one total per state, so the counts give Python's floats back bit for
bit and take a quarter of the space. Only characters U+4E00..U+9FD5 are kept: finalseg runs the
HMM on those alone. The start and transition probabilities are short literals in the Rust code.
Usage: python3 export_hmm.py OUT.txt
"""
import math
import sys

from jieba.finalseg.prob_emit import P as EMIT

STATES = "BEMS"


def state_total(values):
    guess = round(math.exp(-min(values)))
    for total in range(guess - 3, guess + 4):
        if all(math.log(round(math.exp(v) * total) / total) == v for v in values):
            return total
    raise SystemExit("emission values are not log(count / total)")


totals = {s: state_total(list(EMIT[s].values())) for s in STATES}
chars = sorted({c for s in STATES for c in EMIT[s] if "\u4e00" <= c <= "\u9fd5"})
with open(sys.argv[1], "w", encoding="utf-8", newline="\n") as f:
    f.write("# Emission counts of jieba 0.42.1's HMM (finalseg/prob_emit.py = log(count / total)).\n")
    f.write("# jieba is MIT licensed, Copyright (c) 2013 Sun Junyi. Made by scripts/export_hmm.py.\n")
    f.write("# totals B E M S\n")
    f.write(" ".join(str(totals[s]) for s in STATES) + "\n")
    f.write("# char count_B count_E count_M count_S (0: no emission)\n")
    for c in chars:
        counts = []
        for s in STATES:
            if c in EMIT[s]:
                n = round(math.exp(EMIT[s][c]) * totals[s])
                assert math.log(n / totals[s]) == EMIT[s][c]
                counts.append(n)
            else:
                counts.append(0)
        f.write(c + " " + " ".join(map(str, counts)) + "\n")

"""Generate random and adversarial (prediction, label) pairs for checking against reference.py.

Dev tool, not part of CI. Usage: python3 gen_adversarial.py SEED COUNT OUT.jsonl [SEEDS.jsonl]
With SEEDS.jsonl (lines with `prediction`/`label`), a third of the pairs are mutated copies of
those real texts.
Pairs mix common Chinese text, ASCII words joined by - . _ @ / : % + # &, digits and decimals,
sentence punctuation (。！？?…”’ and runs of dots), every kind of whitespace Python knows,
CJK extension and U+9FD6..U+9FFF characters, emoji, and near-copies of the fixture texts.
"""
import json
import random
import sys

SEED, COUNT, OUT = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rng = random.Random(SEED)
SEED_TEXTS = []
if len(sys.argv) > 4:
    with open(sys.argv[4], encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            SEED_TEXTS += [t for t in (d.get("prediction"), d.get("label")) if t]

COMMON = ("的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面"
          "而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开"
          "它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只"
          "没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级"
          "少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处队南给色光门即保治北造百规热领七海"
          "口东导器压志世金增争济阶油思术极交受联什认六共权收证改清己美再采转更单风切打白教速花带安场身车例真务具万每目至达走"
          "积示议声报斗完类八离华名确才科张信马节话米整空元况今集温传土许步群广石记需段研界拉林律叫且究观越织装影算低持音众书"
          "布复容儿须际商非验连断深难近矿千周委素技备半办青省列习响约支般史感劳便团往酸历市克何除消构府称太准精值号率族维划选"
          "标写存候毛亲快效斯院查江型眼王按格养易置派层片始却专状育厂京识适属圆包火住调满县局照参红细引听该铁价严龙飞")
ASCII_WORDS = ["GPT", "4", "iPhone", "15", "Pro", "2022", "10", "24", "example", "com", "a", "b", "x1", "v2",
               "3", "14", "1415926", "OK", "ok", "C", "AT", "T", "c", "B", "USB", "Type", "WES", "5", "I", "CNS"]
JOINERS = ["-", ".", "_", "@", "/", ":", "%", "+", "#", "&", "..", "--", "-.", ".-"]
PUNCT = ["。", "！", "？", "?", "，", ",", "…", "……", "......", ".......", "”", "’", "“", "‘", "、", "；", "：",
         "!", "(", ")", "（", "）", "《", "》", "\"", "'"]
SPACES = [" ", "  ", "\t", "\n", "\r\n", "\r", "\n\n", "\u3000", "\xa0", "\u2009", "\x1c", "\x1f", "\x85",
          "\u2028", "\u200b", "\ufeff", " \n "]
EXOTIC = ["\u3400", "\u4db5", "\u9fd6", "\u9fea", "\u9fff", "\uf900", "\U00020000", "\U0002a6d6", "👍", "❤️",
          "👨\u200d👩\u200d👧", "é", "ß", "Ω", "한", "か", "Ａ", "１", "²", "٣"]


def chinese(n):
    return "".join(rng.choice(COMMON) for _ in range(n))


def ascii_run():
    parts = [rng.choice(ASCII_WORDS)]
    for _ in range(rng.randint(0, 3)):
        parts.append(rng.choice(JOINERS))
        parts.append(rng.choice(ASCII_WORDS))
    if rng.random() < 0.2:
        parts.append(rng.choice(["%", ".", "-", ".5", "%%"]))
    return "".join(parts)


def piece():
    r = rng.random()
    if r < 0.45:
        return chinese(rng.randint(1, 8))
    if r < 0.6:
        return ascii_run()
    if r < 0.75:
        return rng.choice(PUNCT)
    if r < 0.88:
        return rng.choice(SPACES)
    return rng.choice(EXOTIC)


def text():
    return "".join(piece() for _ in range(rng.randint(1, 14)))


def mutate(s):
    chars = list(s)
    for _ in range(rng.randint(0, 4)):
        op = rng.random()
        pos = rng.randint(0, len(chars))
        if op < 0.4 and chars:
            del chars[min(pos, len(chars) - 1)]
        elif op < 0.8:
            chars[pos:pos] = list(piece())
        elif chars:
            chars[min(pos, len(chars) - 1)] = rng.choice(COMMON)
    return "".join(chars)


with open(OUT, "w", encoding="utf-8") as f:
    for _ in range(COUNT):
        a = mutate(rng.choice(SEED_TEXTS)) if SEED_TEXTS and rng.random() < 0.33 else text()
        r = rng.random()
        b = mutate(a) if r < 0.6 else (text() if r < 0.95 else rng.choice(["", " ", "\n", a]))
        if rng.random() < 0.5:
            a, b = b, a
        f.write(json.dumps({"prediction": a, "label": b}, ensure_ascii=False) + "\n")

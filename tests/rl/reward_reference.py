"""Plain-Python reference of the SPEC §3 rewards on decoded strings, and a fuzzer of completions.

The reference uses ``re`` exactly as SPEC §3 writes the patterns. Where SPEC §3 leaves room it follows the released
Robust-R1 code and the choices documented in ``robust_r1_jax.rl.rewards``:
* a completion without ``<ANSWER>…<ANSWER_END>`` scores accuracy 0;
* reference pairs are ``dict(pairs)`` (a repeated reference name keeps its last value);
* reference-code variant: a pair whose number ``float`` rejects scores -1 and matches nothing.
"""
from __future__ import annotations

import random
import re

FORMAT_PATTERN = (r"<TYPE>.*?<TYPE_END>\s*<INFLUENCE>.*?<INFLUENCE_END>\s*<REASONING>.*?<REASONING_END>\s*"
                  r"<CONCLUSION>.*?<CONCLUSION_END>\s*<ANSWER>.*?<ANSWER_END>")
PAIR_PATTERN = r"(\w+(?:\s+\w+)*)\(([\d.]+)\)"


# ---- the reference ------------------------------------------------------------------------------------------------

def format_reward(text: str) -> float:
    return 1.0 if re.search(FORMAT_PATTERN, text, re.DOTALL) else 0.0


def answer_of(text: str) -> str | None:
    match = re.search(r"<ANSWER>(.*?)<ANSWER_END>", text, re.DOTALL)
    return match.group(1).strip() if match else None


def accuracy_reward(text: str, reference: str) -> float:
    answer = answer_of(text)
    return 1.0 if answer is not None and answer == answer_of(reference) else 0.0


def pairs_of(text: str) -> list[tuple[str, str]]:
    block = re.search(r"<TYPE>(.*?)<TYPE_END>", text, re.DOTALL)
    if block is None:
        return []
    return [(name.strip(), number) for name, number in re.findall(PAIR_PATTERN, block.group(1))]


def degradation_reward(text: str, reference: str, variant: str = "paper") -> float:
    truth = {name: float(number) for name, number in pairs_of(reference)}
    reward, matched = 0.0, set()
    for name, number in pairs_of(text):
        try:
            value = float(number)
        except ValueError:  # "0..5", "." -- the released code would crash here
            reward -= 1.0
            continue
        if name in truth and (variant == "reference_code" or name not in matched):
            reward += (1.5 if variant == "reference_code" else 1.0) - abs(value - truth[name])
            matched.add(name)
        else:
            reward -= 1.0
    return reward - sum(1.0 for name in truth if name not in matched)


def length_reward(n_tokens: int, n_reference_tokens: int) -> float:
    return 1.0 - abs(n_tokens - n_reference_tokens) / n_reference_tokens


def all_rewards(text: str, n_tokens: int, reference: str, n_reference_tokens: int, variant: str = "paper",
                weights=(1.0, 1.0, 1.0, 1.0)) -> dict[str, float]:
    out = {"accuracy": accuracy_reward(text, reference), "format": format_reward(text),
           "degradation": degradation_reward(text, reference, variant),
           "length": length_reward(n_tokens, n_reference_tokens)}
    out["total"] = sum(w * out[k] for w, k in zip(weights, ("accuracy", "format", "degradation", "length")))
    return out


# ---- the fuzzer ---------------------------------------------------------------------------------------------------

DEGRADATIONS = ("lens blur", "lens flare", "motion blur", "dirty lens", "saturation", "jpeg compression",
                "block exchange", "mean shift", "scan lines", "darkness", "atmospheric turbulence", "noise",
                "color diffusion", "sharpness change", "graffiti", "watermark damage")
# Names outside the reference, non-ASCII letters, names that are prefixes/suffixes of real ones, digits as names.
OTHER_NAMES = ("fog", "rain streaks", "flou de lentille", "bruit numérique", "模糊", "Straße blur", "lens", "blur",
               "noise noise", "ｎｏｉｓｅ", "lens_blur", "Lens Blur", "motion blur2", "日本 ノイズ", "é", "x", "7",
               "Ωmega shift", "dark", "ness", "jpeg", "𝐀𝐁 blur", "𝐀𝐁")
NON_ASCII_REFERENCE_NAMES = ("flou de lentille", "模糊", "Straße blur", "ｎｏｉｓｅ", "𝐀𝐁 blur")  # 1- to 4-byte UTF-8
WHITESPACE = (" ", "  ", "\t", "\n", "\u3000", "\xa0", "\u2003", "\x1c", "\x85", "\u2028", " \n ")
NOT_WHITESPACE = ("\u200b", "·", "-", "_")  # zero-width space is not \s in Python
SEPARATORS = (", ", ",", " ", "\n", "; ", " and ", "", "\u3000", "、", ",\u2003", " , ")
TAG_GAPS = ("\n", "", " ", "\n\n", "\t", "\u3000", "\x85", "x", " \n ", "\u200b", "\r\n", "\x0b\x0c")
ANSWERS = ("0", "1", "2", "3", "yes", "a red bus", "東京", "ß", "٣")
FILLER = ("the image is darker", "edges are soft", "noise hides texture", "so the answer is", "(0.5)", "<TYPE",
          "TYPE_END>", "< ANSWER>", "<ANSWER_END", "ANSWER>", "café", "naïve", "日本語のテキスト", "١٢٣", "½", "²",
          "Ⅻ", "émoji 😀", "lens blur(0.3)", "<", ">", "()", "(.)", "<INFLUENCE>", "nul\x00byte")
ARABIC = "٠١٢٣٤٥٦٧٨٩"
FULLWIDTH = "０１２３４５６７８９"
DEVANAGARI = "०१२३४५६७८९"
MATH_BOLD = "𝟎𝟏𝟐𝟑𝟒𝟓𝟔𝟕𝟖𝟗"  # four bytes each in UTF-8


def random_number(rng: random.Random, value: float) -> str:
    roll = rng.random()
    if roll < 0.55:
        return f"{value:.2f}"
    if roll < 0.62:
        return rng.choice([f"{value:.1f}", f"{value:.3f}", f"{value:.6f}", f"{value:.12f}", f"{value:g}"])
    if roll < 0.70:  # valid but unusual
        return rng.choice([".5", "5.", "1", "0", "00.50", "0.0", "1.000001", "000", "12.5", "3.14159265358979"])
    if roll < 0.78:  # other decimal digit scripts: \d and float() accept them
        digits = rng.choice([ARABIC, FULLWIDTH, DEVANAGARI, MATH_BOLD])
        return "".join(digits[int(c)] if c.isdigit() else c for c in f"{value:.2f}")
    if roll < 0.90:  # invalid for float(), but matched by [\d.]+
        return rng.choice(["0..5", ".", "..", "1.2.3", "0.4.", "..7", "0.٤.٧"])
    if roll < 0.95:  # not matched by [\d.]+ at all
        return rng.choice(["", "0,5", "-0.5", "1e-3", "0.5 ", " 0.5", "½", "²", "0.5x", "0. 5"])
    return rng.choice(["12345.678", "999999999", "98765432109", "0.000000001234", "1234567890123.5"])


def random_name(rng: random.Random, reference_names: list[str]) -> str:
    roll = rng.random()
    if roll < 0.6 and reference_names:
        name = rng.choice(reference_names)
    elif roll < 0.8:
        name = rng.choice(DEGRADATIONS)
    else:
        name = rng.choice(OTHER_NAMES)
    if rng.random() < 0.12 and " " in name:  # other whitespace, or a non-whitespace joiner, between the words
        name = name.replace(" ", rng.choice(WHITESPACE + NOT_WHITESPACE), 1)
    if rng.random() < 0.05:
        name = name + " "  # whitespace before '(' -- the pattern then fails
    if rng.random() < 0.05:
        name = rng.choice(WHITESPACE) + name
    return name


def random_reference(rng: random.Random) -> str:
    k = rng.randint(0, 5)
    pool = list(DEGRADATIONS) + list(NON_ASCII_REFERENCE_NAMES)
    names = [rng.choice(pool) for _ in range(k)]
    pairs = ", ".join(f"{name}({rng.random():.2f})" for name in names)
    answer = rng.choice(ANSWERS)
    reasoning = " ".join(rng.choice(FILLER[:5]) for _ in range(rng.randint(1, 12)))
    return (f"<TYPE>{pairs}<TYPE_END>\n<INFLUENCE>{rng.choice(FILLER[:3])}<INFLUENCE_END>\n<REASONING>{reasoning}"
            f"<REASONING_END>\n<CONCLUSION>so it is {answer}<CONCLUSION_END>\n<ANSWER>{answer}<ANSWER_END>")


def _reference_names(reference: str) -> tuple[list[str], list[float]]:
    pairs = pairs_of(reference)
    return [n for n, _ in pairs], [float(v) for _, v in pairs]


# Small alphabets whose random strings walk every corner of the format regex and of the pair pattern.
FORMAT_ALPHABET = ("<TYPE>", "<TYPE_END>", "<INFLUENCE>", "<INFLUENCE_END>", "<REASONING>", "<REASONING_END>",
                   "<CONCLUSION>", "<CONCLUSION_END>", "<ANSWER>", "<ANSWER_END>", " ", "\n", "\u3000", "x", "<", ">",
                   "\x85", "\u200b")
PAIR_ALPHABET = ("a", "b", "é", "7", "٣", " ", "\u3000", "\n", "\r", "\x00", "(", ")", ".", ".", "(", ")", ",", "_",
                 "-", "<TYPE>", "<TYPE_END>", "a(", "b(", "(0.5)", "\u200b", "\ufffd")
SOUP_REFERENCES = ("<TYPE>a(0.5), a b(1), é(0.25)<TYPE_END><ANSWER>a<ANSWER_END>",
                   "<TYPE>b(.5), 7(0.75), a  b(0.1)<TYPE_END><ANSWER>b<ANSWER_END>",
                   "<TYPE>a(0.3), a(0.9)<TYPE_END><ANSWER>a<ANSWER_END>")


def random_soup(rng: random.Random) -> tuple[str, str]:
    """A short string over a small alphabet of tags or of pair characters, and a reference that fits it."""
    if rng.random() < 0.5:
        text = "".join(rng.choice(FORMAT_ALPHABET) for _ in range(rng.randint(0, 24)))
        return text, random_reference(rng)
    text = "".join(rng.choice(PAIR_ALPHABET) for _ in range(rng.randint(0, 30)))
    if rng.random() < 0.7:
        text = "<TYPE>" + text
    if rng.random() < 0.7:
        text = text + "<TYPE_END>"
    if rng.random() < 0.5:
        text = text + "<ANSWER>" + rng.choice(["a", " a ", "b", "", "a b"]) + "<ANSWER_END>"
    return text, rng.choice(SOUP_REFERENCES)


def random_completion_text(rng: random.Random, reference: str) -> str:
    """A chain-like completion near ``reference``, with the mistakes a policy makes."""
    roll = rng.random()
    if roll < 0.03:
        return ""
    if roll < 0.08:  # unicode soup with tag fragments
        return "".join(rng.choice(FILLER + SEPARATORS + WHITESPACE + ("<TYPE>", "<TYPE_END>", "<ANSWER>",
                                                                       "<ANSWER_END>", "x(0.1)"))
                       for _ in range(rng.randint(1, 30)))
    names, values = _reference_names(reference)
    pairs = []
    for name, value in zip(names, values):
        if rng.random() < 0.85:
            pairs.append((name, min(max(value + rng.choice([0, 0, 0.05, -0.1, 0.3]), 0.0), 1.0)))
    for _ in range(rng.choice([0, 0, 0, 1, 2, 4])):
        pairs.append((random_name(rng, names), rng.random()))
    if pairs and rng.random() < 0.15:  # a repeated name
        pairs.insert(rng.randint(0, len(pairs)), rng.choice(pairs))
    rng.shuffle(pairs)
    type_text = "".join(
        (rng.choice(SEPARATORS) if i else "") + random_name(rng, [name]) + "(" + random_number(rng, value) + ")"
        for i, (name, value) in enumerate(pairs))
    answer = answer_of(reference) or "0"
    if rng.random() < 0.2:
        answer = rng.choice(ANSWERS)
    if rng.random() < 0.2:
        answer = rng.choice(WHITESPACE) + answer + rng.choice(WHITESPACE)
    if rng.random() < 0.05:
        answer = answer + " because"
    blocks = [["<TYPE>", type_text, "<TYPE_END>"],
              ["<INFLUENCE>", rng.choice(FILLER), "<INFLUENCE_END>"],
              ["<REASONING>", " ".join(rng.choice(FILLER) for _ in range(rng.randint(0, 8))), "<REASONING_END>"],
              ["<CONCLUSION>", rng.choice(FILLER), "<CONCLUSION_END>"],
              ["<ANSWER>", answer, "<ANSWER_END>"]]
    for block in blocks:  # broken tags
        for i in (0, 2):
            if rng.random() < 0.02:
                block[i] = rng.choice(["", block[i].lower(), block[i][:-1], block[i].replace(">", " >"),
                                       block[i] + block[i]])
    if rng.random() < 0.05:
        blocks.insert(rng.randint(0, len(blocks)), rng.choice(blocks))  # a repeated block
    if rng.random() < 0.05:
        i, j = rng.randrange(len(blocks)), rng.randrange(len(blocks))
        blocks[i], blocks[j] = blocks[j], blocks[i]
    if rng.random() < 0.05:
        del blocks[rng.randrange(len(blocks))]
    text = rng.choice(["", "", "", "Sure. ", "\n", "<ANSWER>9<ANSWER_END>"])
    for block in blocks:
        text += "".join(block) + rng.choice(TAG_GAPS[:4] if rng.random() < 0.8 else TAG_GAPS)
    if rng.random() < 0.15:  # truncated, as when the length budget runs out
        text = text[:rng.randint(0, len(text))]
    return text


def random_case(rng: random.Random) -> tuple[str, str]:
    """(completion text, reference chain): mostly chain-like completions, a fifth small-alphabet soups."""
    if rng.random() < 0.2:
        return random_soup(rng)
    reference = random_reference(rng)
    return random_completion_text(rng, reference), reference


def tokenize_like_a_policy(rng: random.Random, tokenizer, text: str, special_ids: list[int]) -> list[int]:
    """Ids a sampler could emit for ``text``: canonical, or cut into pieces encoded apart (tags split across
    tokens in non-canonical ways), with stray special tokens and raw byte tokens (invalid UTF-8), or truncated."""
    roll = rng.random()
    if roll < 0.45 or not text:
        ids = tokenizer.encode(text, add_special_tokens=False)
    else:
        cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text) + 1, rng.randint(1, 8))))
        pieces = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]
        ids = [i for piece in pieces for i in tokenizer.encode(piece, add_special_tokens=False)]
    if rng.random() < 0.1 and special_ids:
        for _ in range(rng.randint(1, 3)):
            ids.insert(rng.randint(0, len(ids)), rng.choice(special_ids))
    if rng.random() < 0.1:  # raw bytes: lone continuation bytes, cut multi-byte sequences, invalid leads
        for _ in range(rng.randint(1, 3)):
            raw = rng.choice([b"\x80", b"\xe2\x80", b"\xff", b"\xc3", b"\xf0\x9f\x98", b"\xed\xa0\x80", b"\xc0\xaf"])
            ids[rng.randint(0, len(ids)):0] = byte_token_ids(tokenizer)[list(raw)].tolist()
    if rng.random() < 0.1 and ids:
        ids = ids[:rng.randint(0, len(ids))]
    return ids


_BYTE_TOKENS = {}


def byte_token_ids(tokenizer):
    """The id of the single-byte token for each byte value (every byte-level BPE has all 256)."""
    import numpy as np
    key = id(tokenizer)
    if key not in _BYTE_TOKENS:
        printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
        chars, shifted = {}, 0
        for b in range(256):
            if b in printable:
                chars[b] = chr(b)
            else:
                chars[b] = chr(256 + shifted)
                shifted += 1
        vocab = tokenizer.get_vocab()
        _BYTE_TOKENS[key] = np.array([vocab[chars[b]] for b in range(256)])
    return _BYTE_TOKENS[key]


def training_corpus(seed: int = 0, n: int = 600) -> list[str]:
    """Chains, names and numbers in context, so learned merges glue tags, names and digits to their neighbours."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        reference = random_reference(rng)
        texts.append(reference)
        texts.append(random_completion_text(rng, reference))
    return texts

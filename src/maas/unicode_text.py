"""The Unicode rules behind the tokenizer, as tables both Python and TensorFlow can apply.

TensorFlow has no Unicode normalisation or case folding of its own, so the rules are reduced
to two tables computed once from Python's :mod:`unicodedata`, which the tokenizer applies in
Python and the SavedModel export embeds as constants (:mod:`maas.export`):

* :func:`fold_table`: each code point's compatibility decomposition and full case folding
  (``NFKD(casefold(NFKD(c)))``, a fixed point: folding twice changes nothing). Applied code
  point by code point, it puts every text in the decomposed form whose composition (NFC) is
  the text's NFKC case fold: two texts that are equal under NFKC and case folding fold to
  the same code points, except where stacked combining marks come in a non-canonical order,
  which the per-code-point rule does not reorder.
* :func:`class_runs`: each code point's kind after folding: a separator, a word character
  (letters, combining marks and numbers of every script), or a character of a script written
  without spaces between words (Han, kana, Thai, Lao, Khmer, Myanmar), which the tokenizer
  turns into single characters plus character bigrams.
"""

from __future__ import annotations

import functools
import re
import unicodedata

SEPARATOR, WORD, NO_SPACE = 0, 1, 2
MAX_CODE_POINT = 0x10FFFF
UNICODE_VERSION = unicodedata.unidata_version

# Blocks of the scripts written without spaces between words. Only their letters, marks and
# numbers count (a Thai punctuation mark still separates).
NO_SPACE_BLOCKS = (
    (0x0E00, 0x0E7F),  # Thai
    (0x0E80, 0x0EFF),  # Lao
    (0x1000, 0x109F),  # Myanmar
    (0x1780, 0x17FF),  # Khmer
    (0x19E0, 0x19FF),  # Khmer symbols
    (0x3005, 0x3007),  # ideographic iteration mark, closing mark, number zero
    (0x3021, 0x3029),  # Hangzhou numerals
    (0x3040, 0x309F),  # Hiragana
    (0x30A0, 0x30FF),  # Katakana
    (0x31F0, 0x31FF),  # Katakana phonetic extensions
    (0x3400, 0x4DBF),  # CJK unified ideographs extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xA9E0, 0xA9FF),  # Myanmar extended-B
    (0xAA60, 0xAA7F),  # Myanmar extended-A
    (0xF900, 0xFAFF),  # CJK compatibility ideographs (fold to the unified ones)
    (0x1B000, 0x1B16F),  # Kana supplement and extensions
    (0x20000, 0x323AF),  # CJK unified ideographs extensions B to H
)


def _no_space_block(code_point: int) -> bool:
    return any(start <= code_point <= end for start, end in NO_SPACE_BLOCKS)


def kind_of(char: str) -> int:
    """:data:`SEPARATOR`, :data:`WORD` or :data:`NO_SPACE` for one (folded) character."""
    if unicodedata.category(char)[0] not in "LMN":
        return SEPARATOR
    return NO_SPACE if _no_space_block(ord(char)) else WORD


@functools.cache
def fold_table() -> dict[int, str]:
    """Code point -> its folded form, for every code point that folding changes (~18,000)."""
    table = {}
    for code_point in range(MAX_CODE_POINT + 1):
        if 0xD800 <= code_point <= 0xDFFF:  # surrogates: never in decoded UTF-8
            continue
        char = chr(code_point)
        folded = unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", char).casefold())
        if folded != char:
            table[code_point] = folded
    return table


@functools.cache
def class_runs() -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The kinds of all code points as runs: (first code point of each run, its kind)."""
    starts, kinds = [], []
    for code_point in range(MAX_CODE_POINT + 1):
        kind = kind_of(chr(code_point))
        if not kinds or kind != kinds[-1]:
            starts.append(code_point)
            kinds.append(kind)
    return tuple(starts), tuple(kinds)


def _char_class(kind: int, *, below: int = MAX_CODE_POINT + 1) -> str:
    """A regular-expression character class of every code point of one kind under ``below``."""
    starts, kinds = class_runs()
    ends = [*starts[1:], MAX_CODE_POINT + 1]
    parts = [
        f"{re.escape(chr(start))}-{re.escape(chr(min(end, below) - 1))}"
        for start, end, run_kind in zip(starts, ends, kinds, strict=True)
        if run_kind == kind and start < below
    ]
    return "[" + "".join(parts) + "]"


# Python's re tests a class that reaches past the Basic Multilingual Plane range by range,
# about 20 times slower than a BMP-only class (a bitmap); texts without such characters,
# nearly all, take the BMP pattern, which matches them exactly as the full one would.
_BEYOND_BMP = re.compile("[\U00010000-\U0010ffff]")


@functools.cache
def token_pattern(*, beyond_bmp: bool = True) -> re.Pattern[str]:
    """Runs of word characters (group ``word``) or of no-space characters (``chars``);
    ``beyond_bmp=False``: for texts whose code points are all under U+10000."""
    below = MAX_CODE_POINT + 1 if beyond_bmp else 0x10000
    word, chars = _char_class(WORD, below=below), _char_class(NO_SPACE, below=below)
    return re.compile(f"(?P<word>{word}+)|(?P<chars>{chars}+)")


def fold(text: str) -> str:
    """``text`` with every code point folded (:func:`fold_table`)."""
    return text.translate(fold_table())


def compose(token: str) -> str:
    """The readable (NFC) form of a folded token: ``cafe`` + U+0301 -> ``café``."""
    return token if token.isascii() else unicodedata.normalize("NFC", token)


def folded_tokens(text: str) -> list[str]:
    """The tokens of ``text`` in folded form: words, and no-space runs as characters each
    followed by the bigram it starts (``c1, c1c2, c2, c2c3, c3``)."""
    tokens: list[str] = []
    folded = fold(text)
    pattern = token_pattern(beyond_bmp=bool(_BEYOND_BMP.search(folded)))
    for match in pattern.finditer(folded):
        run = match.group()
        if match.lastgroup == "word":
            tokens.append(run)
            continue
        for i in range(len(run) - 1):
            tokens.append(run[i])
            tokens.append(run[i : i + 2])
        tokens.append(run[-1])
    return tokens


@functools.cache
def script_of(char: str) -> str | None:
    """The script of a letter, from its Unicode name (``CYRILLIC SMALL LETTER A`` ->
    ``Cyrillic``, ``CJK UNIFIED IDEOGRAPH-4E2D`` -> ``Han``); ``None`` for anything but a
    letter. Python's :mod:`unicodedata` has no script property, but a letter's name starts
    with its script wherever it names a letter, syllable, ideograph or character; other
    letters (``MICRO SIGN``) are ``Other``."""
    if not unicodedata.category(char).startswith("L"):
        return None
    name = unicodedata.name(char, "")
    if not _SCRIPT_NAMED.search(name):
        return "Other"
    first = name.split()[0].split("-")[0]
    return {"CJK": "Han"}.get(first, first.capitalize())


_SCRIPT_NAMED = re.compile(r"\b(LETTER|SYLLABLE|IDEOGRAPH|CHARACTER)\b")


def export_tables(path: str) -> None:
    """Write the fold table and the class runs as JSON, for a tokenizer in another language
    (``clients/node/unicode-tables.json``): ``python -m maas.unicode_text PATH``."""
    import json

    starts, kinds = class_runs()
    tables = {
        "unicode_version": UNICODE_VERSION,
        "fold": {str(code_point): folded for code_point, folded in fold_table().items()},
        "run_starts": list(starts),
        "run_kinds": list(kinds),
        "kinds": {"separator": SEPARATOR, "word": WORD, "no_space": NO_SPACE},
    }
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(tables, handle, ensure_ascii=False, separators=(",", ":"))


if __name__ == "__main__":
    import sys

    export_tables(sys.argv[1])

"""Redaction of the texts in the traffic log: e-mail addresses, phone numbers, IP addresses
(v4 and v6), URLs and long digit runs (card and account numbers) become ``[EMAIL]``,
``[PHONE]``, ``[IP]``, ``[URL]`` and ``[NUMBER]`` before anything is written.

Each kind is one pass of a compiled pattern, in the order of :data:`KINDS` (a URL that
holds an e-mail address is masked whole as a URL), run only when a cheap test of the text
says it may match: an ``@`` for e-mail, ``://`` or ``www.`` for URLs, a few digits for phone
numbers, digit runs and IPv4, a ``::`` or seven colons for IPv6. Python's ``re`` walks every
position of a pattern without a literal start at ~30 ns a character, so the tests halve the
cost on real posts. Digits are Unicode digits (``\\d`` matches full-width and Arabic-Indic
digits too), and the separators of phone numbers include the dashes and parentheses of other
scripts, so a Japanese ``０３－１２３４－５６７８`` is masked like ``03-1234-5678``.

Why not a library: scrubadub (the maintained choice that works offline) took 0.5 to 3.5 ms
a post of 650 characters here (half a core to several at the server's 1,000 requests per
second), against about 20 us for these patterns, and on the test fixture it missed phone
numbers, card numbers written in groups and, by design, IP addresses; Presidio needs a spaCy
model downloaded (``benchmarks/payload_log.py`` measures both).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

KINDS = ("url", "email", "ip", "phone", "number")  # the order the pattern tries them
MASKS = {kind: f"[{kind.upper()}]" for kind in KINDS}
DEFAULT = "default"  # every kind
NONE = "none"

_DASH = "\\-\u2010\u2011\u2012\u2013\u2014\u2212\uff0d\u30fc"  # ASCII, Unicode, full-width
_SEP = f"[ .{_DASH}\u3000]"  # one separator between groups of digits
_OPEN, _CLOSE = "[(\uff08]", "[)\uff09]"
_HEX4 = "[0-9A-Fa-f]{1,4}"
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}"
# Not glued to a Latin letter or digit; texts in scripts without spaces (Japanese) put a
# number right after a word character, so \w would not do.
_BEFORE, _AFTER = r"(?<![A-Za-z\d])", r"(?![A-Za-z\d])"

PATTERNS = {
    # A scheme and everything up to white space, or a bare www. host.
    "url": r"\b[A-Za-z][A-Za-z0-9+.\-]{1,15}://\S+|\bwww\.[^\s/]+\.\S+",
    "email": r"[\w.%+\-]+[@\uff20][\w\-]+(?:\.[\w\-]+)+",
    # IPv4; IPv6 candidates (two colons at least) are checked by ipaddress in _mask.
    "ip4": rf"(?<![A-Za-z\d.]){_IPV4}(?![A-Za-z\d]|\.\d)",
    "ip6": (
        rf"(?<![\w:])(?:{_HEX4})?(?::(?:{_HEX4})?){{2,7}}(?:(?<=:){_IPV4})?(?:%\w+)?"
        r"(?![\w:]|\.\d)"
    ),
    # Groups of digits with separators, an optional +country or 00 prefix and an area code
    # in parentheses; 7 to 15 digits (counted in _mask).
    "phone": (
        rf"(?<![A-Za-z\d+\uff0b])(?:[+\uff0b]\d{{1,3}}{_SEP}?|00\d{{1,3}}{_SEP})?"
        rf"(?:{_OPEN}\d{{1,5}}{_CLOSE}{_SEP}?)?\d{{1,5}}(?:{_SEP}\d{{1,5}}){{1,6}}{_AFTER}"
    ),
    # A run of 9 digits at least, perhaps cut into groups by single spaces or dashes.
    "number": rf"{_BEFORE}\d(?:[ {_DASH}]?\d){{8,}}{_AFTER}",
}
# What the digit pass looks at: runs of digits and separators that start with a digit, a
# plus or a parenthesis. A pattern that starts with a character class lets ``re`` skip the
# other characters fast; the detailed patterns run on these runs only (and the character
# either side of each, which their look-arounds read).
# 7 characters at least, ending in a digit: the shortest IPv4 address, 1.2.3.4.
_CANDIDATE = re.compile(rf"[\d+\uff0b(\uff08][\d .()\uff08\uff09\u3000{_DASH}]{{5,}}\d")
MIN_PHONE_DIGITS, MAX_PHONE_DIGITS = 7, 15  # E.164 numbers have 15 digits at most
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
# E-mail: found from its "@" and domain (a pattern with a literal start is fast), the local
# part then read backwards (a pattern starting with \w would be tried at every character).
_AT_DOMAIN = re.compile(r"[@\uff20][\w\-]+(?:\.[\w\-]+)+")
_LOCAL_PUNCTUATION = frozenset("._%+-")


def _may_hold(kind: str, text: str) -> bool:
    """A cheap test (string searches in C): can a pass for ``kind`` match in ``text``?"""
    if kind == "url":
        return "://" in text or "www." in text
    if kind == "email":
        return "@" in text or "\uff20" in text
    if kind == "ip6":
        return "::" in text or text.count(":") >= 7
    return True  # the digit pass: its scan for candidates is its own test


def parse_kinds(spec: str) -> tuple[str, ...]:
    """The kinds a ``--payload-redact`` value names: ``default`` (all), ``none``, or a
    comma-separated list of :data:`KINDS`. ``ValueError`` names an unknown kind."""
    spec = spec.strip().lower()
    if spec == DEFAULT:
        return KINDS
    if spec == NONE:
        return ()
    kinds = [kind.strip() for kind in spec.split(",") if kind.strip()]
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown or not kinds:
        raise ValueError(
            f"--payload-redact {spec!r}: expected {DEFAULT!r}, {NONE!r} or a comma-separated "
            f"list of {', '.join(KINDS)}"
        )
    return tuple(kind for kind in KINDS if kind in kinds)


def _email_pass(text: str) -> str:
    pieces, done = [], 0
    for match in _AT_DOMAIN.finditer(text):
        start = match.start()
        while start > done and (text[start - 1].isalnum() or text[start - 1] in _LOCAL_PUNCTUATION
                                or text[start - 1] == "_"):  # fmt: skip
            start -= 1
        if start < match.start():  # a local part: an address
            pieces += [text[done:start], MASKS["email"]]
            done = match.end()
    return "".join([*pieces, text[done:]]) if pieces else text


class Redactor:
    """Masks the chosen kinds of personal data in a text (all of :data:`KINDS` by default)."""

    def __init__(self, kinds: Iterable[str] = KINDS) -> None:
        chosen = set(kinds)
        self.kinds = tuple(kind for kind in KINDS if kind in chosen)
        # IPv4 addresses, phone numbers and digit runs share one pass (a card number in
        # groups of four looks like a long phone number: _mask tells them apart).
        alone = [kind for kind in self.kinds if kind in ("url", "email")]
        passes: list[tuple[str, ...]] = [(kind,) for kind in alone]
        if "ip" in chosen:
            passes.append(("ip6",))
        digits = ("ip4",) if "ip" in chosen else ()
        digits += tuple(kind for kind in self.kinds if kind in ("phone", "number"))
        if digits:
            passes.append(digits)
        self._passes = [
            (group, re.compile("|".join(f"(?P<{kind}>{PATTERNS[kind]})" for kind in group)))
            for group in passes
        ]

    def __call__(self, text: str) -> str:
        """``text`` with every match masked (unchanged when nothing is chosen)."""
        for group, pattern in self._passes:
            if not _may_hold(group[0], text):
                continue
            if group[0] == "email":
                text = _email_pass(text)
            elif group[0] in ("ip4", "phone", "number"):
                text = self._digit_pass(pattern, text)
            else:
                text = pattern.sub(self._mask, text)
        return text

    def _digit_pass(self, pattern: re.Pattern[str], text: str) -> str:
        pieces, done = [], 0
        for candidate in _CANDIDATE.finditer(text):
            start, end = max(candidate.start() - 1, done), candidate.end() + 1
            pieces += [text[done:start], pattern.sub(self._mask, text[start:end])]
            done = min(end, len(text))
        return "".join([*pieces, text[done:]]) if pieces else text

    def _mask(self, match: re.Match[str]) -> str:
        kind = match.lastgroup or ""
        found = match.group()
        if kind in ("ip4", "ip6"):
            kind = "ip"
        if match.lastgroup == "ip6" and "." not in found:
            try:  # a valid IPv6 address only: "a:b:c" or "12:30:45" stay as written
                ipaddress.IPv6Address(found.split("%")[0])
            except ValueError:
                return found
        elif kind == "phone":
            digits = sum(char.isdigit() for char in found)
            if digits < MIN_PHONE_DIGITS or _ISO_DATE.fullmatch(found):
                return found
            if digits > MAX_PHONE_DIGITS:  # a card number written in groups
                return MASKS["number"] if "number" in self.kinds else found
        return MASKS[kind]

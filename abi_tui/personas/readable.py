"""What the router reads: a message with the disguises that hide words from it taken off.

A person who wants a refused answer can hide its words from a word-and-embedding router
without hiding them from a reader: a zero-width space inside "bomb", a Cyrillic "о" for the
Latin "o", fullwidth or mathematical letters, combining marks stacked on every letter, digits
for letters ("m3th"), or a word spelled out letter by letter ("b o m b"). Two views undo that:

- `plain(text)`: the message as a reader sees it. Compatibility forms folded (NFKC: fullwidth,
  mathematical and circled letters, ligatures), invisible format characters dropped, combining
  marks stacked on Latin letters dropped, and Cyrillic and Greek look-alikes folded to Latin
  inside words that mix them with Latin letters. Ordinary text (ASCII, accented letters, emoji, other
  scripts) comes back unchanged, so routing reads every message through it.
- `decoded(text)`: the plain view with digits and symbols inside words read as letters and
  spelled-out letters joined. This reading is wrong for ordinary technical words ("k8s",
  "sha256"), so the router only asks it whether the message is a violation, and only when it
  differs from the plain view.
"""

from __future__ import annotations

import re
import unicodedata

# Look-alikes of Latin letters (lower case; the text is read case-insensitively).
_CONFUSABLES = str.maketrans({
    # Cyrillic
    "а": "a", "в": "b", "е": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c",
    "т": "t", "у": "y", "х": "x", "і": "i", "ј": "j", "ѕ": "s", "ԁ": "d", "ӏ": "l", "һ": "h",
    "ԛ": "q", "ԝ": "w", "ү": "y", "ё": "e", "ї": "i",
    # Greek
    "α": "a", "β": "b", "ε": "e", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t",
    "υ": "u", "χ": "x", "ζ": "z", "η": "n", "μ": "u",
})
_LOOKALIKE = frozenset(chr(c) for c in _CONFUSABLES)
_WORD = re.compile(r"\w+")
_ZWJ, _VS16 = "\u200d", "\ufe0f"
# A word with the combining marks on its letters (\w stops at a mark).
_MARKED_WORD = re.compile(r"(?:\w|[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f])+")

# Digits and symbols read as the letters they stand for, in a word where they stand between
# letters ("m3th", "b00m", "h@ck", "k!ll"); "3am", "ext4" and "80MB" are left alone.
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b",
                       "@": "a", "$": "s", "!": "i", "|": "l"})
_LEET_WORD = re.compile(r"[a-z0-9]+(?:[@$!|]+[a-z0-9]+)*", re.IGNORECASE)
_LEET_INSIDE = re.compile(r"[a-z][0134578@$!|]+[a-z]", re.IGNORECASE)
# Three or more single letters with the same separator between each: "b o m b", "b.o.m.b".
_SPELLED = re.compile(r"(?<!\w)[a-z]([ .\-_*])[a-z](?:\1[a-z])+(?!\w)", re.IGNORECASE)


def plain(text: str) -> str:
    """The message as a reader sees it; ordinary text comes back unchanged."""
    if text.isascii():
        return text
    text = _drop_invisible(unicodedata.normalize("NFKC", text))
    text = _MARKED_WORD.sub(_unstack, text)
    latin = sum(c.isascii() for c in text if c.isalpha())
    other = sum(not c.isascii() and c not in _LOOKALIKE for c in text if c.isalpha())
    mostly_latin = latin > other
    return _WORD.sub(lambda m: _fold_word(m.group(0), mostly_latin), text)


def decoded(text: str) -> str:
    """The plain view with leetspeak read as letters and spelled-out words joined."""
    text = _SPELLED.sub(lambda m: re.sub(r"[ .\-_*]", "", m.group(0)), plain(text))
    return _LEET_WORD.sub(_unleet, text)


def _drop_invisible(text: str) -> str:
    """Format characters (zero-width spaces and joiners, soft hyphens, direction overrides)
    show nothing, so they can sit inside a word unseen. A joiner inside an emoji sequence (a
    family, a profession) is kept."""
    out: list[str] = []
    for c in text:
        if unicodedata.category(c) == "Cf":
            if not (c == _ZWJ and out and (unicodedata.category(out[-1]) == "So" or out[-1] == _VS16)):
                continue
        out.append(c)
    return "".join(out)


def _unstack(match: re.Match[str]) -> str:
    """A word of Latin letters under marks that a reader looks through ("Zalgo" text): two or
    more on one letter, marks on more than half the letters of a word of four or more, or a
    mark left on a plain letter once NFKC has composed the ordinary accented ones. Its marks are
    dropped; "café", "naïve" and "résumé" keep theirs (a Vietnamese letter with two marks,
    "ễ", reads as "e"). Words of other scripts, whose marks are their vowels, are left alone."""
    word = match.group(0)
    parts = unicodedata.normalize("NFD", word)
    if not all(c.isascii() or unicodedata.combining(c) or c in _LOOKALIKE for c in parts):
        return word
    marks: list[int] = []
    for c in parts:
        if unicodedata.combining(c):
            if marks:
                marks[-1] += 1
        else:
            marks.append(0)
    marked = sum(m > 0 for m in marks)
    leftover = any(unicodedata.combining(c) and i and word[i - 1].isascii()
                   for i, c in enumerate(word))
    if not (max(marks, default=0) >= 2 or len(marks) >= 4 and marked * 2 > len(marks) or leftover):
        return word
    return unicodedata.normalize("NFC", "".join(c for c in parts if not unicodedata.combining(c)))


def _fold_word(word: str, mostly_latin: bool) -> str:
    """A word spelled with look-alikes: mixed with Latin letters, or made of nothing but
    look-alikes in a message written in Latin letters. A word with a letter of another script
    that has no Latin twin ("Напиши") is that script's word and stays as it is."""
    lowered = word.lower()
    if not any(c in _LOOKALIKE for c in lowered):
        return word
    if any(c.isalpha() and not c.isascii() and c not in _LOOKALIKE for c in lowered):
        return word
    if not mostly_latin and not any(c.isascii() and c.isalpha() for c in word):
        return word
    return lowered.translate(_CONFUSABLES)


def _unleet(match: re.Match[str]) -> str:
    word = match.group(0)
    if not _LEET_INSIDE.search(word):
        return word
    read = word.translate(_LEET)
    return read if read.isalpha() else word  # "sha256" keeps a digit with no letter twin

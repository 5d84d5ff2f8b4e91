"""One normal form for the words read from pictures and the words people search for.

Pictures' text and queries go through the same steps, so a phrase typed in Discord compares equal
to the same phrase read by OCR: Unicode NFKC (full-width letters, ligatures and compatibility
forms become plain ones), case folding (``ß`` folds to ``ss``, ``Σ`` and ``ς`` to ``σ``), the
typographic quotes, apostrophes and dashes that phones and OCR put in folded to their ASCII
forms (so a query's ``"…"`` and ``-word`` survive for the parser), invisible format characters
dropped, and whitespace collapsed. Chinese and Japanese are written without spaces between words,
and OCR puts spaces between characters where it sees gaps: whitespace between two such characters
is dropped, on both sides of the comparison.

Pure functions of the standard library; safe anywhere, cheap enough for every query.
"""

from __future__ import annotations

import re
import unicodedata

# Typographic forms people and OCR produce for the characters the query syntax gives a meaning
# to. NFKC leaves these alone (they are not compatibility characters).
_FOLD = str.maketrans(
    {
        "\u2018": "'",  # left single quotation mark
        "\u2019": "'",  # right single quotation mark (the usual apostrophe on phones)
        "\u201a": "'",
        "\u201b": "'",
        "\u2032": "'",  # prime
        "\u00b4": "'",  # acute accent, typed as an apostrophe
        "\u0060": "'",  # grave accent
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u201f": '"',
        "\u2033": '"',
        "\u00ab": '"',
        "\u00bb": '"',
        "\u300c": '"',  # CJK corner brackets, the quotation marks of Chinese and Japanese
        "\u300d": '"',
        "\u300e": '"',
        "\u300f": '"',
        "\u2010": "-",  # hyphen
        "\u2011": "-",  # non-breaking hyphen
        "\u2012": "-",  # figure dash
        "\u2013": "-",  # en dash
        "\u2014": "-",  # em dash
        "\u2015": "-",
        "\u2212": "-",  # minus sign
    }
)
# Scripts written without spaces between words: Han (with its extensions and compatibility
# ideographs), the two kana, the CJK symbols and punctuation block. Hangul is written with spaces.
_UNSPACED = (
    "\u2e80-\u2fdf\u3000-\u303f\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
    "\uf900-\ufaff\uff65-\uff9f\U00020000-\U0003134f"
)
_SPACE_IN_UNSPACED = re.compile(f"(?<=[{_UNSPACED}]) (?=[{_UNSPACED}])")


def _visible(ch: str) -> str:
    category = unicodedata.category(ch)
    if category == "Cf":  # zero-width space and joiner, soft hyphen, bidi marks: not text
        return ""
    if category[0] in "CZ":  # controls, separators (tabs, line and paragraph breaks)
        return " "
    return ch


def normalise(text: str) -> str:
    """The normal form of one line of text or of a query: NFKC, case-folded, whitespace collapsed.

    Idempotent: ``normalise(normalise(t)) == normalise(t)``.
    """
    # NFKC before folding (so compatibility forms fold) and after (folding can un-normalise:
    # Unicode's NFKC_Casefold is defined this way).
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    folded = folded.translate(_FOLD)
    visible = "".join(_visible(ch) if not ch.isalnum() else ch for ch in folded)
    collapsed = " ".join(visible.split())
    return _SPACE_IN_UNSPACED.sub("", collapsed)


def normalise_query(query: str) -> str:
    """A query in the form picture text is stored in, so ``in`` compares like for like.

    The same steps as `normalise`: kept as its own name so the search side says what it means and
    both sides cannot drift apart. Quotes and a leading ``-`` are kept for the query parser.
    """
    return normalise(query)


def compact(text: str) -> str:
    """Letters and digits only, of the normal form: what still matches when OCR lost a space or
    read a speck as punctuation (``winterjelly``, ``coffee.violin``). A looser second tier for
    search, never the form shown to people."""
    return "".join(ch for ch in normalise(text) if ch.isalnum())

"""The one token normaliser: what a searchable word is, shared by the indexer and the query.

A token is a run of letters and digits, case-folded, with accents removed (Unicode NFKD,
combining marks dropped, then NFC so Hangul syllables come back whole). Han, Hiragana and
Katakana are written without spaces, so each such character is a token of its own; a query
word in those scripts becomes a phrase of its characters, matched in order. Both sides of a
search go through these functions, so a query word matches exactly what indexing produced.
"""

from __future__ import annotations

import re
import unicodedata

# Longer runs (base64 left in a body, hashes) are cut here, on both sides, so one garbage word
# cannot bloat an index key; a query for the long word still matches its first 64 characters.
MAX_TOKEN_LENGTH = 64
# Subjects with more distinct trigrams than this store only LONG_SUBJECT, which every subject
# search also matches (then filtered by the exact substring), so nothing is ever missed.
TRIGRAM_LIMIT = 1000
LONG_SUBJECT = ""
_CJK = "\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_TOKEN = re.compile(f"[{_CJK}]|[^\\W_{_CJK}]+")


def fold(text: str) -> str:
    """Lower-case and strip accents: 'Résumé' and 'RESUME' both become 'resume'."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    bare = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return unicodedata.normalize("NFC", bare)


def words(text: str) -> list[str]:
    """The tokens of a text in order, repeats kept (phrases are matched on this sequence)."""
    return [token[:MAX_TOKEN_LENGTH] for token in _TOKEN.findall(fold(text))]


def message_id_token(value: str) -> str:
    """The one token a Message-ID is indexed under: exact, without its angle brackets. The
    prefix keeps it apart from words (which never contain ':'), so free words never match it."""
    return "mid:" + value.strip().strip("<>").strip().lower()[:MAX_TOKEN_LENGTH * 4]


def trigrams(text: str) -> list[str]:
    """Distinct 3-character substrings: lets a substring search on subjects use an index."""
    return sorted({text[i:i + 3] for i in range(len(text) - 2)})


def subject_index_terms(subject_lower: str) -> list[str]:
    grams = trigrams(subject_lower)
    return grams if len(grams) <= TRIGRAM_LIMIT else [LONG_SUBJECT]

"""Tokenising strings that differ from the previous one only near their end, in time for the new end.

Live moderation tokenises one guard prompt per cut, `render(conversation, response[:c])`, and each
shares all but its last characters with the one before. Tokenising a whole prompt costs time in
proportion to its length (on the real Llama 3 tokenizer 1.6 ms for a 1,200-token prompt, nearly all of
it the pre-tokenizer's regex), so a per-cut tokenisation grows along the response. Here a string S that
shares its first L characters with the previous string X is tokenised from an anchor near L instead:

    ids(S) = ids(X)[:j] + tokenize(S[a:])        a = the end of X's token j - 1, well before L

Why this is exact. The tokenizers of real guards split text into pieces before BPE (Llama 3's and
GPT-2's regexes, Metaspace) and never merge across a piece boundary; where a boundary falls depends on
the run of characters it ends and the character after it. A boundary of X with `margin` unchanged
characters after it is therefore a boundary of S too, the tokens before it are S's tokens, and the
rest of S is tokenised afresh. Two checks stand guard over that argument. The window starts `overlap`
tokens before the anchor's margin and those tokens must come out exactly as in X (ids and offsets): a
piece that runs across the anchor (a long run of letters, digits or spaces, a prefix-space rule at the
window's start) changes them. And a tokenizer without a splitting pre-tokenizer (BPE over the whole text,
where a merge can reach back any distance) or without offsets is always tokenised whole. A failed
check falls back to one whole tokenisation (counted in `fallbacks`); the result is then exact by
definition. tests/test_incremental_tokens.py holds hypothesis tests against whole tokenisation on the
real Llama 3 tokenizer and on the test tokenizers, with the runs and splits that break naive schemes.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

from scorer_server.engine.plan import common_prefix

MARGIN_CHARS = 32
"""Unchanged characters a reused token must end before the point where two strings part."""
OVERLAP_TOKENS = 4
"""Tokens re-tokenised before the anchor and checked against the previous tokenisation."""


@dataclass(frozen=True)
class Tokenized:
    """A string's token ids and, per token, the character offset where it ends."""

    text: str
    ids: list[int]
    ends: list[int]


def splits_into_pieces(tokenizer: Any) -> bool:
    """Whether `tokenizer` is a fast tokenizer whose pre-tokenizer splits text into pieces before BPE
    (a precondition of incremental tokenisation; BPE over the whole text is not local)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    pre = getattr(backend, "pre_tokenizer", None)
    if pre is None or not getattr(tokenizer, "is_fast", False):
        return False
    try:
        return len(pre.pre_tokenize_str("ab cd ef")) >= 3
    except Exception:  # a pre-tokenizer that cannot run alone: take the safe path
        return False


class IncrementalTokenizer:
    """Tokenises each string like `tokenizer(text, add_special_tokens=False)`, re-tokenising only what
    follows the characters it shares with the previous string (see the module docstring)."""

    def __init__(self, tokenizer: Any, margin: int = MARGIN_CHARS, overlap: int = OVERLAP_TOKENS) -> None:
        self._tokenizer = tokenizer
        self.margin = margin
        self.overlap = overlap
        self.incremental = splits_into_pieces(tokenizer)
        """False: every string is tokenised whole (no splitting pre-tokenizer, or no offsets)."""
        self._last: Tokenized | None = None
        self.whole = 0
        """Strings tokenised whole (the first, those with too little in common, fallbacks)."""
        self.partial = 0
        """Strings tokenised from an anchor."""
        self.fallbacks = 0
        """Windows whose overlap came out different, tokenised whole instead."""
        self.chars = 0
        """Characters tokenised in all."""

    def encode(self, text: str) -> Tokenized:
        """`text`'s token ids (and token ends), exactly as a whole tokenisation gives them."""
        last = self._last
        out = self._window(last, text) if last is not None and self.incremental else None
        if out is None:
            out = self._whole(text)
        self._last = out
        return out

    def reusable(self, enc: Tokenized, shared_chars: int) -> int:
        """How many leading tokens of `enc` the next `encode` keeps when the next string shares its
        first `shared_chars` characters with `enc.text` (0 where every string is tokenised whole)."""
        if not self.incremental:
            return 0
        keep = max(0, bisect.bisect_right(enc.ends, shared_chars - self.margin) - self.overlap)
        while 0 < keep < len(enc.ends) and enc.ends[keep] <= enc.ends[keep - 1]:
            keep -= 1  # token keep - 1 ends inside a character (byte-level pieces of one character)
        return keep

    def _whole(self, text: str) -> Tokenized:
        self.whole += 1
        self.chars += len(text)
        return self._tokenize(text, 0)

    def _tokenize(self, text: str, shift: int) -> Tokenized:
        if not self.incremental:
            ids = self._tokenizer(text, add_special_tokens=False)["input_ids"]
            return Tokenized(text, list(ids), [])
        enc = self._tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return Tokenized(text, list(enc["input_ids"]), [e + shift for _, e in enc["offset_mapping"]])

    def _window(self, last: Tokenized, text: str) -> Tokenized | None:
        """`text` tokenised from an anchor in what it shares with `last`; None: tokenise it whole."""
        keep = self.reusable(last, common_prefix(last.text, text))
        if keep < 1:
            return None
        check = min(self.overlap, len(last.ids) - keep)
        start = last.ends[keep - 1]
        window = self._tokenize(text[start:], start)
        self.chars += len(text) - start
        if (
            window.ids[:check] != last.ids[keep : keep + check]
            or window.ends[:check] != last.ends[keep : keep + check]
        ):
            self.fallbacks += 1
            return None
        self.partial += 1
        return Tokenized(text, last.ids[:keep] + window.ids, last.ends[:keep] + window.ends)

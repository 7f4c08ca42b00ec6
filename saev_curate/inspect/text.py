"""Token ids as text a person reads, for any tokenizer (sub-word pieces or whole words)."""

from __future__ import annotations

__all__ = ["token_strings", "token_text"]


def token_text(t: str) -> str:
    """A token piece as shown: sub-word markers made spaces, newlines a visible mark."""
    return t.replace("Ġ", " ").replace("▁", " ").replace("Ċ", "⏎").replace("\n", "⏎")


#: id(tokenizer) -> whether its pieces are whole words without spacing marks
_WORD_LEVEL: dict[int, bool] = {}


def token_strings(tok, ids: list[int]) -> list[str]:
    """Display strings of token ids: a sub-word tokenizer's pieces as they are (their markers made spaces), a
    word-level tokenizer's words each followed by a space (its pieces carry no spacing of their own)."""
    pieces = tok.convert_ids_to_tokens(ids)
    if id(tok) not in _WORD_LEVEL:
        words = tok.convert_ids_to_tokens(tok("one two", add_special_tokens=False)["input_ids"])
        _WORD_LEVEL[id(tok)] = len(words) == 2 and not any(w[:1] in ("Ġ", "▁", " ") for w in words)
    if _WORD_LEVEL[id(tok)]:
        return [p if p.startswith("<") else p + " " for p in pieces]
    return [token_text(p) for p in pieces]

"""Known defects planted in copies of a user's own rows, so that every method can be measured on the user's model
and data (``saev-curate check``): one table of kinds, each with the data shapes it applies to, what it does, and a
function ``plant(row, i, pool, rng, ctx) -> planted row | None`` (None: this row cannot take this kind).

Rows are canonical here (:func:`canonical_rows`): ``prompt`` (a string or chat messages), ``images`` (a list),
and ``chosen`` / ``rejected`` (preference) or ``completion`` (SFT), as TRL names them.

The fact words (numbers, colours, object words) are English lists plus digits; the model's own tokenizer keeps a
replacement only when it is as many tokens as the word it replaces (the length of an answer never gives the swap
away) and holds no unknown token (a closed vocabulary would read it as noise, not as another fact). Data in another
language: pass ``fact_words={"colour": [...], ...}`` with words of that language.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from saev_curate.core.errors import InputError

__all__ = ["FACT_WORDS", "IMAGE_FREE_QUESTIONS", "KINDS", "Kind", "canonical_rows", "kinds_for", "plant_rows"]

_NUMBERS = ("zero one two three four five six seven eight nine ten eleven twelve "
            "0 1 2 3 4 5 6 7 8 9 10 11 12").split()
#: fact-bearing words by class: a word is replaced by another of its class
FACT_WORDS: dict[str, tuple[str, ...]] = {
    "number": tuple(_NUMBERS),
    "colour": tuple("red green blue yellow black white orange purple pink brown gray grey".split()),
    "object": tuple(("person man woman child boy girl dog cat horse bird cow sheep car bus truck train bicycle "
                     "motorcycle airplane boat chair table bed sofa couch tree flower house building street road "
                     "cup bottle plate pizza cake apple banana sandwich ball kite umbrella bag book clock phone "
                     "laptop television window door circle square triangle star").split()),
    "position": tuple("left right top bottom above below front behind".split()),
    "size": tuple("small large big tiny huge".split()),
}
#: questions no image can answer (the "off-topic prompt" kind)
IMAGE_FREE_QUESTIONS = ("What is the capital of France?", "Write a short poem about the sea.",
                        "How many days are there in a leap year?", "Translate 'good morning' into Spanish.",
                        "What is 17 times 3?", "Name three programming languages.",
                        "Who wrote Romeo and Juliet?", "Give me a recipe for pancakes.")


@dataclass(frozen=True)
class Kind:
    """A planted defect: where it applies, what it does to a row, and how it is made."""

    name: str
    shapes: frozenset[str]
    description: str
    plant: Callable[..., dict | None]


# ------------------------------------------------------------------------------------------------ row access

def _image(row: dict):
    return row["images"][0] if row.get("images") else None


def _with(row: dict, **changes: Any) -> dict:
    out = dict(row)
    out.update(changes)
    return out


def _text(x) -> str:
    """The text of a string or of chat messages (their text parts)."""
    if isinstance(x, str):
        return x
    parts = []
    for msg in x or []:
        content = msg.get("content") if isinstance(msg, dict) else msg
        if isinstance(content, str):
            parts.append(content)
        else:
            parts += [p.get("text") or "" for p in content or [] if isinstance(p, dict) and p.get("type") == "text"]
    return " ".join(parts)


def _replace_text(x, new: str):
    """``x`` (a string, or messages) with its text replaced by ``new`` (in messages: the last text part of the last
    user turn; the image parts stay where they are)."""
    if isinstance(x, str):
        return new
    msgs = [dict(m) for m in x]
    for m in reversed(msgs):
        if m.get("role") != "user":
            continue
        if isinstance(m.get("content"), str):
            m["content"] = new
            return msgs
        content = [dict(p) for p in m.get("content") or []]
        texts = [i for i, p in enumerate(content) if p.get("type") == "text"]
        if texts:
            content[texts[-1]]["text"] = new
            for i in texts[:-1]:
                content[i]["text"] = ""
        else:
            content.append({"type": "text", "text": new})
        m["content"] = content
        return msgs
    return msgs


def _response_key(row: dict) -> str:
    return "chosen" if "chosen" in row else "completion"


# ------------------------------------------------------------------------------------------------ the kinds

def _other(i: int, pool: list[dict], rng: np.random.Generator) -> dict | None:
    if len(pool) < 2:
        return None
    j = int(rng.integers(len(pool) - 1))
    return pool[j + (j >= i)]


def _image_mismatch(row, i, pool, rng, ctx):
    other = _other(i, pool, rng)
    return None if other is None or _image(other) is None else _with(row, images=[_image(other)])


def _corrupted_image(row, i, pool, rng, ctx):
    from PIL import Image, ImageFilter

    img = _image(row)
    if img is None:
        return None
    img = img.convert("RGB")
    w, h = img.size
    coarse = img.resize((max(1, w // 16), max(1, h // 16))).resize((w, h)).filter(ImageFilter.GaussianBlur(2))
    noise = rng.normal(0, 64, (h, w, 3))
    out = np.clip(np.asarray(coarse, dtype=np.float64) * 0.5 + 64 + noise, 0, 255).astype(np.uint8)
    return _with(row, images=[Image.fromarray(out)])


def _prompt_swap(row, i, pool, rng, ctx):
    other = _other(i, pool, rng)
    if other is None or _text(other["prompt"]).strip() == _text(row["prompt"]).strip():
        return None
    return _with(row, prompt=_replace_text(row["prompt"], _text(other["prompt"])))


def _image_free_question(row, i, pool, rng, ctx):
    question = IMAGE_FREE_QUESTIONS[int(rng.integers(len(IMAGE_FREE_QUESTIONS)))]
    return _with(row, prompt=_replace_text(row["prompt"], question))


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


def _response_swap(row, i, pool, rng, ctx):
    """The response of the row whose prompt is most like this one's (word overlap), from another image."""
    key = _response_key(row)
    mine = _words(_text(row["prompt"]))
    best, best_sim = None, -1.0
    for j, other in enumerate(pool):
        if j == i or _text(other[key]).strip() == _text(row[key]).strip():
            continue
        theirs = _words(_text(other["prompt"]))
        sim = len(mine & theirs) / max(1, len(mine | theirs)) + float(rng.random()) * 1e-6  # ties: seeded
        if sim > best_sim:
            best, best_sim = other, sim
    return None if best is None else _with(row, **{key: best[key]})


def _chosen_rejected_swap(row, i, pool, rng, ctx):
    if _text(row["chosen"]).strip() == _text(row["rejected"]).strip():
        return None
    return _with(row, chosen=row["rejected"], rejected=row["chosen"])


def _token_count(tokenizer, word: str) -> int | None:
    """How many tokens ``word`` is after a space under ``tokenizer`` (None: it has a word the tokenizer does not
    know, so the replacement would read as an unknown token, not as another fact)."""
    if tokenizer is None:
        return 1
    ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
    unk = getattr(tokenizer, "unk_token_id", None)
    return None if unk is not None and unk in ids else len(ids)


def _fact_word_replaced(row, i, pool, rng, ctx):
    """One fact-bearing word of the response replaced by another of its class (as many tokens long)."""
    key = _response_key(row)
    text = _text(row[key])
    words = ctx.get("fact_words", FACT_WORDS)
    tok = ctx.get("tokenizer")
    spans = [(m.start(), m.end(), m.group(0), cls) for m in re.finditer(r"\w+", text)
             for cls, vocab in words.items() if m.group(0).lower() in vocab]
    rng.shuffle(spans)
    for start, end, word, cls in spans:
        n = _token_count(tok, word.lower())
        options = [w for w in words[cls] if w != word.lower() and n is not None and _token_count(tok, w) == n
                   and not (w.isdigit() != word.isdigit())]
        if not options:
            continue
        new = options[int(rng.integers(len(options)))]
        new = new.capitalize() if word[:1].isupper() else new
        planted = _with(row, **{key: _replace_text_response(row[key], text[:start] + new + text[end:])})
        planted["_planted_word"] = f"{word} -> {new}"
        return planted
    return None


def _replace_text_response(x, new: str):
    """A response (a string, or assistant messages) with its text replaced."""
    if isinstance(x, str):
        return new
    msgs = [dict(m) for m in x]
    m = msgs[-1]
    m["content"] = new if isinstance(m.get("content"), str) else [{"type": "text", "text": new}]
    return msgs


_PROMPT_SHAPES = frozenset({"prompt_only", "sft", "preference"})
_RESPONSE_SHAPES = frozenset({"sft", "preference"})
#: the kinds, in report order
KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("image_mismatch", _PROMPT_SHAPES, "the image of another sampled row (prompt and answers unchanged)",
         _image_mismatch),
    Kind("corrupted_image", _PROMPT_SHAPES, "the image blurred to a 1/16 grid and covered in strong noise",
         _corrupted_image),
    Kind("prompt_swap", _PROMPT_SHAPES, "another sampled row's prompt with this row's image (and answers)",
         _prompt_swap),
    Kind("image_free_question", _PROMPT_SHAPES, "the prompt replaced by a question no image can answer "
         "(e.g. 'What is the capital of France?'); the answers unchanged", _image_free_question),
    Kind("response_swap", _RESPONSE_SHAPES, "the chosen answer (or completion) of the row with the most similar "
         "prompt: fluent, on topic, but about another image", _response_swap),
    Kind("fact_word_replaced", _RESPONSE_SHAPES, "one number, colour, object, position or size word of the chosen "
         "answer replaced by another of its class (as many tokens long): one hallucinated detail", _fact_word_replaced),
    Kind("chosen_rejected_swap", frozenset({"preference"}), "chosen and rejected swapped (a flipped preference)",
         _chosen_rejected_swap),
)}


def kinds_for(shape: str) -> list[str]:
    """The kinds a data shape can take, in report order."""
    return [k.name for k in KINDS.values() if shape in k.shapes]


def canonical_rows(dataset, shape: str) -> list[dict]:
    """The rows under TRL's names (``prompt``, ``images`` list, ``chosen``/``rejected`` or ``completion``), images
    decoded; a row whose image cannot be read raises :class:`~saev_curate.vlm.rows.images.RowError` from the caller's
    loop (see :func:`saev_curate.curation.check.run_check`)."""
    from saev_curate.vlm.rows import to_trl_preference, to_trl_sft

    if shape == "preference":
        ds = to_trl_preference(dataset)
    elif shape == "sft":
        ds = to_trl_sft(dataset)
    else:
        cols = dataset.column_names
        if "prompt" not in cols and "question" not in cols:
            raise InputError(f"check needs rows with a prompt (or question) and an image; columns: {cols}")
        ds = dataset.rename_column("question", "prompt") if "prompt" not in cols else dataset
    rows = []
    for r in ds:
        row = dict(r)
        if "messages" in row and "prompt" not in row:  # SFT messages: the last assistant turn is the completion
            msgs = list(row.pop("messages"))
            last = max(i for i, m in enumerate(msgs) if m.get("role") == "assistant")
            row["prompt"], row["completion"] = msgs[:last], [msgs[last]]
        if "image" in row and "images" not in row:
            row["images"] = [row.pop("image")] if row["image"] is not None else []
        rows.append(row)
    return rows


def plant_rows(rows: list[dict], shape: str, *, seed: int = 0, tokenizer=None,
               fact_words: dict[str, tuple[str, ...]] | None = None) -> list[tuple[int, str, dict]]:
    """One planted copy per row: ``(source row index, kind, planted row)``, the kinds of ``shape`` dealt round-robin
    over the rows in a seeded order (a row that cannot take its kind takes the next kind that has the fewest copies);
    ``rows`` are canonical (:func:`canonical_rows`) with their images decoded."""
    kinds = kinds_for(shape)
    rng = np.random.default_rng(seed)
    ctx = {"tokenizer": tokenizer, "fact_words": fact_words or FACT_WORDS}
    counts = dict.fromkeys(kinds, 0)
    out = []
    for i in rng.permutation(len(rows)).tolist():
        for kind in sorted(kinds, key=lambda k: (counts[k], kinds.index(k))):
            planted = KINDS[kind].plant(rows[i], i, rows, rng, ctx)
            if planted is not None:
                counts[kind] += 1
                out.append((i, kind, planted))
                break
    return sorted(out)

"""Dataset rows -> chat conversations, for every row format the library accepts.

Accepted rows (no reshaping needed):

* TRL preference: ``prompt``, ``chosen``, ``rejected`` (strings or conversational messages) with
  ``images`` (list) or ``image``.
* TRL SFT: ``messages`` (conversational, ``{"type": "image"}`` parts) with ``images``; or
  ``prompt`` / ``completion``.
* RLAIF-V: ``question``, ``image``, ``chosen``, ``rejected`` (TRL preference under another prompt name).
* Align-Anything text-image-to-text: ``question``, ``image``, ``response_1``, ``response_2``,
  ``overall_response`` (1 or 2: the preferred response).
* Interleaved documents (OBELICS style): ``texts`` and ``images`` lists of equal length, one of
  each pair null; rendered as one user turn.

``mode`` chooses the text the model sees: ``"prompt"`` (image + prompt only, as in the SAE-V paper,
ending with the generation prompt), ``"chosen"`` (prompt + preferred response), ``"rejected"``
(prompt + the other response) or ``"full"`` (the whole conversation; for preference rows the
chosen one).  Interleaved documents have no responses and render the same in every mode.

:data:`ROW_FORMATS` is the one list of formats; :func:`to_trl_preference` / :func:`to_trl_sft` give TRL's trainers
the same rows under TRL's column names, so what the recipes train on is what the scorer reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from saev_curate.core.errors import InputError
from saev_curate.vlm.rows.images import RowError

if TYPE_CHECKING:
    from datasets import Dataset

MODES = ("prompt", "chosen", "rejected", "full")

# Every accepted row format: name -> the columns a dataset of it has (images: ``images`` or ``image``, optional).
ROW_FORMATS: dict[str, tuple[str, ...]] = {
    "TRL preference": ("prompt", "chosen", "rejected"),
    "RLAIF-V": ("question", "chosen", "rejected"),
    "Align-Anything": ("question", "response_1", "response_2", "overall_response"),
    "TRL SFT": ("messages",),
    "TRL prompt-completion": ("prompt", "completion"),
    "interleaved": ("texts", "images"),
}
PREFERENCE_FORMATS = ("TRL preference", "RLAIF-V", "Align-Anything")
SFT_FORMATS = ("TRL SFT", "TRL prompt-completion", *PREFERENCE_FORMATS)  # preference rows: the chosen response


def _recognise(columns: Iterable[str]) -> str | None:
    """The ``ROW_FORMATS`` name that a row's keys (or a dataset's columns) are in, None for none.

    Lenient on purpose: a row missing a response is still recognised, so its error names what is missing; a
    ``prompt`` alone counts as a (prompt-only) TRL preference row.
    """
    c = set(columns)
    if {"texts", "images"} <= c:
        return "interleaved"
    if "messages" in c:
        return "TRL SFT"
    if "question" in c and c & {"response_1", "response_2"}:
        return "Align-Anything"
    if "prompt" in c:
        return "TRL prompt-completion" if "completion" in c and not c & {"chosen", "rejected"} else "TRL preference"
    if "question" in c and c & {"chosen", "rejected"}:
        return "RLAIF-V"
    return None


def _formats_text(names: Iterable[str]) -> str:
    return ", ".join(f"{'/'.join(ROW_FORMATS[n])} ({n})" for n in names)


def _unrecognised(columns: Iterable[str], names: Iterable[str] = tuple(ROW_FORMATS), *, short: bool = False) -> str:
    """``short``: the accepted formats by their columns only (a row's error: it is stored with every row)."""
    accepted = ", ".join("/".join(ROW_FORMATS[n]) for n in names) if short else _formats_text(names)
    return f"unrecognised row format (columns: {sorted(columns)}); accepted formats: {accepted}"


def row_format(columns: Iterable[str]) -> str:
    """The name (a :data:`ROW_FORMATS` key) of the row format of a row's keys or a dataset's column names.

    Raises ``InputError`` naming the columns found and the accepted formats when they match none.
    """
    columns = list(columns)
    name = _recognise(columns)
    if name is None:
        raise InputError(_unrecognised(columns))
    return name


def _dataset_format(columns: list[str], allowed: tuple[str, ...], trainer: str) -> str:
    name = _recognise(columns)
    if name is None:
        raise InputError(f"{trainer} training: {_unrecognised(columns, allowed)}")
    if name not in allowed:
        raise InputError(f"{trainer} training: the columns {sorted(columns)} are {name} rows, which {trainer} "
                         f"training cannot use; accepted formats: {_formats_text(allowed)}")
    missing = [c for c in ROW_FORMATS[name] if c not in columns]
    if missing:
        raise InputError(f"{trainer} training: the columns {sorted(columns)} look like {name} rows but lack "
                         f"{', '.join(missing)}; accepted formats: {_formats_text(allowed)}")
    return name


def _image_columns(columns: list[str]) -> list[str]:
    return ["images"] if "images" in columns else ["image"] if "image" in columns else []


def _preferred(raw) -> int | None:
    """Align-Anything's ``overall_response`` as 1 or 2 (the preferred response); None when it is neither."""
    try:
        pref = int(raw)
    except (TypeError, ValueError):
        return None
    return pref if pref in (1, 2) else None


def to_trl_preference(dataset: Dataset) -> Dataset:
    """A preference ``datasets.Dataset`` under TRL's names: ``prompt``, ``chosen``, ``rejected`` and its image
    column (``images`` or ``image``); other columns are dropped, values kept as they are (strings or messages).

    TRL's ``DPOTrainer`` reads only those names: RLAIF-V's ``question`` is renamed and Align-Anything's preferred
    response (``overall_response``) picked here, so a recipe trains on the rows the scorer reads unchanged.
    """
    columns = list(dataset.column_names)
    name = _dataset_format(columns, PREFERENCE_FORMATS, "DPO")
    keep = _image_columns(columns)
    if name == "Align-Anything":
        def pick(question, response_1, response_2, overall_response, idx):
            pref = _preferred(overall_response)
            if pref is None:
                raise InputError(f"row {idx}: 'overall_response' must be 1 or 2 (the preferred response), "
                                 f"got {overall_response!r}")
            responses = {1: response_1, 2: response_2}
            return {"prompt": question, "chosen": responses[pref], "rejected": responses[3 - pref]}

        return dataset.map(pick, input_columns=list(ROW_FORMATS[name]), with_indices=True,
                           remove_columns=[c for c in columns if c not in keep], desc="TRL preference rows")
    prompt = ROW_FORMATS[name][0]
    out = dataset.select_columns([prompt, "chosen", "rejected", *keep])
    return out.rename_column(prompt, "prompt") if prompt != "prompt" else out


def to_trl_sft(dataset: Dataset) -> Dataset:
    """An SFT ``datasets.Dataset`` under TRL's names: ``messages`` or ``prompt``/``completion``, and its image
    column; a preference format's chosen response is the completion.  Other columns are dropped.

    The SFT counterpart of :func:`to_trl_preference`: ``SFTTrainer`` reads only TRL's names.
    """
    columns = list(dataset.column_names)
    name = _dataset_format(columns, SFT_FORMATS, "SFT")
    if name in PREFERENCE_FORMATS:
        return to_trl_preference(dataset).remove_columns("rejected").rename_column("chosen", "completion")
    return dataset.select_columns([*ROW_FORMATS[name], *_image_columns(columns)])


def batch_to_rows(batch: dict[str, list]) -> list[dict]:
    """Turn a ``datasets`` batched dict of lists into a list of row dicts."""
    if not isinstance(batch, Mapping):
        raise InputError(f"batch_to_rows expects a dict of column lists (a datasets batch), got {type(batch).__name__}")
    if not len(batch):
        return []
    lengths = {k: len(batch[k]) for k in batch.keys()}
    if len(set(lengths.values())) != 1:
        raise InputError(f"batch columns have different lengths {lengths}; pass a datasets batch (batched=True)")
    n = next(iter(lengths.values()))
    cols = {k: batch[k] for k in batch.keys()}
    return [{k: v[i] for k, v in cols.items()} for i in range(n)]


def placeholders(processor) -> list[str]:
    out = []
    for name in ("image_token", "boi_token"):
        tok = getattr(processor, name, None)
        if isinstance(tok, str) and tok:
            out.append(tok)
    return out or ["<image>"]


def _as_list(x) -> list:
    if x is None:
        return []
    if isinstance(x, (list, tuple)):
        return list(x)
    return [x]


def _norm_content(content, where: str) -> list[dict]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, dict):
        content = [content]
    if not isinstance(content, (list, tuple)):
        raise RowError(f"{where}: message content must be a string or a list of parts, got {type(content).__name__}")
    parts = []
    for p in content:
        if isinstance(p, str):
            parts.append({"type": "text", "text": p})
            continue
        if not isinstance(p, dict) or "type" not in p:
            raise RowError(f"{where}: content part {p!r:.80} has no 'type'")
        if p["type"] == "text":
            parts.append({"type": "text", "text": p.get("text") or ""})
        elif p["type"] in ("image", "image_url"):
            part = {"type": "image"}
            inline = p.get("image", p.get("url", p.get("path")))
            if p["type"] == "image_url" and inline is None:
                url = p.get("image_url")
                inline = url.get("url") if isinstance(url, dict) else url
            if inline is not None:
                part["_inline"] = inline
            parts.append(part)
        else:
            # datasets stores missing struct fields as None: {"type": "text", "text": None, "image": None}
            raise RowError(f"{where}: unsupported content part type {p['type']!r} (only text and image)")
    return parts


def _norm_messages(msgs, where: str) -> list[dict]:
    if isinstance(msgs, dict):
        msgs = [msgs]
    if not isinstance(msgs, (list, tuple)):
        raise RowError(f"{where}: expected a list of messages, got {type(msgs).__name__}")
    out = []
    for j, m in enumerate(msgs):
        if not isinstance(m, dict) or "role" not in m:
            raise RowError(f"{where}[{j}]: a message must be a dict with 'role' and 'content'")
        out.append({"role": m["role"], "content": _norm_content(m.get("content"), f"{where}[{j}]")})
    return out


def _is_conversational(x) -> bool:
    return isinstance(x, (list, tuple)) and len(x) > 0 and isinstance(x[0], dict) and "role" in x[0]


def _text_of(msgs: list[dict]) -> str:
    return "".join(p.get("text", "") for m in msgs for p in m["content"] if p["type"] == "text")


def _turn(role: str, x, where: str) -> list[dict]:
    """A string or conversational value as a list of messages (strings become one ``role`` turn)."""
    if x is None:
        raise RowError(f"{where} is missing (None)")
    if isinstance(x, str):
        return [{"role": role, "content": [{"type": "text", "text": x}]}]
    if _is_conversational(x):
        return _norm_messages(x, where)
    raise RowError(f"{where} must be a string or a list of messages, got {type(x).__name__}")


def row_to_conversation(row: dict, mode: str = "prompt") -> tuple[list[dict], list, bool]:
    """Normalise one row to ``(messages, images, add_generation_prompt)``.

    Messages use ``{"type": "image"}`` parts at the image positions (inserted at the start of the
    first user turn when the row's text has none, as TRL does); ``images`` are the raw image
    references in order.  Raises ``RowError`` with the reason.
    """
    if not isinstance(row, dict):
        raise RowError(f"a row must be a dict, got {type(row).__name__}")
    if mode not in MODES:
        raise InputError(f"mode={mode!r} is not one of {', '.join(MODES)}")
    images = _as_list(row["images"]) if "images" in row else _as_list(row.get("image"))
    gen_prompt = False
    fmt = _recognise(row)

    if fmt == "interleaved":
        texts, imgs = _as_list(row["texts"]), _as_list(row["images"])
        if len(texts) != len(imgs):
            raise RowError(f"interleaved document has {len(texts)} texts but {len(imgs)} images; the lists must pair up")
        parts, images = [], []
        for j, (t, im) in enumerate(zip(texts, imgs)):
            if t is not None and im is not None:
                raise RowError(f"interleaved document position {j} has both a text and an image; one must be null")
            if im is not None:
                parts.append({"type": "image"})
                images.append(im)
            elif t is not None:
                parts.append({"type": "text", "text": t})
        msgs = [{"role": "user", "content": parts}]
        if not _text_of(msgs).strip():
            raise RowError("interleaved document has no text")
        return msgs, images, False

    if fmt == "TRL SFT":
        msgs = _norm_messages(row["messages"], "messages")
        if mode == "rejected":
            raise RowError("mode='rejected' needs a preference row; this SFT row has no rejected response")
        if mode == "prompt":
            last_asst = max((j for j, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
            if last_asst is not None:
                msgs = msgs[:last_asst]
            gen_prompt = True
        prompt_msgs = [m for m in msgs if m["role"] != "assistant"]
        if not _text_of(prompt_msgs).strip():
            raise RowError("the prompt (non-assistant messages) is empty")
    elif fmt == "Align-Anything":
        q = row["question"]
        if not isinstance(q, str) or not q.strip():
            raise RowError("'question' is empty")
        msgs = _turn("user", q, "question")
        raw_pref = row.get("overall_response")
        pref = _preferred(raw_pref)
        if pref is None and (raw_pref is not None or mode != "prompt"):
            raise RowError(f"'overall_response' must be 1 or 2 (the preferred response), got {raw_pref!r}")
        if mode == "prompt":
            gen_prompt = True
        else:
            which = pref if mode in ("chosen", "full") else 3 - pref
            msgs = msgs + _turn("assistant", row.get(f"response_{which}"), f"response_{which}")
    elif fmt is not None:  # TRL preference / prompt-completion / prompt only; RLAIF-V names its prompt `question`
        key = "question" if fmt == "RLAIF-V" else "prompt"
        msgs = _turn("user", row[key], key)
        if not _text_of(msgs).strip():
            raise RowError(f"{key!r} is empty")
        if mode == "prompt":
            gen_prompt = True
        else:
            if "chosen" in row or "rejected" in row:
                key = "rejected" if mode == "rejected" else "chosen"
                if key not in row:
                    raise RowError(f"mode={mode!r} needs a {key!r} column")
            elif "completion" in row:
                if mode == "rejected":
                    raise RowError("mode='rejected' needs a preference row; this row has prompt/completion")
                key = "completion"
            else:
                raise RowError(f"mode={mode!r} needs a response column (chosen/rejected/completion); use mode='prompt'")
            msgs = msgs + _turn("assistant", row[key], key)
    else:
        raise RowError(_unrecognised(row, short=True))

    # Images carried inside message parts come first-class; otherwise use the row's image column.
    inline = [p["_inline"] for m in msgs for p in m["content"] if p["type"] == "image" and "_inline" in p]
    n_parts = sum(p["type"] == "image" for m in msgs for p in m["content"])
    if inline:
        if len(inline) != n_parts:
            raise RowError("some image parts carry an image and some do not; use one style per row")
        images = inline
    elif n_parts == 0 and images:
        first_user = next((m for m in msgs if m["role"] == "user"), msgs[0])
        first_user["content"] = [{"type": "image"} for _ in images] + first_user["content"]
    elif n_parts != len(images):
        raise RowError(f"the messages have {n_parts} image part(s) but the row has {len(images)} image(s)")
    for m in msgs:
        for p in m["content"]:
            p.pop("_inline", None)
    return msgs, images, gen_prompt


def render(processor, msgs: list[dict], gen_prompt: bool) -> str:
    template = getattr(processor, "chat_template", None) or getattr(processor.tokenizer, "chat_template", None)
    if template:
        return processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen_prompt)
    # No chat template (base models): plain text with the processor's image placeholder.
    ph = placeholders(processor)[-1] if hasattr(processor, "boi_token") else placeholders(processor)[0]
    chunks = []
    for m in msgs:
        for p in m["content"]:
            chunks.append(ph if p["type"] == "image" else p["text"])
    return "\n".join(chunks)



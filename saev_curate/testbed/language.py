"""The testbed's closed language: captions, interleaved facts, questions with answers, a word tokenizer.

The language names everything the images show (digits, shapes, colours, counts, faces, photos), so
the model's image tokens must come to speak it.  Three kinds of text train the model, like LLaVA:

* **captions** (varied: "a handwritten seven .", "there are three red circles .");
* **interleaved facts** where the image stands where a word would ("the number <image> is odd ."
  beside "the number seven is odd ."): an image and the word for it must lead to the same
  continuations, so their representations meet (OBELICS-style documents do this at scale);
* **instructions**: questions with one-word answers ("what digit is this ?" -> "seven", "is this a
  seven ?" -> "yes"/"no", "how many shapes are there ?", "what colour are the shapes ?", "is there a
  face ?"), and image-free questions ("what comes after three ?") used for off-topic prompts.

Every question comes with its correct answer and a wrong one (the preference pair), and a
``qtype`` naming its question type, so accuracy can be reported per type.
"""

from __future__ import annotations

import numpy as np

from saev_curate.testbed.images import COLOURS, MAX_COUNT, SHAPES, Concept

NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
IMAGE_TOKEN = "<image>"
SPECIAL = ("<pad>", "<unk>", "<|im_start|>", "<|im_end|>", IMAGE_TOKEN)
SYSTEM_PROMPT = "answer questions about the image ."  # short: 40% of a step was a longer one
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n" + SYSTEM_PROMPT + "<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '" + IMAGE_TOKEN + "\\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles"}
KIND_WORD = {"digit": "digit", "scene": "shapes", "face": "face", "photo": "photo"}
#: question types that presuppose what the image shows (used to build image/prompt mismatches)
KIND_QTYPES = {"digit": ("digit_identity", "digit_claim", "digit_parity"),
               "scene": ("count", "colour", "shape", "scene_claim")}
QTYPES = ("digit_identity", "digit_claim", "digit_parity", "count", "colour", "shape", "scene_claim",
          "face", "kind", "text_only")


def _n(k: int) -> str:
    return NUMBERS[k]


def _shapes(c: Concept) -> str:
    return c.shape if c.count == 1 else PLURAL[c.shape]


def caption(c: Concept, rng: np.random.RandomState) -> str:
    """A varied caption naming what ``c`` shows."""
    if c.kind == "digit":
        d = _n(c.digit)
        return rng.choice([f"a handwritten {d} .", f"the digit {d} .", f"this image shows the number {d} .",
                           f"a picture of a {d} .", f"{d} , written by hand ."])
    if c.kind == "scene":
        s = f"{_n(c.count)} {c.colour} {_shapes(c)}"
        return rng.choice([f"{s} .", f"a picture of {s} .", f"there {'is' if c.count == 1 else 'are'} {s} .",
                           f"a drawing with {s} ."])
    if c.kind == "face":
        return rng.choice(["a photo of a face .", "the face of a person .", "a person looking at the camera .",
                           "a face in grey ."])
    return rng.choice(["a photo with no face .", "a photo of a scene .", "a grey photo .", "a photo ."])


def _facts(c: Concept) -> list[tuple[str, str]]:
    """``(text with the word, text with <image> instead)`` pairs: the image stands where a word would."""
    if c.kind == "digit":
        d, w = c.digit, _n(c.digit)
        parity = "odd" if d % 2 else "even"
        out = [(f"the number {w} is {parity} .", f"the number {IMAGE_TOKEN} is {parity} .")]
        if d < 9:
            out.append((f"after {w} comes {_n(d + 1)} .", f"after {IMAGE_TOKEN} comes {_n(d + 1)} ."))
        if d > 0:
            out.append((f"before {w} comes {_n(d - 1)} .", f"before {IMAGE_TOKEN} comes {_n(d - 1)} ."))
        return out
    if c.kind == "scene":
        s = _shapes(c)
        corners = {"circle": "no", "square": "four", "triangle": "three"}[c.shape]
        return [(f"{_n(c.count)} {c.colour} {s} : the colour is {c.colour} .",
                 f"{IMAGE_TOKEN} : the colour is {c.colour} ."),
                (f"{_n(c.count)} {c.colour} {s} : i count {_n(c.count)} .", f"{IMAGE_TOKEN} : i count {_n(c.count)} ."),
                (f"a {c.shape} has {corners} corners .", f"{IMAGE_TOKEN} : each shape has {corners} corners .")]
    if c.kind == "face":
        return [("a face has two eyes .", f"{IMAGE_TOKEN} : a face has two eyes .")]
    return [("a photo with no face .", f"{IMAGE_TOKEN} : a photo with no face .")]


def interleaved(c: Concept, rng: np.random.RandomState) -> tuple[str, str]:
    """One fact about ``c`` as (text-only sentence, the same sentence with the image in place of the word)."""
    facts = _facts(c)
    return facts[rng.randint(len(facts))]


def question(c: Concept, rng: np.random.RandomState, qtype: str | None = None) -> dict:
    """A question about ``c``: ``{"qtype", "question", "answer", "wrong"}`` (one-word answers).

    ``qtype`` forces a type (it must fit the kind); by default one is drawn among those that fit.
    """
    ok = [q for q in QTYPES if fits(q, c)]
    if qtype is None:
        qtype = ok[rng.randint(len(ok))]
    elif qtype not in ok:
        raise ValueError(f"question type {qtype!r} does not fit a {c.kind} image")
    yes = bool(rng.rand() < 0.5)

    def yn(claim_true: bool) -> tuple[str, str]:
        return ("yes", "no") if claim_true else ("no", "yes")

    if qtype == "digit_identity":
        q = rng.choice(["what digit is this ?", "which number is written here ?", "what number is shown ?"])
        wrong = int(rng.choice([k for k in range(10) if k != c.digit]))
        return _q(qtype, q, _n(c.digit), _n(wrong))
    if qtype == "digit_claim":
        claim = c.digit if yes else int(rng.choice([k for k in range(10) if k != c.digit]))
        q = rng.choice([f"is this a {_n(claim)} ?", f"is the digit a {_n(claim)} ?", f"is this the number {_n(claim)} ?"])
        return _q(qtype, q, *yn(claim == c.digit))
    if qtype == "digit_parity":
        parity = rng.choice(["odd", "even"])
        return _q(qtype, f"is the digit {parity} ?", *yn((c.digit % 2 == 1) == (parity == "odd")))
    if qtype == "count":
        q = rng.choice(["how many shapes are there ?", f"how many {PLURAL[c.shape]} are there ?",
                        "count the shapes ."])
        wrong = int(rng.choice([k for k in range(1, MAX_COUNT + 1) if k != c.count]))
        return _q(qtype, q, _n(c.count), _n(wrong))
    if qtype == "colour":
        q = rng.choice(["what colour are the shapes ?", f"what colour is the {c.shape} ?",
                        "which colour do you see ?"])
        wrong = str(rng.choice([k for k in COLOURS if k != c.colour]))
        return _q(qtype, q, c.colour, wrong)
    if qtype == "shape":
        q = rng.choice(["what shape is shown ?", "which shape is drawn ?", "what kind of shape is this ?"])
        wrong = str(rng.choice([k for k in SHAPES if k != c.shape]))
        return _q(qtype, q, c.shape, wrong)
    if qtype == "scene_claim":
        if rng.rand() < 0.5:
            colour = c.colour if yes else str(rng.choice([k for k in COLOURS if k != c.colour]))
            return _q(qtype, f"are the shapes {colour} ?", *yn(colour == c.colour))
        shape = c.shape if yes else str(rng.choice([k for k in SHAPES if k != c.shape]))
        return _q(qtype, f"are there {PLURAL[shape]} in the picture ?", *yn(shape == c.shape))
    if qtype == "face":
        return _q(qtype, rng.choice(["is there a face ?", "do you see a face ?", "is a person shown ?"]),
                  *yn(c.has_face))
    if qtype == "kind":
        wrong = str(rng.choice([w for k, w in KIND_WORD.items() if k != c.kind]))
        return _q(qtype, rng.choice(["what is shown ?", "what kind of picture is this ?"]), KIND_WORD[c.kind], wrong)
    return text_only_question(rng)


def text_only_question(rng: np.random.RandomState) -> dict:
    """A question that needs no image ("what comes after three ?"): off-topic for any image."""
    k = int(rng.randint(0, 9))
    form = rng.randint(3)
    if form == 0:
        return _q("text_only", f"what comes after {_n(k)} ?", _n(k + 1), _n((k + 2) % 10))
    if form == 1:
        return _q("text_only", f"what comes before {_n(k + 1)} ?", _n(k), _n((k + 2) % 10))
    truth = k % 2 == 1
    return _q("text_only", f"is {_n(k)} an odd number ?", "yes" if truth else "no", "no" if truth else "yes")


def fits(qtype: str, c: Concept) -> bool:
    """Whether a question of type ``qtype`` can be asked about an image showing ``c``."""
    if qtype in KIND_QTYPES["digit"]:
        return c.kind == "digit"
    if qtype in KIND_QTYPES["scene"]:
        return c.kind == "scene"
    return qtype in ("face", "kind")


def _q(qtype: str, q: str, answer: str, wrong: str) -> dict:
    return {"qtype": qtype, "question": str(q), "answer": answer, "wrong": wrong}


def vocabulary() -> list[str]:
    """Every word the language can produce (a closed set: the tokenizer has no unknown words in it)."""
    rng = np.random.RandomState(0)
    from saev_curate.testbed.images import sample_images

    words: set[str] = set(SYSTEM_PROMPT.split()) | {"system", "user", "assistant"} | set(NUMBERS)
    words |= set(COLOURS) | set(SHAPES) | set(PLURAL.values()) | set(KIND_WORD.values())
    concepts = [c for _, c in sample_images("train", 400, seed=0)]
    for c in concepts:
        for _ in range(12):
            words |= set(caption(c, rng).split())
            for a, b in _facts(c):
                words |= set(a.split()) | set(b.replace(IMAGE_TOKEN, "").split())
            q = question(c, rng)
            words |= set(q["question"].split()) | {q["answer"], q["wrong"]}
    for _ in range(200):
        q = text_only_question(rng)
        words |= set(q["question"].split()) | {q["answer"], q["wrong"]}
    return sorted(words)


def build_tokenizer():
    """A word-level fast tokenizer over :func:`vocabulary` (+ chat and image special tokens)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(list(SPECIAL) + vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", unk_token="<unk>",
        pad_token="<pad>", extra_special_tokens={"image_token": IMAGE_TOKEN}, padding_side="right",
    )


def chat_prompt(question: str, *, image: bool = True) -> list[dict]:
    """The user turn of a question, image first (the usual chat layout)."""
    content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": question}]
    return [{"role": "user", "content": content}]

"""A byte-level BPE tokenizer trained on a fixed corpus, and a small chat template: identical on every
machine, so tiny models built from them are reproducible without downloads."""

from __future__ import annotations

# A small, fixed corpus so that the trained tokenizer is identical on every machine.
_CORPUS = [
    "A photo of a cat sitting on a red sofa next to a window.",
    "Describe the image in detail. What is the person holding?",
    "The dog runs across the green field while children play with a ball.",
    "Question: how many apples are on the table? Answer: there are three apples.",
    "The chart shows the revenue growth of the company over five years.",
    "A street at night with cars, traffic lights and people walking in the rain.",
    "What color is the bus? The bus is yellow and parked near the school.",
    "Two birds sit on a branch; the sky behind them is blue and clear.",
    "Please answer briefly and accurately based on what you can see.",
    "The kitchen has a white fridge, a wooden table and four chairs.",
    "User: is there any text in this picture? Assistant: yes, a sign that says stop.",
    "Mountains covered with snow rise above a quiet lake at sunrise.",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000 digits numbers, punctuation! (yes) [no] {maybe}",
]

CHAT_ROLES = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")


def chat_template(image_placeholder: str) -> str:
    """A small jinja chat template in the style of real ones: string or list-of-parts content."""
    return (
        "{% for message in messages %}"
        "{{ '<|' + message['role'] + '|>\n' }}"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}"
        "{% if part['type'] == 'image' %}" + image_placeholder.replace("'", "\\'").join(["{{ '", "' }}"]) +
        "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
        "{% endfor %}{% endif %}"
        "{{ '<|end|>\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    )


def train_tokenizer(special_tokens: list[str], *, vocab_size: int, bos: str | None, extra: dict | None = None,
                     cls=None):
    """Byte-level BPE trained on the fixed corpus; every string is encodable (no unknown token)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    cls = cls or PreTrainedTokenizerFast
    kwargs = dict(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<|end|>",
        unk_token=None,
        padding_side="right",
    )
    if bos is not None:
        kwargs["bos_token"] = bos
    kwargs.update(extra or {})
    return cls(**kwargs)

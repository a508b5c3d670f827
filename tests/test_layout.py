"""Token slices under three chat-template styles, and the prompt round-trip check."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from greater.errors import GreaterError
from greater.inference.engine import Engine
from greater.inference.layout import (
    PLACEMENTS,
    ChatLayout,
    build_sequence,
    chat_messages,
    check_layout,
    check_roundtrip,
    decode,
    encode,
    encode_prompt,
)
from greater.tasks import get_task

LLAMA3_TEMPLATE = (
    "{% for message in messages %}{% set content = '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% set role = 'model' if message['role'] == 'assistant' "
    "else message['role'] %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + "
    "'<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
# Gemma-2's own template refuses a system message
GEMMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    + GEMMA_TEMPLATE
)
STYLES = {
    "chatml": (None, None, "<|im_start|>assistant\n"),
    "llama3": (
        LLAMA3_TEMPLATE,
        ("<|begin_of_text|>", ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]),
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
    ),
    "gemma": (GEMMA_TEMPLATE, ("<bos>", ["<start_of_turn>", "<end_of_turn>"]), "<start_of_turn>model\n"),
}
QUESTION = "not ( True ) and ( True ) is"
PROMPT = "proper logical reasoning and think step by step."
REASONING = "Let's evaluate: not True is False, so False and True is False."
EXTRACTOR = "Therefore, the final answer (use exact format: '$ True' or '$ False') is $"


def _tokenizer(folder, style: str):
    """SmolLM2's tokenizer with another family's template and special tokens (no downloads)."""
    tok = AutoTokenizer.from_pretrained(folder)
    template, specials, _ = STYLES[style]
    if template is not None:
        bos, extra = specials
        tok.add_special_tokens({"bos_token": bos, "additional_special_tokens": extra})
        tok.chat_template = template
    return tok


def _template_ids(tok, messages: list[dict]) -> list[int]:
    out = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("style", sorted(STYLES))
def test_slices_are_exact_for_each_template_style_and_placement(style, placement, embedded_folder):
    tok = _tokenizer(embedded_folder, style)
    layout = ChatLayout.from_tokenizer(tok, placement)
    assert layout.mid_text.endswith(STYLES[style][2])
    seq = build_sequence(
        layout,
        layout.frame(tok, QUESTION, ". Use"),
        encode_prompt(tok, PROMPT, layout.prompt_lead),
        encode(tok, REASONING),
        encode(tok, " " + EXTRACTOR),
        encode(tok, " False"),
    )
    ids = seq.ids
    assert decode(tok, ids[seq.question]) == QUESTION + (". Use" if placement == "after-question" else "")
    assert decode(tok, ids[seq.prompt]) == layout.prompt_lead + PROMPT
    assert decode(tok, ids[seq.reasoning]) == REASONING
    assert decode(tok, ids[seq.extractor]) == " " + EXTRACTOR
    assert decode(tok, ids[seq.answer]).strip() == "False"
    assert seq.answer.stop == len(ids)
    system, user = layout.user_texts(QUESTION, ". Use", PROMPT)
    assert (system, user) == {
        "after-question": (None, f"{QUESTION}. Use {PROMPT}"),
        "before-question": (None, f"{PROMPT}\n\n{QUESTION}"),
        "system": (PROMPT, QUESTION),
    }[placement]
    # the context is exactly what the template itself produces for the chat's turns
    assert list(ids[: seq.context_len]) == _template_ids(tok, chat_messages(system, user))
    assert check_layout(tok, seq, user, system)
    assert not check_layout(tok, seq, user + " extra", system)


def test_a_template_without_a_system_turn_refuses_placement_system(embedded_folder):
    tok = _tokenizer(embedded_folder, "gemma")
    tok.chat_template = GEMMA2_TEMPLATE
    ChatLayout.from_tokenizer(tok, "before-question")  # a user turn is all the other placements need
    with pytest.raises(GreaterError, match="placement system: this model's chat template has no system turn"):
        ChatLayout.from_tokenizer(tok, "system")
    tok.chat_template = None
    with pytest.raises(GreaterError, match="placement system needs a chat template"):
        ChatLayout.from_tokenizer(tok, "system")
    with pytest.raises(GreaterError, match="placement must be one of"):
        ChatLayout.from_tokenizer(tok, "sideways")


@pytest.mark.parametrize("name", ["gen/boolean_expressions", "gen/arithmetic", "gen/object_counting"])
def test_answer_slice_decodes_to_gold(name, smol_tokenizer, tiny_model):
    task = get_task(name)
    examples = task.load()[:20]
    engine = Engine(tiny_model, smol_tokenizer, task, examples, joiner=". Use")
    prompt = tuple(encode_prompt(smol_tokenizer, PROMPT))
    seqs = engine.sequences(prompt, [encode(smol_tokenizer, " I think so.")] * len(examples))
    for seq, ex in zip(seqs, examples, strict=True):
        answer = decode(smol_tokenizer, seq.ids[seq.answer]).strip()
        assert answer == ex.answer
        assert task.normalize(answer) == task.normalize(ex.answer)
        assert decode(smol_tokenizer, seq.ids[seq.extractor]).strip() == task.extractor


def test_roundtrip_rejects_non_canonical_tokens(smol_tokenizer):
    tok = smol_tokenizer
    ids = encode(tok, " the") + encode(tok, "re") + encode(tok, " is")
    assert decode(tok, ids) == " there is"
    with pytest.raises(GreaterError, match="does not survive"):
        check_roundtrip(tok, ids)
    check_roundtrip(tok, encode(tok, " there is"))  # the canonical form passes


def test_encode_prompt_rejects_empty_and_unencodable(smol_tokenizer):
    with pytest.raises(GreaterError, match="empty"):
        encode_prompt(smol_tokenizer, "   ")
    with pytest.raises(GreaterError, match="cannot encode"):
        encode_prompt(smol_tokenizer, "a\udcffb")

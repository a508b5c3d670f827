"""Token layout of one example under the model's own chat template, with exact slices.

    [chat prefix] [question + joiner] [prompt] [chat: end user turn, start assistant]
    [reasoning] [extractor] [answer]

Each segment is tokenized on its own and the ids are concatenated, so every slice is exact by
construction for any template; `check_layout` verifies that this equals tokenizing the whole
rendered text, which holds whenever segment boundaries fall on token boundaries.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from greater.errors import GreaterError

Ids = tuple[int, ...]  # the token ids of one row or one prompt

_SENTINEL = "\x00GREATER-USER-TEXT\x00"


@dataclass(frozen=True)
class ChatLayout:
    """The chat template cut around the user's text: `prefix_ids` before it, `mid_ids` after it
    (end of the user turn and the assistant header)."""

    prefix_ids: tuple[int, ...]
    mid_ids: tuple[int, ...]
    prefix_text: str
    mid_text: str

    @classmethod
    def from_tokenizer(cls, tokenizer: PreTrainedTokenizerBase) -> ChatLayout:
        if getattr(tokenizer, "chat_template", None):
            rendered = tokenizer.apply_chat_template(
                [{"role": "user", "content": _SENTINEL}], tokenize=False, add_generation_prompt=True
            )
            if rendered.count(_SENTINEL) != 1:
                raise GreaterError("the tokenizer's chat template does not place the user message exactly once")
            prefix_text, mid_text = rendered.split(_SENTINEL)
        else:  # a base model without a chat template
            prefix_text, mid_text = (tokenizer.bos_token or ""), "\nAnswer:"
        return cls(tuple(encode(tokenizer, prefix_text)), tuple(encode(tokenizer, mid_text)), prefix_text, mid_text)

    def encode_head(
        self, tokenizer: PreTrainedTokenizerBase, user_text: str
    ) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(prefix ids, user-text ids), tokenized together as the template would.

        Alone, a prefix ending in whitespace tokenizes differently than when text follows it
        (Llama-3's "<|end_header_id|>\n\n" + "not" is [\n, \n, not], not [\n\n, not]); the joint
        tokenization is cut where the decoded prefix ends, falling back to separate pieces when a
        token straddles the boundary.
        """
        joint = encode(tokenizer, self.prefix_text + user_text)
        for cut in range(len(joint) + 1):
            decoded = decode(tokenizer, joint[:cut])
            if len(decoded) >= len(self.prefix_text):
                if decoded == self.prefix_text:
                    return tuple(joint[:cut]), tuple(joint[cut:])
                break
        return self.prefix_ids, tuple(encode(tokenizer, user_text))

    def row_tokens(self, head: tuple[Ids, Ids], prompt_tokens: int, reasoning_tokens: int, follow_tokens: int) -> int:
        """Tokens of a row (see the module's picture): `head` from `encode_head`, a prompt and a reasoning of
        these lengths, and `follow_tokens` after the reasoning (extractor and answer)."""
        return len(head[0]) + len(head[1]) + prompt_tokens + len(self.mid_ids) + reasoning_tokens + follow_tokens


@dataclass(frozen=True)
class TokenSequence:
    """Token ids of one example and the slice of each segment in them."""

    ids: tuple[int, ...]
    question: slice
    prompt: slice
    reasoning: slice
    extractor: slice
    answer: slice

    @property
    def context_len(self) -> int:
        """Length of the generation context (everything before the reasoning)."""
        return self.reasoning.start


def encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of `text` alone, without special tokens added by the tokenizer."""
    if not text:
        return []
    try:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    except (TypeError, ValueError, UnicodeError) as exc:  # e.g. lone surrogates from a mis-encoded argv
        raise GreaterError(f"the tokenizer cannot encode {text.strip()[:60]!r}: {exc}") from exc


def build_sequence(
    layout: ChatLayout,
    head: tuple[tuple[int, ...], tuple[int, ...]],
    prompt_ids: list[int] | tuple[int, ...],
    reasoning_ids: list[int] | tuple[int, ...] = (),
    extractor_ids: list[int] | tuple[int, ...] = (),
    answer_ids: list[int] | tuple[int, ...] = (),
) -> TokenSequence:
    """Concatenate the segments; `head` is (prefix ids, question ids) from `ChatLayout.encode_head`.
    Slices index into the returned ids."""
    parts = [head[0], head[1], prompt_ids, layout.mid_ids, reasoning_ids, extractor_ids, answer_ids]
    bounds = [0]
    for part in parts:
        bounds.append(bounds[-1] + len(part))
    ids = tuple(t for part in parts for t in part)
    return TokenSequence(
        ids=ids,
        question=slice(bounds[1], bounds[2]),
        prompt=slice(bounds[2], bounds[3]),
        reasoning=slice(bounds[4], bounds[5]),
        extractor=slice(bounds[5], bounds[6]),
        answer=slice(bounds[6], bounds[7]),
    )


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Token ids of a prompt (it follows the joiner after one space) that survive decode→encode."""
    if not prompt.strip():
        raise GreaterError("the prompt is empty")
    ids = encode(tokenizer, " " + prompt.strip())
    check_roundtrip(tokenizer, ids)
    return ids


def check_roundtrip(tokenizer: PreTrainedTokenizerBase, prompt_ids: list[int] | tuple[int, ...]) -> None:
    """Raise unless decoding the prompt and encoding it again gives the same tokens."""
    text = decode(tokenizer, prompt_ids)
    again = encode(tokenizer, text)
    if list(again) != list(prompt_ids):
        raise GreaterError(
            f"the prompt {text.strip()!r} does not survive tokenize→decode→tokenize with this tokenizer "
            "(it would change when written out as text); rephrase it, e.g. without unusual characters"
        )


def decode(tokenizer: PreTrainedTokenizerBase, ids: list[int] | tuple[int, ...]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def check_layout(tokenizer: PreTrainedTokenizerBase, seq: TokenSequence, user_text: str) -> bool:
    """True when the context equals the chat template's own tokenization of `user_text` and the
    assistant part (reasoning, extractor, answer) equals tokenizing its text on its own."""
    if getattr(tokenizer, "chat_template", None):
        out = tokenizer.apply_chat_template(
            [{"role": "user", "content": user_text}], add_generation_prompt=True, tokenize=True
        )
        context = list(out["input_ids"] if hasattr(out, "keys") else out)
        if list(seq.ids[: seq.context_len]) != context:
            return False
    tail = list(seq.ids[seq.context_len :])
    return encode(tokenizer, decode(tokenizer, tail)) == tail

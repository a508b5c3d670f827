"""Token layout of one example under the model's own chat template, with exact slices.

Where the prompt goes (`placement`):

    after-question   [chat prefix] [question + joiner] [prompt] [mid] [reasoning] [extractor] [answer]
    before-question  [chat prefix] [prompt] ["\n\n" + question] [mid] ...
    system           [chat prefix, system turn] [prompt] [end system turn, start user turn + question] [mid] ...

(mid: the end of the user turn and the assistant header). The paper's is after-question. Every row is
[head] [prompt] [tail] [mid] [reasoning] [extractor] [answer]: with after-question the tail is empty and
the head holds the question; otherwise every row's head is the same and the question is in the tail.

Each segment is tokenized on its own and the ids are concatenated, so every slice is exact by
construction for any template; `check_layout` verifies that this equals tokenizing the whole
rendered text, which holds whenever segment boundaries fall on token boundaries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from transformers import PreTrainedTokenizerBase

from greater.errors import GreaterError

Ids = tuple[int, ...]  # the token ids of one row or one prompt

_SENTINEL = "\x00GREATER-USER-TEXT\x00"
_SYSTEM_SENTINEL = "\x00GREATER-SYSTEM-TEXT\x00"
PLACEMENTS = ("after-question", "before-question", "system")
AFTER_QUESTION = PLACEMENTS[0]
QUESTION_SEPARATOR = "\n\n"  # between the prompt and the question, placement before-question


def prompt_lead(placement: str) -> str:
    """What a prompt's text starts with in the chat: a space after the question and its joiner; nothing at
    the start of a turn's text (before-question, system)."""
    return " " if placement == AFTER_QUESTION else ""


@dataclass(frozen=True)
class ReplyFormat:
    """How a program wants a (reasoning, answer) reply written (DSPy's ChatAdapter, `greater.dspy`): `start`,
    the reasoning, `extractor` (the answer field's marker; it replaces the task's " " + extractor), the
    answer, `end`; the reasoning ends where the model first writes `stop` (cut there)."""

    start: str
    extractor: str
    end: str
    stop: str


@dataclass(frozen=True)
class ChatFormat:
    """A program's own text around the prompt and the reply, placement system only: the system turn's text
    is `before + lead + prompt + after`, and the reply is written as `reply` says."""

    before: str
    after: str
    reply: ReplyFormat
    lead: str = ""

    @classmethod
    def around(cls, system_text: str, marker: str, reply: ReplyFormat) -> ChatFormat:
        """The format of a system text with `marker` where the prompt goes. One space before the marker
        becomes the prompt's lead: byte-level BPE joins a space to the word after it, so the prompt's first
        token then starts where the prompt does, as when the whole text is tokenized."""
        if system_text.count(marker) != 1:
            raise GreaterError("the system text must hold the prompt's place exactly once")
        before, after = system_text.split(marker)
        lead = " " if before.endswith(" ") else ""
        return cls(before[: len(before) - len(lead)], after, reply, lead)

    def system_text(self, prompt: str) -> str:
        return f"{self.before}{self.lead}{prompt}{self.after}"


def cut_at_marker(tokenizer: PreTrainedTokenizerBase, ids: list[int], stop: str) -> list[int]:
    """`ids` (a reasoning) up to where their text first has `stop`, whitespace before it dropped: the
    longest prefix whose text ends there; all of `ids` when `stop` is not in their text."""
    text = decode(tokenizer, ids)
    at = text.find(stop)
    if at < 0:
        return ids
    end = len(text[:at].rstrip())
    keep = 0
    for k in range(1, len(ids) + 1):
        if len(decode(tokenizer, ids[:k])) > end:
            break
        keep = k
    return ids[:keep]


class Framed(NamedTuple):
    """An example's ids around the prompt: `head` before it, `tail` after it up to the end of the user
    turn; the question (with the joiner after-question) is `head[question_at:]` after-question, else
    `tail[question_at:]`."""

    head: Ids
    tail: Ids
    question_at: int


@dataclass(frozen=True)
class ChatLayout:
    """The chat template cut around the prompt and the question, for one `placement`: `prefix_ids`
    before the user's text (system: before the system turn's text), `between_text` from the end of the
    system text to the user's text (system only), `mid_ids` after the user's text (end of the user turn
    and the assistant header)."""

    prefix_ids: tuple[int, ...]
    mid_ids: tuple[int, ...]
    prefix_text: str
    mid_text: str
    placement: str = AFTER_QUESTION
    between_text: str = ""
    chat_format: ChatFormat | None = None

    @classmethod
    def from_tokenizer(
        cls, tokenizer: PreTrainedTokenizerBase, placement: str = AFTER_QUESTION, chat_format: ChatFormat | None = None
    ) -> ChatLayout:
        if placement not in PLACEMENTS:
            raise GreaterError(f"placement must be one of {', '.join(PLACEMENTS)}, not {placement!r}")
        if chat_format is not None and placement != "system":
            raise GreaterError("a program's chat format places the prompt in the system turn (placement system)")
        between = ""
        if placement == "system":
            prefix_text, between, mid_text = _system_pieces(tokenizer)
            if chat_format is not None:
                prefix_text += chat_format.before
                between = chat_format.after + between
                mid_text += chat_format.reply.start
        elif getattr(tokenizer, "chat_template", None):
            rendered = tokenizer.apply_chat_template(
                [{"role": "user", "content": _SENTINEL}], tokenize=False, add_generation_prompt=True
            )
            if rendered.count(_SENTINEL) != 1:
                raise GreaterError("the tokenizer's chat template does not place the user message exactly once")
            prefix_text, mid_text = rendered.split(_SENTINEL)
        else:  # a base model without a chat template
            prefix_text, mid_text = (tokenizer.bos_token or ""), "\nAnswer:"
        prefix_ids, mid_ids = tuple(encode(tokenizer, prefix_text)), tuple(encode(tokenizer, mid_text))
        if placement != AFTER_QUESTION:
            # the prompt follows the prefix: the prefix as the template tokenizes it before text (a prompt
            # starts with a word), whose trailing whitespace can merge otherwise
            lead = chat_format.lead if chat_format is not None else ""
            prefix_ids = encode_pair(tokenizer, prefix_text, lead + "x", prefix_ids)[0]
        return cls(prefix_ids, mid_ids, prefix_text, mid_text, placement, between, chat_format)

    @property
    def prompt_lead(self) -> str:
        return self.chat_format.lead if self.chat_format is not None else prompt_lead(self.placement)

    def extractor_text(self, task_extractor: str) -> str:
        """What follows the reasoning, before the answer."""
        return self.chat_format.reply.extractor if self.chat_format is not None else " " + task_extractor

    def frame(self, tokenizer: PreTrainedTokenizerBase, question: str, joiner: str) -> Framed:
        """`question`'s ids before and after the prompt (`Framed`); the joiner follows the question only
        after-question, where the prompt follows it."""
        if self.placement == AFTER_QUESTION:
            prefix, user = self.encode_head(tokenizer, question + joiner)
            return Framed(prefix + user, (), len(prefix))
        before = QUESTION_SEPARATOR if self.placement == "before-question" else self.between_text
        lead, asked = encode_pair(tokenizer, before, question)
        return Framed(self.prefix_ids, lead + asked, len(lead))

    def user_texts(self, question: str, joiner: str, prompt: str) -> tuple[str | None, str]:
        """(system text or None, user text) of the chat with `prompt` placed as this layout places it."""
        if self.placement == AFTER_QUESTION:
            return None, f"{question}{joiner}{self.prompt_lead}{prompt}"
        if self.placement == "before-question":
            return None, f"{prompt}{QUESTION_SEPARATOR}{question}"
        return (self.chat_format.system_text(prompt) if self.chat_format else prompt), question

    def encode_head(
        self, tokenizer: PreTrainedTokenizerBase, user_text: str
    ) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(prefix ids, user-text ids), tokenized together as the template would (`encode_pair`)."""
        return encode_pair(tokenizer, self.prefix_text, user_text, self.prefix_ids)

    def row_tokens(self, framed: Framed, prompt_tokens: int, reasoning_tokens: int, follow_tokens: int) -> int:
        """Tokens of a row (see the module's picture): an example `framed`, a prompt and a reasoning of
        these lengths, and `follow_tokens` after the reasoning (extractor and answer)."""
        fixed = len(framed.head) + len(framed.tail) + len(self.mid_ids)
        return fixed + prompt_tokens + reasoning_tokens + follow_tokens


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


def encode_pair(
    tokenizer: PreTrainedTokenizerBase, left: str, right: str, left_ids: Ids | None = None
) -> tuple[Ids, Ids]:
    """(left ids, right ids) of `left + right` tokenized together, as a template's text would be.

    Alone, text ending in whitespace tokenizes differently than when text follows it (Llama-3's
    "<|end_header_id|>\n\n" + "not" is [\n, \n, not], not [\n\n, not]); the joint tokenization is cut
    where the decoded `left` ends, falling back to separate pieces (`left_ids` when given) when a token
    straddles the boundary.
    """
    joint = encode(tokenizer, left + right)
    for cut in range(len(joint) + 1):
        decoded = decode(tokenizer, joint[:cut])
        if len(decoded) >= len(left):
            if decoded == left:
                return tuple(joint[:cut]), tuple(joint[cut:])
            break
    return (left_ids if left_ids is not None else tuple(encode(tokenizer, left))), tuple(encode(tokenizer, right))


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
    framed: Framed,
    prompt_ids: list[int] | tuple[int, ...],
    reasoning_ids: list[int] | tuple[int, ...] = (),
    extractor_ids: list[int] | tuple[int, ...] = (),
    answer_ids: list[int] | tuple[int, ...] = (),
) -> TokenSequence:
    """Concatenate the segments around an example `framed` by `layout.frame`. Slices index into the
    returned ids."""
    parts = [framed.head, prompt_ids, framed.tail, layout.mid_ids, reasoning_ids, extractor_ids, answer_ids]
    bounds = [0]
    for part in parts:
        bounds.append(bounds[-1] + len(part))
    ids = tuple(t for part in parts for t in part)
    if layout.placement == AFTER_QUESTION:
        question = slice(framed.question_at, bounds[1])
    else:
        question = slice(bounds[2] + framed.question_at, bounds[3])
    return TokenSequence(
        ids=ids,
        question=question,
        prompt=slice(bounds[1], bounds[2]),
        reasoning=slice(bounds[4], bounds[5]),
        extractor=slice(bounds[5], bounds[6]),
        answer=slice(bounds[6], bounds[7]),
    )


def _system_pieces(tokenizer: PreTrainedTokenizerBase) -> tuple[str, str, str]:
    """The chat template cut around a system turn's text and the user's: (before the system text, between
    them, after the user's text)."""
    if not getattr(tokenizer, "chat_template", None):
        raise GreaterError("placement system needs a chat template, and this tokenizer has none")
    messages = [{"role": "system", "content": _SYSTEM_SENTINEL}, {"role": "user", "content": _SENTINEL}]
    try:
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # a template that refuses system messages raises its own error (Gemma-2's)
        raise GreaterError(f"placement system: this model's chat template has no system turn ({exc})") from exc
    if rendered.count(_SYSTEM_SENTINEL) != 1 or rendered.count(_SENTINEL) != 1:
        raise GreaterError("placement system: this model's chat template has no system turn of its own")
    before, rest = rendered.split(_SYSTEM_SENTINEL)
    if _SENTINEL not in rest:  # the template moved the system text after the user's
        raise GreaterError("placement system: this model's chat template puts the system text after the question")
    between, after = rest.split(_SENTINEL)
    return before, between, after


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, lead: str = " ") -> list[int]:
    """Token ids of a prompt, after `lead` (`ChatLayout.prompt_lead`: one space where it follows the joiner),
    that survive decode→encode."""
    if not prompt.strip():
        raise GreaterError("the prompt is empty")
    ids = encode(tokenizer, lead + prompt.strip())
    check_roundtrip(tokenizer, ids)
    return ids


def encode_placed_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, placement: str) -> list[int]:
    """`encode_prompt` where `placement` puts the prompt, the placement checked against the tokenizer's
    chat template first (GreaterError where it has no place for it, e.g. no system turn)."""
    return encode_prompt(tokenizer, prompt, ChatLayout.from_tokenizer(tokenizer, placement).prompt_lead)


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


def chat_messages(system_text: str | None, user_text: str) -> list[dict]:
    """The chat's messages before the assistant's turn: a system message when there is system text."""
    system = [{"role": "system", "content": system_text}] if system_text is not None else []
    return [*system, {"role": "user", "content": user_text}]


def check_layout(
    tokenizer: PreTrainedTokenizerBase, seq: TokenSequence, user_text: str, system_text: str | None = None
) -> bool:
    """True when the context equals the chat template's own tokenization of the chat (`system_text`, if
    any, and `user_text`) and the assistant part (reasoning, extractor, answer) equals tokenizing its text
    on its own."""
    if getattr(tokenizer, "chat_template", None):
        out = tokenizer.apply_chat_template(
            chat_messages(system_text, user_text), add_generation_prompt=True, tokenize=True
        )
        context = list(out["input_ids"] if hasattr(out, "keys") else out)
        if list(seq.ids[: seq.context_len]) != context:
            return False
    tail = list(seq.ids[seq.context_len :])
    return encode(tokenizer, decode(tokenizer, tail)) == tail

"""GReaTer as a DSPy optimizer, and the local model as a DSPy LM (`pip install "greater[dspy]"`).

    lm = LocalLM()                                   # the embedded SmolLM2; or LocalLM("HuggingFaceTB/...")
    dspy.configure(lm=lm)
    program = dspy.ChainOfThought("question -> answer")
    compiled = GReaTer(lm, steps=10, metric=exact).compile(program, trainset=train, valset=dev)
    compiled.save("program.json")                    # the optimized instructions; dspy.load / program.load

GReaTer optimizes a predictor's instructions as its system-turn prompt, on the chat exactly as DSPy's
`ChatAdapter` renders it: the system message with the instructions at its end, the user message of the
input fields, and a reply `[[ ## reasoning ## ]]` ... `[[ ## answer ## ]]` answer. The loss is the gold
answer after the reasoning and the answer field's marker (`layout.ChatFormat`, `layout.ReplyFormat`).
`LocalLM` decodes such a reply the same way — reasoning up to the next field marker, then the answer
after the answer field's marker — so the program runs in-process on the tokens GReaTer optimized (docs/guide/dspy.md).
"""

from __future__ import annotations

import functools
import re
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

try:
    import dspy
    from dspy.lm15 import Message, Request, Response, Usage
    from dspy.teleprompt import Teleprompter
except ImportError as exc:  # the optional extra
    raise ImportError("greater.dspy needs the dspy package: pip install 'greater[dspy]'") from exc
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from greater.errors import GreaterError
from greater.evaluate import best_on_dev
from greater.inference.engine import Engine
from greater.inference.generation import TransformersGenerator
from greater.inference.layout import ChatFormat, ReplyFormat, cut_at_marker, decode, encode
from greater.inference.model import load_model, model_label
from greater.optimizer import GreaterConfig, Returnable, RunState, build_engine, dev_finalists, optimize, prompt_text
from greater.tasks import Example, Task

REASONING = "reasoning"  # the field dspy.ChainOfThought adds before the signature's outputs
_PLACE = "\x00GREATER-PLACE-{}\x00"
_FIELD_MARKER = re.compile(r"`(\[\[ ## (\w+) ## \]\])`")

# defaults that differ from GreaterConfig's on purpose. A DSPy program calls its LM once per predictor per
# example, interactively: a 256-token answer (not scoring's 1,024) keeps a call to seconds on a CPU. compile()
# optimizes every predictor of a program in one call and then runs the program on the valset once per
# finalist: 10 steps and 5 finalists (not 100 and 10) keep that to minutes on a small model.
LM_MAX_NEW_TOKENS = 256
COMPILE_STEPS = 10
COMPILE_KEEP_TOP = 5


def reply_format(signature: type[dspy.Signature], adapter: dspy.ChatAdapter | None = None) -> ReplyFormat:
    """The adapter's (default ChatAdapter) reply format for a signature with outputs (reasoning, answer),
    read off its own rendering of a reply."""
    adapter = adapter or dspy.ChatAdapter()
    reasoning, answer = _reasoning_and_answer(signature)
    said, wrote = _PLACE.format(reasoning), _PLACE.format(answer)
    reply = adapter.format_assistant_message_content(signature, {reasoning: said, answer: wrote})
    start, rest = reply.split(said)
    extractor, end = rest.split(wrote)
    return ReplyFormat(start, extractor, end, _common_start(start.strip(), extractor.strip()))


def chat_format(signature: type[dspy.Signature], adapter: dspy.ChatAdapter | None = None) -> ChatFormat:
    """The chat a predictor with this signature sends through `adapter` (default ChatAdapter), around its
    instructions: the system text before and after them and the reply's format."""
    adapter = adapter or dspy.ChatAdapter()
    marker = _PLACE.format("instructions")
    inputs = {name: _PLACE.format(name) for name in signature.input_fields}
    system = adapter.format(signature.with_instructions(marker), demos=[], inputs=inputs)[0]["content"]
    return ChatFormat.around(system, marker, reply_format(signature, adapter))


def _reasoning_and_answer(signature: type[dspy.Signature], name: str = "this predictor") -> tuple[str, str]:
    outputs = list(signature.output_fields)
    if len(outputs) != 2 or outputs[0] != REASONING:
        raise GreaterError(
            f"{name}: GReaTer optimizes a predictor whose outputs are a reasoning and one answer field "
            f"(dspy.ChainOfThought('question -> answer')); its outputs are {', '.join(outputs) or 'none'}"
        )
    return outputs[0], outputs[1]


def _common_start(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    if not n:
        raise GreaterError("the adapter's field markers share no start to end the reasoning at")
    return a[:n]


# -- the LM ---------------------------------------------------------------------------------------


@dataclass
class _Call:
    """One request waiting for its response (or error) in `LocalEngine`."""

    request: Request
    response: Response | None = None
    error: BaseException | None = None
    done: bool = False


class LocalEngine:
    """A DSPy engine (`complete(Request) -> Response`) on a local model through greater's generator, greedy.

    A ChatAdapter request for (reasoning, answer) is decoded as GReaTer scores it: the reply starts with the
    reasoning field's marker, the reasoning is cut where the model writes a field marker, the answer field's
    marker follows and the answer is generated after it. Any other request is a plain greedy completion.

    Requests from several threads (`dspy.Evaluate(num_threads=...)`, `program.batch`) are decoded together:
    the thread that gets the model takes every request waiting and runs them as one batch (up to
    `batch_size` rows); one caller at a time gets a batch of one, so sequential calls are deterministic."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        max_new_tokens: int = LM_MAX_NEW_TOKENS,
        answer_tokens: int = 32,
        batch_size: int = 16,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens, self.answer_tokens = max_new_tokens, answer_tokens
        self.generator = TransformersGenerator(model, tokenizer, batch_size=batch_size)
        self._model_lock = threading.Lock()
        self._waiting_lock = threading.Lock()
        self._waiting: list[_Call] = []

    def complete(self, request: Request) -> Response:
        call = _Call(request)
        with self._waiting_lock:
            self._waiting.append(call)
        with self._model_lock:
            if not call.done:
                with self._waiting_lock:
                    calls, self._waiting = self._waiting, []
                self._decode(calls)
        if call.error is not None:
            raise call.error
        assert call.response is not None
        return call.response

    def _decode(self, calls: list[_Call]) -> None:
        """Every call's response: the ChatAdapter replies in one batch, other requests one by one."""
        replies: list[tuple[_Call, list[dict], ReplyFormat]] = []
        for call in calls:
            try:
                messages = request_messages(call.request)
                fields = _requested_fields(messages[-1]["content"])
                if fields is None:
                    call.response = self._complete_plainly(call.request, messages)
                else:
                    replies.append((call, messages, _reply_for(fields[1])))
            except Exception as exc:  # the caller's error, raised in its own thread
                call.error = exc
        if replies:
            try:
                texts = self.reason_and_answer([(messages, fmt) for _, messages, fmt in replies])
                for (call, _, _), (text, n_in, n_out) in zip(replies, texts, strict=True):
                    call.response = _response(call.request, text, "stop", n_in, n_out)
            except Exception as exc:
                for call, _, _ in replies:
                    call.error = exc
        for call in calls:
            call.done = True

    def context_ids(self, messages: list[dict], reply_start: str = "") -> list[int]:
        """The token ids the model reads before it writes: the chat template's text of `messages` and the
        assistant's turn, then `reply_start`, tokenized as one text."""
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return encode(self.tokenizer, text + reply_start)

    def reason_and_answer(self, chats: list[tuple[list[dict], ReplyFormat]]) -> list[tuple[str, int, int]]:
        """(reply text, context tokens, generated tokens) of each (messages, reply format), in one batch."""
        contexts = [self.context_ids(messages, fmt.start) for messages, fmt in chats]
        generated = self.generator.generate([tuple(c) for c in contexts], self.max_new_tokens)
        reasonings = [cut_at_marker(self.tokenizer, r, fmt.stop) for r, (_, fmt) in zip(generated, chats, strict=True)]
        asked = [
            tuple(c + r + encode(self.tokenizer, fmt.extractor))
            for c, r, (_, fmt) in zip(contexts, reasonings, chats, strict=True)
        ]
        answers = self.generator.generate(asked, self.answer_tokens)
        out = []
        for context, reasoning, answer, (_, fmt) in zip(contexts, reasonings, answers, chats, strict=True):
            answer_text = _cut_text(decode(self.tokenizer, answer), (fmt.stop, "\n")).strip()
            reply = f"{fmt.start}{decode(self.tokenizer, reasoning)}{fmt.extractor}{answer_text}{fmt.end}"
            out.append((reply, len(context), len(reasoning) + len(answer)))
        return out

    def _complete_plainly(self, request: Request, messages: list[dict]) -> Response:
        ids = self.context_ids(messages)
        cap = request.config.max_tokens or self.max_new_tokens
        out = self.generator.generate([tuple(ids)], cap)[0]
        text = _cut_text(decode(self.tokenizer, out), request.config.stop)
        return _response(request, text, "length" if len(out) >= cap else "stop", len(ids), len(out))

    def stream(self, request: Request):
        raise NotImplementedError("greater's LocalLM does not stream")

    def close(self) -> None:
        pass


def _response(request: Request, text: str, finish: str, n_in: int, n_out: int) -> Response:
    return Response(
        id=None,
        model=request.model,
        message=Message.assistant(text),
        finish_reason=finish,
        usage=Usage(input_tokens=n_in, output_tokens=n_out),
    )


class LocalLM(dspy.LM):
    """A `dspy.LM` (a `dspy.BaseLM`) on a local model run in this process by greater (`LocalEngine`);
    `model` as `greater --model` takes it (None: the embedded SmolLM2-135M-Instruct). Greedy and
    deterministic, DSPy's cache off (the model is local and cheap to ask again)."""

    def __init__(
        self,
        model: str | None = None,
        *,
        max_new_tokens: int = LM_MAX_NEW_TOKENS,
        answer_tokens: int = 32,
        batch_size: int = 16,
        device: str = "auto",
        dtype: str = "auto",
        loaded: tuple[PreTrainedModel, PreTrainedTokenizerBase] | None = None,
    ) -> None:
        """`loaded`: a (model, tokenizer) already in memory, used instead of loading `model`."""
        hf_model, tokenizer = loaded or load_model(model, device=device, dtype=dtype)
        self.local = LocalEngine(hf_model, tokenizer, max_new_tokens, answer_tokens, batch_size)
        super().__init__(f"greater/{model_label(model)}", engine=self.local, cache=False)


def request_messages(request: Request) -> list[dict]:
    """The request as chat-template messages (text only)."""
    system = request.system
    if system is not None and not isinstance(system, str):
        system = "".join(part.text for part in system)
    out = [{"role": "system", "content": system}] if system else []
    for message in request.messages:
        texts = [getattr(part, "text", None) for part in message.parts]
        if any(t is None for t in texts):
            raise GreaterError("greater's LocalLM reads text messages only")
        out.append({"role": message.role, "content": "".join(texts)})
    return out


@functools.lru_cache(maxsize=64)
def _reply_for(answer: str) -> ReplyFormat:
    """ChatAdapter's reply format for a (reasoning, `answer`) request: it depends on the field names only."""
    return reply_format(dspy.Signature(f"question -> {REASONING}, {answer}"))


def _requested_fields(user_text: str) -> tuple[str, str] | None:
    """(reasoning, answer field) when the user message ends with ChatAdapter's request for exactly those
    fields and the completed marker, else None."""
    last = user_text.rsplit("\n\n", 1)[-1]
    names = [name for _, name in _FIELD_MARKER.findall(last)]
    if len(names) == 3 and names[0] == REASONING and names[2] == "completed":
        return names[0], names[1]
    return None


def _cut_text(text: str, stops: Sequence[str]) -> str:
    cuts = [text.find(s) for s in stops if s and s in text]
    return text[: min(cuts)] if cuts else text


# -- the optimizer --------------------------------------------------------------------------------

Metric = Callable[..., Any]  # DSPy's metric(example, prediction, trace=None) -> bool | float


@dataclass
class PredictorReport:
    """What `GReaTer.compile` did to one predictor."""

    name: str
    initial: str
    instructions: str
    valset_score: float | None  # the chosen instructions' mean metric on the valset (the program run by the LM)
    finalists: list[dict] = field(default_factory=list)  # {"instructions", "loss", "valset_score"}


class GReaTer(Teleprompter):
    """GReaTer as a DSPy optimizer: each predictor's instructions optimized with the local model's
    gradients (placement system, on the chat `ChatAdapter` renders), chosen among the `keep_top` best
    on `valset` with `metric` when a valset is given, and written into the predictor's signature.

    `lm`: the `LocalLM` whose model GReaTer differentiates and which runs the program on the valset.
    Other keywords are `GreaterConfig` fields (`top_k`, `seed`, ...); the reasoning cap is the LM's."""

    def __init__(
        self,
        lm: LocalLM,
        *,
        steps: int = COMPILE_STEPS,
        metric: Metric | None = None,
        keep_top: int = COMPILE_KEEP_TOP,
        progress: bool = True,
        **config: Any,
    ) -> None:
        super().__init__()
        self.lm, self.metric, self.progress = lm, metric, progress
        self.config = GreaterConfig(
            steps=steps, keep_top=keep_top, max_new_tokens=lm.local.max_new_tokens, placement="system", **config
        )
        self.config.validate()
        self.reports: list[PredictorReport] = []

    def compile(
        self,
        student: dspy.Module,
        *,
        trainset: list[dspy.Example],
        teacher: dspy.Module | None = None,
        valset: list[dspy.Example] | None = None,
        **kwargs: Any,
    ) -> dspy.Module:
        if not trainset:
            raise GreaterError("GReaTer.compile needs a trainset")
        adapter = dspy.settings.adapter
        if adapter is not None and type(adapter) is not dspy.ChatAdapter:
            raise GreaterError(
                "GReaTer optimizes the chat dspy.ChatAdapter renders; "
                f"the configured adapter is {type(adapter).__name__}"
            )
        program = student.deepcopy()
        named = program.named_predictors()
        plans = [(name, predictor, self._answer_field(name, predictor, trainset)) for name, predictor in named]
        self.reports = []
        for name, predictor, answer in plans:
            self.reports.append(self._optimize(program, name, predictor, answer, trainset, valset))
        return program

    def _answer_field(self, name: str, predictor: dspy.Predict, trainset: list[dspy.Example]) -> str:
        """The predictor's answer field; GreaterError naming the predictor when GReaTer cannot optimize it
        (checked for every predictor before any is optimized)."""
        signature = predictor.signature
        _, answer = _reasoning_and_answer(signature, f"predictor {name!r}")
        if predictor.demos:
            raise GreaterError(f"predictor {name!r}: has demos; GReaTer optimizes instructions without demos")
        missing = [f for f in (*signature.input_fields, answer) if any(f not in ex for ex in trainset)]
        if missing:
            raise GreaterError(
                f"predictor {name!r}: the trainset's examples lack its field(s) {', '.join(missing)} "
                "(GReaTer needs the predictor's inputs and its gold answer in every example)"
            )
        return answer

    def _optimize(
        self,
        program: dspy.Module,
        name: str,
        predictor: dspy.Predict,
        answer: str,
        trainset: list[dspy.Example],
        valset: list[dspy.Example] | None,
    ) -> PredictorReport:
        local = self.lm.local
        signature = predictor.signature
        config = replace(self.config, init_prompt=signature.instructions)
        engine = predictor_engine(local, name, signature, trainset, config)
        task = engine.task
        init = list(engine.encode_prompt(config.init_prompt))
        state = RunState(prompt=init, init_len=len(init), best_prompt=list(init))

        def show(record: Any, state: RunState) -> None:
            print(
                f"greater.dspy: {name} step {state.step}/{config.steps}, best selection score {state.best_score:.4f}",
                file=sys.stderr,
                flush=True,
            )

        on_step = show if self.progress else None
        optimize(local.model, local.tokenizer, task, config, engine=engine, state=state, on_step=on_step)
        returnable = Returnable(local.tokenizer, engine.layout.prompt_lead)
        finalist_ids = dev_finalists(state, config, returnable)
        finalists = [prompt_text(local.tokenizer, ids) for ids in finalist_ids]
        scores = [state.scores.get(ids) for ids in finalist_ids]
        valset_scores: list[float | None] = [None] * len(finalists)
        if valset:
            valset_scores = [self._score(program, predictor, text, valset, answer) for text in finalists]
            best = best_on_dev(valset_scores)  # first of equals: the lower selection score
        else:
            best = 0
        predictor.signature = signature.with_instructions(finalists[best])
        return PredictorReport(
            name=name,
            initial=signature.instructions,
            instructions=finalists[best],
            valset_score=valset_scores[best],
            finalists=[
                {"instructions": t, "loss": s, "valset_score": v}
                for t, s, v in zip(finalists, scores, valset_scores, strict=True)
            ],
        )

    def _score(
        self, program: dspy.Module, predictor: dspy.Predict, instructions: str, valset: list[dspy.Example], answer: str
    ) -> float:
        """The program's mean metric on `valset` with `instructions` in `predictor`, run by the LM."""
        kept = predictor.signature
        predictor.signature = kept.with_instructions(instructions)
        try:
            return program_score(program, valset, self.metric or exact_match(answer), self.lm)
        finally:
            predictor.signature = kept


def predictor_engine(
    local: LocalEngine, name: str, signature: type[dspy.Signature], trainset: list[dspy.Example], config: GreaterConfig
) -> Engine:
    """GReaTer's engine for a predictor: each training example's user message as ChatAdapter renders it
    (the question), its answer field's value (the gold answer), the system turn around the prompt and the
    reply's format (`chat_format`)."""
    adapter, (_, answer) = dspy.ChatAdapter(), _reasoning_and_answer(signature, f"predictor {name!r}")
    examples = [
        Example(
            question=adapter.format(signature, demos=[], inputs=_inputs(signature, ex))[-1]["content"],
            answer=str(ex[answer]).strip(),
        )
        for ex in trainset
    ]
    fmt = chat_format(signature, adapter)
    task = Task(
        name=f"dspy:{name}",
        description=f"DSPy predictor {name}",
        extractor=fmt.reply.extractor,
        answer_type="text",
        load=lambda: examples,
        normalize=str.strip,
    )
    config = replace(config, placement="system")
    return build_engine(local.model, local.tokenizer, task, examples, config, chat_format=fmt)


def program_score(program: dspy.Module, examples: list[dspy.Example], metric: Metric, lm: dspy.BaseLM) -> float:
    """The program's mean `metric` over `examples`, one example after another on `lm` (deterministic)."""
    total = 0.0
    with dspy.context(lm=lm):
        for ex in examples:
            total += float(metric(ex, program(**ex.inputs())))
    return total / len(examples) if examples else 0.0


def exact_match(answer: str) -> Metric:
    """The metric used when none is given: the `answer` field equals the gold one (case and spaces aside)."""

    def metric(example: dspy.Example, prediction: dspy.Prediction, trace: Any = None) -> bool:
        return str(getattr(prediction, answer, "")).strip().lower() == str(example[answer]).strip().lower()

    return metric


def _inputs(signature: type[dspy.Signature], example: dspy.Example) -> dict[str, Any]:
    return {name: example[name] for name in signature.input_fields}


__all__ = [
    "GReaTer",
    "LocalEngine",
    "LocalLM",
    "PredictorReport",
    "chat_format",
    "exact_match",
    "program_score",
    "reply_format",
]

"""greater.dspy with the real dspy: the chat format read off ChatAdapter, the LM's structured reply, the
tokens GReaTer optimizes against the tokens a DSPy call sends, unsupported predictors, and (embedded
model) compile → save → load in a new process → the same answers and valset score."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

dspy = pytest.importorskip("dspy")

from greater.dspy import GReaTer, LocalLM, chat_format, predictor_engine, reply_format  # noqa: E402
from greater.errors import GreaterError  # noqa: E402
from greater.inference.layout import cut_at_marker, encode  # noqa: E402
from greater.optimizer import GreaterConfig  # noqa: E402
from greater.tasks import get_task  # noqa: E402

# one pytest worker runs this file's tests: its module fixture is made once (make test: --dist loadgroup)
pytestmark = pytest.mark.xdist_group("dspy")

INSTRUCTIONS = "Tell whether the review is positive or negative."


@pytest.fixture(scope="module")
def tiny_lm(tiny_model, smol_tokenizer):
    return LocalLM(loaded=(tiny_model, smol_tokenizer), max_new_tokens=12, answer_tokens=4)


def reviews(n: int, skip: int = 0) -> list:
    task = get_task("gen/review_sentiment")
    return [
        dspy.Example(review=ex.question, sentiment=ex.answer).with_inputs("review")
        for ex in task.load()[skip : skip + n]
    ]


def test_the_chat_format_is_what_chat_adapter_renders():
    signature = dspy.ChainOfThought("review -> sentiment").predict.signature.with_instructions(INSTRUCTIONS)
    fmt = chat_format(signature)
    system, user = dspy.ChatAdapter().format(signature, demos=[], inputs={"review": "Great food."})
    assert fmt.system_text(INSTRUCTIONS) == system["content"]
    assert fmt.lead == " " and fmt.before.endswith("your objective is: \n       ")
    assert user["content"].startswith("[[ ## review ## ]]\nGreat food.")
    reply = dspy.ChatAdapter().format_assistant_message_content(signature, {"reasoning": "R", "sentiment": "S"})
    parts = reply_format(signature)
    assert reply == f"{parts.start}R{parts.extractor}S{parts.end}"
    assert parts.start == "[[ ## reasoning ## ]]\n" and parts.stop == "[[ ## "
    assert parts.extractor == "\n\n[[ ## sentiment ## ]]\n"


def test_a_reasoning_is_cut_where_the_model_writes_a_field_marker(smol_tokenizer):
    ids = encode(smol_tokenizer, "It is tasty, so positive.\n\n[[ ## sentiment ## ]]\npositive")
    cut = cut_at_marker(smol_tokenizer, ids, "[[ ## ")
    assert smol_tokenizer.decode(cut) == "It is tasty, so positive."
    assert cut == ids[: len(cut)]
    assert cut_at_marker(smol_tokenizer, ids[:3], "[[ ## ") == ids[:3]  # no marker: all of it


def test_the_tokens_greater_optimizes_are_the_tokens_a_dspy_call_sends(tiny_lm, smol_tokenizer):
    program = dspy.ChainOfThought("review -> sentiment")
    signature = program.predict.signature.with_instructions(INSTRUCTIONS)
    program.predict.signature = signature
    train = reviews(3)
    engine = predictor_engine(tiny_lm.local, "predict", signature, train, GreaterConfig(max_new_tokens=12))
    prompt = engine.encode_prompt(INSTRUCTIONS)
    start = reply_format(signature).start
    for b, ex in enumerate(train):
        with dspy.context(lm=tiny_lm):
            prediction = program(**ex.inputs())
        sent = tiny_lm.local.context_ids(tiny_lm.history[-1]["messages"], start)
        seq = engine.sequences(prompt)[b]
        assert list(seq.ids[: seq.context_len]) == sent
        asked = (
            f"{INSTRUCTIONS}<|im_end|>\n<|im_start|>user\n[[ ## review ## ]]\n{ex.review}\n\nRespond with the "
            "corresponding output fields, starting with the field `[[ ## reasoning ## ]]`, then "
            "`[[ ## sentiment ## ]]`, "
            "and then ending with the marker for `[[ ## completed ## ]]`.<|im_end|>\n<|im_start|>assistant\n"
            "[[ ## reasoning ## ]]\n"
        )
        assert smol_tokenizer.decode(sent).endswith(asked)
        # the reply the LM returned parses into the fields: the reasoning the model wrote, cut at a marker
        reasoning = engine.generate_reasoning([seq.ids], 12)[0]
        assert prediction.reasoning == smol_tokenizer.decode(reasoning).strip()


def test_requests_from_threads_are_decoded_in_one_batch_with_the_answers_of_one_at_a_time(tiny_lm):
    program = dspy.ChainOfThought("review -> sentiment")
    examples = reviews(4)
    with dspy.context(lm=tiny_lm):
        alone = [program(**ex.inputs()) for ex in examples]
    engine = tiny_lm.local
    padded = engine.generator.stats.padded_slots
    results: dict[int, object] = {}

    def ask(i: int) -> None:
        with dspy.context(lm=tiny_lm):
            results[i] = program(**examples[i].inputs())

    with engine._model_lock:  # hold the model until all four wait, so that one thread takes them all
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        while len(engine._waiting) < 4:
            time.sleep(0.01)
    for thread in threads:
        thread.join()
    assert engine.generator.stats.padded_slots > padded  # rows of different lengths, padded: one batch
    for i, prediction in enumerate(alone):
        assert (results[i].reasoning, results[i].sentiment) == (prediction.reasoning, prediction.sentiment)


def test_compile_writes_the_instructions_into_the_predictor(tiny_lm):
    program = dspy.ChainOfThought("review -> sentiment")
    optimizer = GReaTer(tiny_lm, steps=2, keep_top=2, top_k=6, progress=False)
    compiled = optimizer.compile(program, trainset=reviews(3), valset=reviews(2, skip=3))
    (report,) = optimizer.reports
    assert report.initial == program.predict.signature.instructions  # the student is left as it was
    assert compiled.predict.signature.instructions == report.instructions != report.initial
    assert len(report.finalists) == 2 and report.valset_score in {f["valset_score"] for f in report.finalists}
    assert report.instructions == report.finalists[0]["instructions"] or report.valset_score > min(
        f["valset_score"] for f in report.finalists
    )


@pytest.mark.parametrize(
    ("program", "words"),
    [
        (dspy.Predict("question -> answer"), "its outputs are answer"),
        (dspy.ChainOfThought("question -> answer, confidence"), "its outputs are reasoning, answer, confidence"),
    ],
)
def test_a_predictor_greater_cannot_optimize_is_one_error_naming_it(tiny_lm, program, words):
    trainset = [dspy.Example(question="1+1?", answer="2", confidence="1").with_inputs("question")]
    with pytest.raises(GreaterError, match=rf"^predictor '(self|predict)': .*{words}$"):
        GReaTer(tiny_lm, steps=1).compile(program, trainset=trainset)


def test_a_trainset_without_the_predictors_fields_is_one_error(tiny_lm):
    trainset = [dspy.Example(text="Nice.", label="positive").with_inputs("text")]
    with pytest.raises(GreaterError, match="lack its field\\(s\\) review, sentiment"):
        GReaTer(tiny_lm, steps=1).compile(dspy.ChainOfThought("review -> sentiment"), trainset=trainset)


def test_another_adapter_is_one_error(tiny_lm):
    trainset = [dspy.Example(review="Nice.", sentiment="positive").with_inputs("review")]
    with dspy.context(adapter=dspy.JSONAdapter()), pytest.raises(GreaterError, match="adapter is JSONAdapter$"):
        GReaTer(tiny_lm, steps=1).compile(dspy.ChainOfThought("review -> sentiment"), trainset=trainset)


LOAD_AND_RUN = """
import json, sys
import dspy
from greater.dspy import LocalLM, exact_match, program_score
lm = LocalLM(sys.argv[3], max_new_tokens=16, answer_tokens=4, device="cpu")
program = dspy.ChainOfThought("review -> sentiment")
program.load(sys.argv[1])
data = json.loads(sys.argv[2])
def examples(rows):
    return [dspy.Example(**row).with_inputs("review") for row in rows]
with dspy.context(lm=lm):
    answers = [program(**ex.inputs()).sentiment for ex in examples(data["test"])]
valset = program_score(program, examples(data["valset"]), exact_match("sentiment"), lm)
print(json.dumps({"instructions": program.predict.signature.instructions, "answers": answers, "valset": valset}))
"""


@pytest.mark.slow
def test_a_compiled_program_saved_and_loaded_elsewhere_answers_as_compile_left_it(tmp_path, tiny_model_dir):
    # the tiny model, loaded from its folder as a user's model is: what is checked is that another process
    # gets the same instructions, answers and score, not what a real model answers
    lm = LocalLM(str(tiny_model_dir), max_new_tokens=16, answer_tokens=4, device="cpu")
    program = dspy.ChainOfThought("review -> sentiment")
    trainset, valset, test = reviews(3), reviews(2, skip=3), reviews(2, skip=5)
    optimizer = GReaTer(lm, steps=1, keep_top=2, progress=False)
    compiled = optimizer.compile(program, trainset=trainset, valset=valset)
    (report,) = optimizer.reports
    assert compiled.predict.signature.instructions == report.instructions != report.initial
    with dspy.context(lm=lm):
        answers = [compiled(**ex.inputs()).sentiment for ex in test]
    compiled.save(tmp_path / "program.json")
    rows = {
        "test": [{"review": ex.review, "sentiment": ex.sentiment} for ex in test],
        "valset": [{"review": ex.review, "sentiment": ex.sentiment} for ex in valset],
    }
    out = subprocess.run(
        [sys.executable, "-c", LOAD_AND_RUN, str(tmp_path / "program.json"), json.dumps(rows), str(tiny_model_dir)],
        capture_output=True,
        text=True,
        check=True,
    )
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded["instructions"] == report.instructions
    assert loaded["answers"] == answers
    assert loaded["valset"] == report.valset_score

"""The baselines (ZS-CoT, APE, APO, PE2, TextGrad-style) and the shared method interface.

Search logic is checked with scripted replies and scores (a Workbench whose model calls are
replaced), the real plumbing on the tiny random model.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from greater.errors import GreaterError
from greater.evaluate import best_on_dev
from greater.inference.layout import encode_prompt
from greater.methods import (
    GREATER_VARIANTS,
    METHODS,
    ZS_COT_PROMPT,
    MethodConfig,
    baseline_fields,
    common,
    distinct_settings,
    greater_fields,
    run_method,
)
from greater.methods import baselines as B
from greater.methods.common import Scored, Workbench, extract_prompt, pick_on_dev
from greater.tasks import Example, get_task

TASK = get_task("gen/boolean_expressions")
TRAIN = TASK.load()[:4]


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (' The instruction is to "Add 2 to -16." ', "Add 2 to -16."),
        ("Sure! <START>Solve carefully.<END> then <START>second<END>", "Solve carefully."),
        ("<VARIABLE>Old one.</VARIABLE>\nBetter:\n<VARIABLE>Check each step.</VARIABLE>", "Check each step."),
        ("x <IMPROVED_VARIABLE>Evaluate inner brackets first.</IMPROVED_VARIABLE>", "Evaluate inner brackets first."),
        (
            'Here is the improved prompt:\n"Compute each operation in order."\nThis helps.',
            "Compute each operation in order.",
        ),
        ("Output:\n\nThink step by step.\nmore", "Think step by step."),
        ("1. Read the question twice.\n2. Answer.", "Read the question twice."),
        ("New prompt: Think about signs first.", "Think about signs first."),
        ("<START>  <END>", None),
        (":::\n42", None),
        ("", None),
    ],
)
def test_extract_prompt(smol_tokenizer, reply: str, expected: str | None) -> None:
    assert extract_prompt(reply, smol_tokenizer, 48) == expected


def test_extract_prompt_cuts_long_prompts_at_a_sentence_end(smol_tokenizer) -> None:
    reply = "First sentence is here. " + "word " * 60
    assert extract_prompt(reply, smol_tokenizer, 8) == "First sentence is here."  # "." in the second half
    assert extract_prompt(reply, smol_tokenizer, 14) == "First sentence is here." + " word" * 8
    words = extract_prompt("word " * 60, smol_tokenizer, 12)
    assert len(encode_prompt(smol_tokenizer, words)) <= 12
    assert words.split() == ["word"] * len(words.split())


def test_budget_matches_greater_candidate_count() -> None:
    assert MethodConfig(steps=4).budget == 12  # GReaTer re-scores num_select=3 candidates per step
    assert MethodConfig(steps=4, num_select=2).budget == 8
    assert MethodConfig(steps=4, evaluations=5).budget == 5
    with pytest.raises(GreaterError, match="evaluations"):
        MethodConfig(evaluations=0).validate()


class ScriptedBench(Workbench):
    """A Workbench whose scores and replies are scripted: `accuracy[prompt]` (unknown prompts 0) and
    `replies(meta_prompt) -> reply text`, called once per meta-prompt in order."""

    def __init__(self, accuracy: dict[str, float], replies, config: MethodConfig, tokenizer) -> None:
        self.accuracy, self.script = accuracy, replies
        self.tokenizer, self.task, self.train, self.config = tokenizer, TASK, TRAIN, config
        self.scores, self.evaluated, self.replies = {}, 0, 0
        self.meta_prompts: list[str] = []
        self.scored_batches: list[list[str]] = []

    def score(self, prompts: list[str], *, counted: bool = True) -> list[Scored]:
        fresh = [p for p in dict.fromkeys(prompts) if p not in self.scores]
        self.scored_batches.append(fresh)
        for p in fresh:
            acc = self.accuracy.get(p, 0.0)
            n_right = round(acc * len(TRAIN))
            self.scores[p] = Scored(p, acc, 1.0 - acc, [f"reasoning {i}" for i in range(len(TRAIN))],
                                    [i < n_right for i in range(len(TRAIN))])  # fmt: skip
        if counted:
            self.evaluated += len(fresh)
        return [self.scores[p] for p in prompts]

    def complete(self, meta_prompts: list[str]) -> list[str]:
        self.meta_prompts += meta_prompts
        return [self.script(m) for m in meta_prompts]


def counter_replies(prefix: str = "Prompt"):
    """Replies that are a fresh numbered prompt each time ("Prompt 1.", "Prompt 2.", ...)."""
    count = iter(range(1, 1000))
    return lambda meta: f"<START>{prefix} {next(count)}.<END>"


def test_ape_induces_half_then_paraphrases_the_best(smol_tokenizer) -> None:
    accuracy = {"Prompt 2.": 0.5, "Prompt 4.": 0.75}
    bench = ScriptedBench(accuracy, counter_replies(), MethodConfig(steps=2, num_select=2), smol_tokenizer)
    best, history = B.ape(bench)
    assert bench.evaluated == 4 == bench.config.budget  # 2 induced, 2 paraphrases of the best 2
    assert [h["kind"] for h in history] == ["induced", "induced", "paraphrase", "paraphrase"]
    induction = [m for m in bench.meta_prompts if m.startswith("I gave a friend")]
    assert len(induction) == 2
    assert all(m.count("Input:") == len(TRAIN) for m in induction)  # demos ≤ train size
    resample = [m for m in bench.meta_prompts if m.startswith("Generate a variation")]
    assert "Input: Prompt 2." in resample[0]
    assert "Input: Prompt 1." in resample[1]  # best first
    assert best.prompt == "Prompt 4."
    assert best.accuracy == 0.75


def test_apo_beam_keeps_the_best_and_spends_exactly_the_budget(smol_tokenizer) -> None:
    accuracy = {"Let's think step by step.": 0.25, "Prompt 2.": 0.5, "Prompt 3.": 0.25, "Prompt 4.": 1.0}
    replies = counter_replies()

    def script(meta: str) -> str:
        return "The prompt is too vague." if meta.startswith("I'm trying") and "Wrap it" not in meta else replies(meta)

    bench = ScriptedBench(accuracy, script, MethodConfig(steps=2, num_select=2, beam=2), smol_tokenizer)
    best, history = B.apo(bench)
    assert bench.evaluated == 4
    assert best.prompt == "Prompt 4."
    edits = [h for h in history if h["kind"] == "edit"]
    assert [h["parent"] for h in edits] == ["Let's think step by step."] * 2 + ["Prompt 2."] * 2
    assert all(h["gradient"] == "The prompt is too vague." for h in edits)
    # the critique shows the parent's wrong examples only (its correct ones are the first k)
    critique = next(m for m in bench.meta_prompts if "Give a reason" in m)
    assert critique.count("Correct answer:") == 3
    assert critique.count("was wrong") == 3


def test_pe2_carries_the_best_prompt_forward(smol_tokenizer) -> None:
    accuracy = {"Let's think step by step.": 0.5, "Prompt 1.": 0.25, "Prompt 2.": 0.75}

    def script(meta: str) -> str:
        return "analysis" if meta.rstrip().endswith("Suggest changes to the prompt.") else replies(meta)

    replies = counter_replies()
    bench = ScriptedBench(accuracy, script, MethodConfig(steps=1, num_select=2), smol_tokenizer)
    best, history = B.pe2(bench)
    assert best.prompt == "Prompt 2."
    assert bench.evaluated == 2
    assert 'Full template: "<input>. Let\'s think step by step."' in bench.meta_prompts[0]


def test_textgrad_reverts_an_update_that_scores_worse(smol_tokenizer) -> None:
    accuracy = {"Let's think step by step.": 0.5}  # every update scores 0

    def script(meta: str) -> str:
        return "<IMPROVED_VARIABLE>Worse prompt.</IMPROVED_VARIABLE>" if "IMPROVED" in meta else "feedback"

    bench = ScriptedBench(accuracy, script, MethodConfig(steps=2, num_select=1), smol_tokenizer)
    best, history = B.textgrad(bench)
    assert best.prompt == "Let's think step by step."
    # the only new prompt is scored once; later rounds propose nothing new and the search stops
    assert bench.evaluated == 1
    assert [h["prompt"] for h in history[1:]] == ["Worse prompt."]
    losses = [m for m in bench.meta_prompts if m.startswith("Below are a question")]
    # one critique per wrong example (2 of 4 at accuracy 0.5) per round; 1 round + the idle ones
    assert len(losses) == 2 * (B.MAX_IDLE_ROUNDS + 1)
    assert ["Reasoning: reasoning 2" in losses[0], "Reasoning: reasoning 3" in losses[1]] == [True, True]


def test_a_model_that_never_writes_a_prompt_stops(smol_tokenizer) -> None:
    for search in (B.ape, B.apo, B.pe2, B.textgrad):
        bench = ScriptedBench({}, lambda meta: "", MethodConfig(steps=5), smol_tokenizer)
        best, _ = search(bench)
        assert best.prompt == "Let's think step by step."
        assert bench.evaluated == 0
        # MAX_IDLE_ROUNDS rounds of at most 8 meta-prompts (APE: 8 inductions; TextGrad: 4 critiques,
        # 1 backward, 3 updates)
        assert 0 < len(bench.meta_prompts) <= 8 * B.MAX_IDLE_ROUNDS


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_on_the_tiny_model(tiny_model, smol_tokenizer, method: str) -> None:
    steps = 1 + len(GREATER_VARIANTS.get(method, {}).get("starts", []))  # a step per start
    config = MethodConfig(steps=steps, max_new_tokens=4, meta_max_new_tokens=12, batch_size=8)
    result = run_method(method, tiny_model, smol_tokenizer, TASK, TRAIN, config)
    assert result.method == method
    assert result.prompt
    encode_prompt(smol_tokenizer, result.prompt)  # usable as a prompt
    assert result.usage.calls >= len(TRAIN)
    assert result.usage.generated_tokens > 0
    assert result.usage.seconds > 0
    if method in GREATER_VARIANTS:
        assert result.joiner == GREATER_VARIANTS[method].get("joiner", ". Use")
        assert result.score_name == "selection loss"
        assert len(result.history) == steps
        for step in result.history:
            assert 0 <= step["train_errors"] <= len(TRAIN)
            assert 1 <= len(step["evaluated"]) <= config.num_select
            assert step["chosen"] in {e["prompt"] for e in step["evaluated"]}
    else:
        assert result.joiner == "."
        assert result.score_name == "train accuracy"
        scored = [h for h in result.history if h["kind"] not in ("start", "fixed")]
        assert len(scored) <= config.budget
        best = max(result.history, key=lambda h: (h["accuracy"], -h["ce"]))
        assert result.score == best["accuracy"]
    if method == "zs-cot":  # one reasoning per training example, nothing else
        assert result.prompt == "Let's think step by step."
        assert result.usage.calls == len(TRAIN)
        assert result.usage.generated_tokens <= 4 * len(TRAIN)


def test_pick_on_dev_takes_the_best_dev_accuracy_ties_to_the_better_training_key() -> None:
    finalists = [  # best training key first
        Scored("a", 0.8, 0.1, [], []),
        Scored("b", 0.6, 0.2, [], []),
        Scored("c", 0.6, 0.3, [], []),
    ]
    dev = {"a": 0.5, "b": 0.75, "c": 0.75}
    best, records = pick_on_dev(finalists, dev.__getitem__)
    assert best is finalists[1]  # b and c tie on dev: b has the better training key
    assert records == [
        {"prompt": "a", "score": 0.8, "dev_accuracy": 0.5},
        {"prompt": "b", "score": 0.6, "dev_accuracy": 0.75},
        {"prompt": "c", "score": 0.6, "dev_accuracy": 0.75},
    ]
    assert pick_on_dev(finalists, lambda prompt: 0.0)[0] is finalists[0]


def test_a_baseline_scores_its_keep_top_best_prompts_on_dev(tiny_model, smol_tokenizer, monkeypatch) -> None:
    config = MethodConfig(steps=1, max_new_tokens=4, meta_max_new_tokens=12, batch_size=8, keep_top=2)
    dev = TASK.load()[10:13]
    plain = run_method("ape", tiny_model, smol_tokenizer, TASK, TRAIN, config)
    asked = []

    def scripted(engine, examples, prompt) -> float:
        asked.append((prompt, examples, engine.joiner, engine.max_new_tokens))
        return [0.25, 0.75][len(asked) - 1]  # the second finalist is the best on dev

    monkeypatch.setattr(common, "accuracy_on", scripted)
    result = run_method("ape", tiny_model, smol_tokenizer, TASK, TRAIN, config, dev=dev)
    ranked = sorted(plain.history, key=lambda h: (-h["accuracy"], h["ce"]))  # the same search as without dev
    assert [a[0] for a in asked] == [h["prompt"] for h in ranked[:2]]
    assert all(a[1:] == (dev, ".", 4) for a in asked)
    assert result.prompt == ranked[1]["prompt"] and result.score == ranked[1]["accuracy"]
    assert result.dev_accuracy == 0.75
    assert result.finalists == [
        {"prompt": h["prompt"], "score": h["accuracy"], "dev_accuracy": d}
        for h, d in zip(ranked[:2], [0.25, 0.75], strict=True)
    ]
    assert (plain.dev_accuracy, plain.finalists) == (None, [])
    zs = run_method("zs-cot", tiny_model, smol_tokenizer, TASK, TRAIN, config, dev=dev)
    assert len(asked) == 2 and zs.dev_accuracy is None  # one prompt: no dev pass


def test_replies_are_reproducible(tiny_model, smol_tokenizer) -> None:
    config = MethodConfig(meta_max_new_tokens=10, seed=3)
    first = Workbench(tiny_model, smol_tokenizer, TASK, TRAIN, config).complete(["Say hi.", "Say bye."])
    again = Workbench(tiny_model, smol_tokenizer, TASK, TRAIN, config).complete(["Say hi.", "Say bye."])
    other = Workbench(tiny_model, smol_tokenizer, TASK, TRAIN, MethodConfig(meta_max_new_tokens=10, seed=4))
    assert first == again
    assert other.complete(["Say hi.", "Say bye."]) != first


def test_scoring_a_prompt_twice_costs_once(tiny_model, smol_tokenizer) -> None:
    bench = Workbench(tiny_model, smol_tokenizer, TASK, TRAIN, MethodConfig(max_new_tokens=3))
    (a,) = bench.score(["Think."])
    calls = bench.generator.stats.sequences
    a2, b = bench.score(["Think.", "Answer now."])
    assert a2 is a
    assert bench.evaluated == 2
    assert bench.generator.stats.sequences == calls + len(TRAIN)
    assert a.accuracy == sum(a.correct) / len(TRAIN)
    assert len(a.reasonings) == len(TRAIN)


def test_unknown_method_and_empty_training_set(tiny_model, smol_tokenizer) -> None:
    with pytest.raises(GreaterError, match="unknown method 'opro'"):
        run_method("opro", tiny_model, smol_tokenizer, TASK, TRAIN)
    with pytest.raises(GreaterError, match="no training examples"):
        run_method("ape", tiny_model, smol_tokenizer, TASK, [])
    assert Example("q", "a") not in TRAIN


@pytest.mark.slow
def test_greater_zs_starts_from_the_zs_cot_prompt(tiny_model, smol_tokenizer) -> None:
    config = MethodConfig(steps=1, max_new_tokens=4, batch_size=8)
    result = run_method("greater-zs", tiny_model, smol_tokenizer, TASK, TRAIN, config)
    assert result.method == "greater-zs"
    assert result.history[0]["prompt"] == "Let's think step by step."  # step 1 edits the ZS-CoT prompt
    plain = run_method("greater", tiny_model, smol_tokenizer, TASK, TRAIN, config)
    assert plain.history[0]["prompt"] != result.history[0]["prompt"]
    # with a dev set, ZS-CoT's prompt itself is scored there beside the searched finalist(s)
    one = replace(config, keep_top=1)
    zs_dev = run_method("greater-zs", tiny_model, smol_tokenizer, TASK, TRAIN, one, dev=TASK.load()[4:6])
    assert [f["prompt"] for f in zs_dev.finalists] == [zs_dev.history[0]["chosen"], "Let's think step by step."]


@pytest.mark.parametrize(
    ("name", "fields"),
    [
        ("greater", {}),
        ("ape", None),
        ("greater:nll_weight=0.5:num_select=6", {"nll_weight": 0.5, "num_select": 6}),
        ("greater:candidate_nll=True:selection=loss", {"candidate_nll": True, "selection": "loss"}),
        (
            "greater-zs:answer_temperature=1",
            {"init_prompt": ZS_COT_PROMPT, "joiner": ".", "dev_keeps_initial": True, "answer_temperature": 1.0},
        ),
    ],
)
def test_a_greater_method_name_carries_its_options(name: str, fields: dict | None) -> None:
    assert greater_fields(name) == fields


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("opro", "unknown method 'opro'; choose from greater, greater-zs, greater-best, greater-starts, zs-cot"),
        ("ape:num_select=2", "method 'ape:num_select=2': 'num_select=2' is not one of evaluations=VALUE"),
        ("ape:evaluations=0", "method 'ape:evaluations=0': invalid setting evaluations=0"),
        ("zs-cot:evaluations=5", "method 'zs-cot:evaluations=5': zs-cot scores one prompt and takes no options"),
        (
            "ape:evaluations=\u0669\u0660",
            "method 'ape:evaluations=\u0669\u0660': '\u0669\u0660' is no value for evaluations",
        ),
        ("zs-cot>greater", "method 'zs-cot>greater': 'zs-cot' before '>' must be one of ape, apo, pe2, textgrad"),
        ("greater:steps=3", "method 'greater:steps=3': 'steps=3' is not one of num_select=VALUE, nll_weight"),
        ("greater:nll_weight", "method 'greater:nll_weight': nll_weight needs a value (nll_weight=VALUE)"),
        ("greater:num_select=two", "method 'greater:num_select=two': 'two' is no value for num_select"),
        ("greater:candidate_nll=yes", "method 'greater:candidate_nll=yes': 'yes' is no value for candidate_nll"),
        ("greater:num_select=0", "invalid setting num_select=0"),
        ("greater:selection=best", "invalid setting selection='best'"),
        ("greater:top_k=5:top_k=6", "method 'greater:top_k=5:top_k=6': top_k is set twice"),
        ("greater:nll_weight=nan", "method 'greater:nll_weight=nan': 'nan' is no value for nll_weight"),
    ],
)
def test_a_bad_method_name_says_what_is_wrong(name: str, message: str) -> None:
    with pytest.raises(GreaterError) as raised:
        greater_fields(name)
    assert str(raised.value).startswith(message)


@pytest.mark.parametrize(
    ("name", "fields"),
    [("ape", {}), ("apo:evaluations=7", {"evaluations": 7}), ("greater", None), ("ape>greater", None)],
)
def test_a_baseline_name_may_carry_its_own_budget(name: str, fields: dict | None) -> None:
    assert baseline_fields(name) == fields


def test_a_baseline_budget_in_the_name_changes_the_search_and_a_copy_of_a_row_is_refused(
    tiny_model, smol_tokenizer
) -> None:
    config = MethodConfig(steps=2, max_new_tokens=4, batch_size=8)  # 3 × 2 = 6 candidates
    plain = run_method("ape", tiny_model, smol_tokenizer, TASK, TRAIN, config)
    more = run_method("ape:evaluations=9", tiny_model, smol_tokenizer, TASK, TRAIN, config)
    assert more.method == "ape:evaluations=9"
    assert (len(plain.history), len(more.history)) == (6, 9)  # a history entry per candidate scored
    assert more.usage.calls > plain.usage.calls
    distinct_settings(["ape", "ape:evaluations=9", "apo:evaluations=6"], config)  # apo at 6: no other apo row
    with pytest.raises(GreaterError, match="methods 'ape' and 'ape:evaluations=6' run the same settings"):
        distinct_settings(["ape", "ape:evaluations=6"], config)
    # two rows whose cells' files would have one name (the folder keeps ASCII letters, digits and "._-")
    starts = ["greater-starts:starts=a b|c.", "greater-starts:starts=a_b|c."]
    with pytest.raises(GreaterError, match="would share their cells' file names; rename one"):
        distinct_settings(starts, replace(config, steps=6))


def test_a_greater_option_in_the_method_name_changes_the_search(tiny_model, smol_tokenizer) -> None:
    config = MethodConfig(steps=2, max_new_tokens=4, batch_size=8)  # num_select 3
    one = run_method("greater:num_select=1", tiny_model, smol_tokenizer, TASK, TRAIN, config)
    assert one.method == "greater:num_select=1"
    assert [len(step["evaluated"]) for step in one.history] == [1, 1]
    plain = run_method("greater", tiny_model, smol_tokenizer, TASK, TRAIN, config)
    assert all(len(step["evaluated"]) > 1 for step in plain.history)
    # the candidate it re-scores is the one the plain run ranks first by gradient
    assert one.history[0]["evaluated"][0]["prompt"] == plain.history[0]["evaluated"][0]["prompt"]


def test_a_scoring_call_saves_each_generation_batch_of_prompts_and_a_resumed_bench_scores_only_the_rest(
    tiny_model, smol_tokenizer, monkeypatch
) -> None:
    config = MethodConfig(max_new_tokens=3, batch_size=8)  # 8 rows per batch over 4 examples: 2 prompts
    prompts = [f"Prompt number {i}." for i in range(5)]
    saves: list[dict] = []
    bench = Workbench(tiny_model, smol_tokenizer, TASK, TRAIN, config, on_progress=saves.append)
    scored = bench.score(prompts)
    assert [len(save["scores"]) for save in saves] == [2, 4, 5]
    assert [s.prompt for s in scored] == prompts and bench.evaluated == 5

    measured: list[list[str]] = []
    real = Workbench._measure

    def spy(self, todo):
        measured.append(list(todo))
        return real(self, todo)

    monkeypatch.setattr(Workbench, "_measure", spy)
    resumed = Workbench(tiny_model, smol_tokenizer, TASK, TRAIN, config, saved=saves[0])  # killed after one batch
    again = resumed.score(prompts)
    assert measured == [prompts[2:4], prompts[4:]]
    assert [(s.prompt, s.accuracy, s.correct) for s in again] == [(s.prompt, s.accuracy, s.correct) for s in scored]
    assert resumed.evaluated == 5


def test_the_dev_choice_takes_the_best_on_dev_and_on_a_tie_the_one_training_preferred() -> None:
    assert best_on_dev([0.5, 0.75, 0.75, 0.25]) == 1
    assert best_on_dev([0.5, 0.5]) == 0
    assert best_on_dev([0.0, 0.0, 0.25]) == 2

"""Text-feedback prompt optimizers, run with the same local model as task model and optimizer.

Each is a function (bench: Workbench) -> (best Scored, history). Meta-prompts follow the papers'
templates, shortened where a small model's context and attention are the limit. Every candidate
prompt is scored on the training examples by `Workbench.score` (accuracy, ties broken by answer
cross-entropy); a method stops when it has scored `config.budget` candidates, or when its replies
stop yielding new usable prompts.
"""

from __future__ import annotations

from greater.methods.common import Scored, Workbench, clip

# give up when this many meta-prompt rounds in a row produce no new prompt (a model that never
# writes a usable prompt must not loop forever)
MAX_IDLE_ROUNDS = 3


def zs_cot(bench: Workbench) -> tuple[Scored, list[dict]]:
    """Zero-shot chain of thought: the fixed prompt "Let's think step by step." (no search)."""
    (scored,) = bench.score([bench.config.init_prompt], counted=False)
    return scored, [_entry(0, "fixed", scored)]


APE_INDUCTION = (
    "I gave a friend an instruction and {n} inputs. The friend read the instruction and wrote an output for "
    "every one of the inputs. Here are the input-output pairs:\n\n{demos}\n"
    "What was the instruction? Write only the instruction, in one sentence."
)
APE_RESAMPLE = (
    "Generate a variation of the following instruction while keeping the semantic meaning.\n\n"
    "Input: {prompt}\n\nWrite only the new instruction."
)


def ape(bench: Workbench) -> tuple[Scored, list[dict]]:
    """APE (Zhou et al. 2022): induce instructions from demonstrations (half the budget), then resample
    paraphrases of the best `num_select` for the rest of the budget."""
    config, history = bench.config, []
    indices = list(range(len(bench.train)))
    induced, idle, draw = [], 0, 0
    while len(induced) < (config.budget + 1) // 2 and idle < MAX_IDLE_ROUNDS:
        want = (config.budget + 1) // 2 - len(induced)
        metas = []
        for _ in range(want):
            draw += 1
            demos = [bench.train[i] for i in bench.pick(indices, config.demos, salt=f"ape{draw}")]
            text = "\n".join(f"Input: {clip(ex.question)}\nOutput: {ex.answer}\n" for ex in demos)
            metas.append(APE_INDUCTION.format(n=len(demos), demos=text))
        found = [p for p in bench.proposals_from(metas) if p not in induced]
        induced += found[:want]
        idle = 0 if found else idle + 1
    pool = bench.score(induced)
    history += [_entry(1, "induced", s) for s in pool]
    round_, idle = 1, 0
    while bench.budget_left > 0 and pool and idle < MAX_IDLE_ROUNDS:
        round_ += 1
        top = sorted(pool, key=lambda s: s.key)[: config.num_select]
        metas = [APE_RESAMPLE.format(prompt=s.prompt) for s in top][: bench.budget_left]
        fresh = [p for p in bench.proposals_from(metas) if p not in bench.scores][: bench.budget_left]
        new = bench.score(fresh)
        history += [_entry(round_, "paraphrase", s) for s in new]
        pool += new
        idle = 0 if new else idle + 1
    if not pool:  # the model never wrote a usable instruction: the starting prompt stands
        return zs_cot(bench)[0], history
    return min(pool, key=lambda s: s.key), history


APO_GRADIENT = (
    "I'm trying to write an instruction for a task. The instruction is added after each question.\n\n"
    'My current instruction is:\n"{prompt}"\n\nBut with it the model gets the following examples wrong:\n\n'
    "{errors}\nGive a reason why the instruction could have gotten these examples wrong. Be brief."
)
APO_EDIT = (
    "I'm trying to write an instruction for a task. The instruction is added after each question.\n\n"
    'My current instruction is:\n"{prompt}"\n\nBut it gets the following examples wrong:\n\n{errors}\n'
    "Based on these examples the problem with this instruction is that {gradient}\n\n"
    "Based on the above information, write an improved instruction. Wrap it with <START> and <END>."
)


def apo(bench: Workbench) -> tuple[Scored, list[dict]]:
    """APO / ProTeGi (Pryzant et al. 2023): for each prompt in the beam, a critique of its errors on the
    training examples (the textual gradient), then `num_select` sampled edits that address it; the
    beam keeps the `beam` best prompts."""
    config = bench.config
    (start,) = bench.score([config.init_prompt], counted=False)
    beam, history, round_, idle = [start], [_entry(0, "start", start)], 0, 0
    while bench.budget_left > 0 and idle < MAX_IDLE_ROUNDS:
        round_ += 1
        new: list[Scored] = []
        for parent in beam:
            if bench.budget_left - len(new) <= 0:
                break
            errors = _cases(bench, parent, f"apo{round_}:{parent.prompt}")
            (gradient,) = bench.complete([APO_GRADIENT.format(prompt=parent.prompt, errors=errors)])
            meta = APO_EDIT.format(prompt=parent.prompt, errors=errors, gradient=clip(gradient, 400))
            n = min(config.num_select, bench.budget_left - len(new))
            fresh = [p for p in bench.proposals_from([meta] * n) if p not in bench.scores][:n]
            scored = bench.score(fresh)
            history += [_entry(round_, "edit", s, parent=parent.prompt, gradient=gradient) for s in scored]
            new += scored
        beam = sorted({s.prompt: s for s in beam + new}.values(), key=lambda s: s.key)[: config.beam]
        idle = 0 if new else idle + 1
    return beam[0], history


PE2_INSPECT = (
    "A prompt is a text that instructs the model to generate a specific output. The prompt is added after "
    "the input text, and the model then writes its reasoning and answer.\n\n"
    'Current prompt: "{prompt}"\nFull template: "<input>{joiner} {prompt}"\n\n'
    "Here are examples with the model's reasoning, whether its answer was right, and the correct answer:\n\n"
    "{cases}\nFor each example, inspect the reasoning step by step: is the answer correct? If not, what went "
    "wrong, and is the prompt describing the task precisely? Suggest changes to the prompt."
)
PE2_PROPOSE = (
    "{inspect}\n\nYour analysis:\n{analysis}\n\nNow carefully review your analysis and write a new, improved "
    "prompt for the task. Wrap it with <START> and <END>."
)


def pe2(bench: Workbench) -> tuple[Scored, list[dict]]:
    """PE2 (Ye et al. 2023): a meta-prompt with the current best prompt, its template and examples with the
    model's reasoning asks the model to inspect them step by step, then to write `num_select` revised
    prompts; the best scored prompt is carried to the next round."""
    config = bench.config
    (best,) = bench.score([config.init_prompt], counted=False)
    history, round_, idle = [_entry(0, "start", best)], 0, 0
    while bench.budget_left > 0 and idle < MAX_IDLE_ROUNDS:
        round_ += 1
        inspect = PE2_INSPECT.format(
            prompt=best.prompt, joiner=config.joiner, cases=_cases(bench, best, f"pe2{round_}", all_cases=True)
        )
        (analysis,) = bench.complete([inspect])
        n = min(config.num_select, bench.budget_left)
        meta = PE2_PROPOSE.format(inspect=inspect, analysis=clip(analysis, 600))
        scored = bench.score([p for p in bench.proposals_from([meta] * n) if p not in bench.scores][:n])
        history += [_entry(round_, "revision", s, parent=best.prompt, analysis=analysis) for s in scored]
        best = min([best, *scored], key=lambda s: s.key)
        idle = 0 if scored else idle + 1
    return best, history


TEXTGRAD_LOSS = (
    "Below are a question, a model's reasoning and the correct answer. Evaluate the reasoning critically: "
    "say concisely what is wrong or missing.\n\nQuestion: {question}\nReasoning: {reasoning}\n"
    "Correct answer: {answer}"
)
TEXTGRAD_BACKWARD = (
    "You are part of an optimization system. The instruction below is added after every question given to a "
    "language model.\n<VARIABLE>{prompt}</VARIABLE>\n\nHere is feedback on the model's answers with this "
    "instruction:\n<FEEDBACK>{losses}</FEEDBACK>\n\nExplain how the instruction should change to fix these "
    "problems. Be concise."
)
TEXTGRAD_UPDATE = (
    "Here is an instruction to improve:\n<VARIABLE>{prompt}</VARIABLE>\n\nHere is feedback on it:\n"
    "<FEEDBACK>{gradient}</FEEDBACK>\n\nWrite an improved instruction that addresses the feedback. Send the "
    "improved instruction between <IMPROVED_VARIABLE> and </IMPROVED_VARIABLE>."
)


def textgrad(bench: Workbench) -> tuple[Scored, list[dict]]:
    """TextGrad-style (Yuksekgonul et al. 2024): a textual loss (a critique of each reasoning on a
    minibatch), backpropagated to the prompt as feedback text, applied by a textual-gradient-descent
    update sampled `num_select` times; the update is kept only when it scores better on the
    training examples (TextGrad's validation-and-revert)."""
    config = bench.config
    (current,) = bench.score([config.init_prompt], counted=False)
    history, round_, idle = [_entry(0, "start", current)], 0, 0
    while bench.budget_left > 0 and idle < MAX_IDLE_ROUNDS:
        round_ += 1
        batch = _minibatch(bench, current, f"tg{round_}")
        losses = bench.complete(
            [
                TEXTGRAD_LOSS.format(
                    question=clip(bench.train[i].question),
                    reasoning=clip(current.reasonings[i], 300),
                    answer=bench.train[i].answer,
                )
                for i in batch
            ]
        )
        feedback = "\n".join(f"- {clip(text, 200)}" for text in losses)
        (gradient,) = bench.complete([TEXTGRAD_BACKWARD.format(prompt=current.prompt, losses=feedback)])
        n = min(config.num_select, bench.budget_left)
        meta = TEXTGRAD_UPDATE.format(prompt=current.prompt, gradient=clip(gradient, 400))
        scored = bench.score([p for p in bench.proposals_from([meta] * n) if p not in bench.scores][:n])
        history += [_entry(round_, "update", s, parent=current.prompt, gradient=gradient) for s in scored]
        current = min([current, *scored], key=lambda s: s.key)
        idle = 0 if scored else idle + 1
    return current, history


def _minibatch(bench: Workbench, scored: Scored, salt: str) -> list[int]:
    """Up to `demos` training examples, the prompt's errors first (all examples when it has none)."""
    wrong = [i for i, ok in enumerate(scored.correct) if not ok]
    return bench.pick(wrong or list(range(len(bench.train))), bench.config.demos, salt)


def _cases(bench: Workbench, scored: Scored, salt: str, all_cases: bool = False) -> str:
    """The examples shown in a meta-prompt: errors only (APO), or a mix with the reasoning (PE2)."""
    indices = (
        bench.pick(list(range(len(bench.train))), bench.config.demos, salt)
        if all_cases
        else _minibatch(bench, scored, salt)
    )
    return "\n".join(bench.example_text(i, scored) for i in indices)


def _entry(round_: int, kind: str, scored: Scored, **extra: str) -> dict:
    return {"round": round_, "kind": kind, "prompt": scored.prompt, "accuracy": scored.accuracy, "ce": scored.ce} | {
        k: v.strip()[:600] for k, v in extra.items()
    }

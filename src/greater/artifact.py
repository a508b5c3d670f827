"""prompt.json: a run's prompt as a portable artifact, and what can be made from it.

Every `greater optimize` run writes `prompt.json` next to `result.json`. It holds everything needed to
use the prompt elsewhere and to score it again exactly (`greater evaluate --prompt-file prompt.json`):

    format            "greater-prompt/1"
    prompt, prompt_ids, joiner      the user turn is question + joiner + " " + prompt (placement after-question)
    placement         where the prompt goes: after-question, before-question (prompt, blank line,
                      question) or system (the system turn's text); absent in older files: after-question
    extractor, answer_type, choices the sentence after the reasoning; the answer follows after one space
    messages          the chat as the model saw it, with {question} and {reasoning} placeholders
    rendered          the same through the tokenizer's chat template (the exact text of the context)
    model             id, kind (gguf | folder | hub), and a hash or revision (see `model_identity`)
    tokenizer         sha256 of its vocabulary, special tokens and chat template
    task              name, data_dir, task_options, split (seed, sizes, fingerprint) and the split scored
    evaluation        max_new_tokens, batch_size, greedy decoding
    scores            train (selection) score, dev accuracy, test accuracy before and after
    method, greater_version
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import yaml

from greater import __version__
from greater.errors import GreaterError, setting_name
from greater.evaluate import evaluate
from greater.inference.layout import AFTER_QUESTION, ChatLayout, chat_messages
from greater.inference.model import EMBEDDED_MODEL, cache_root, embedded_gguf_path, load_model, model_label, model_name
from greater.runs import PROMPT_JSON, read_json, split_sizes, write_atomic
from greater.tasks import Example, resolve_task
from greater.tasks.answers import LABELS, normalizer_for
from greater.tasks.base import first_answer_span

FORMAT = "greater-prompt/1"
FILE = PROMPT_JSON
QUESTION = "{question}"
REASONING = "{reasoning}"
EXPORT_FORMATS = ("messages", "promptfoo", "text")
_CHUNK = 1 << 20


# --- identities -----------------------------------------------------------------------------------


def model_identity(name: str | None, model: object = None) -> dict:
    """What model a prompt was made with, so a user can tell whether theirs is the same.

    GGUF file (and the embedded model): sha256 of the file. Local folder: sha256 over config.json's bytes,
    the weights index's bytes (if any) and the name and size of every weight file (*.safetensors, *.bin,
    *.pt, *.gguf) — sizes rather than contents, so a multi-GB folder is identified without reading it.
    Hub id: the commit the weights were loaded from (`revision`).
    """
    label = model_label(name)
    embedded = name in ("", EMBEDDED_MODEL, "embedded") or model_name(label) is None
    path = embedded_gguf_path() if embedded else Path(name).expanduser()
    if path.is_file() or path.is_dir():
        gguf = path.is_file()
        return {
            "id": label,
            "kind": "gguf" if gguf else "folder",
            "path": str(path.resolve()),
            "sha256": file_sha256(path) if gguf else folder_sha256(path),
            "hash_of": "the GGUF file"
            if gguf
            else "config.json, the weights index and each weight file's name and size",
        }
    revision = getattr(getattr(model, "config", None), "_commit_hash", None)
    return {"id": label, "kind": "hub", "revision": revision}


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) in greater's cache (GGUF files are large)."""
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:24]
    memo = cache_root() / "sha256" / key
    try:
        value = memo.read_text(encoding="utf-8").strip()
        if re.fullmatch(r"[0-9a-f]{64}", value):
            return value
    except OSError:
        pass
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    value = digest.hexdigest()
    try:  # atomically: another process hashing the same file at once must never read half of it
        memo.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(memo, value)
    except (OSError, GreaterError):
        pass  # only a cache
    return value


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


def folder_sha256(folder: Path) -> str:
    """See `model_identity`: config.json and the weights index by content, weight files by name and size."""
    digest = hashlib.sha256()
    for name in ("config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / name).is_file():
            digest.update(name.encode() + b"\0" + (folder / name).read_bytes() + b"\0")
    for path in sorted(folder.iterdir()):
        if path.suffix in _WEIGHT_SUFFIXES and path.is_file():
            digest.update(f"{path.name}\0{path.stat().st_size}\n".encode())
    return digest.hexdigest()


def tokenizer_sha256(tokenizer: object) -> str:
    """sha256 of the vocabulary (token -> id, in id order), the special tokens and the chat template:
    two tokenizers with the same hash turn the same text into the same ids and the same chat."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])  # type: ignore[attr-defined]
    data = {
        "vocab": vocab,
        "special": sorted(getattr(tokenizer, "all_special_tokens", [])),
        "chat_template": getattr(tokenizer, "chat_template", None),
    }
    return hashlib.sha256(json.dumps(data, ensure_ascii=False).encode()).hexdigest()


# --- the artifact ---------------------------------------------------------------------------------


def chat(
    tokenizer: object, prompt: str, joiner: str, extractor: str, placement: str = AFTER_QUESTION
) -> tuple[list[dict], str]:
    """(messages, rendered): the chat with {question} and {reasoning} placeholders, as the model sees it.

    The prompt is where `placement` puts it (after-question: the user turn is question + joiner + " " +
    prompt); the assistant turn is the reasoning, then one space and the extractor, after which the
    model writes the answer (after one more space).
    """
    layout = ChatLayout.from_tokenizer(tokenizer, placement)
    system, user = layout.user_texts(QUESTION, joiner, prompt)
    assistant = f"{REASONING} {extractor}"
    before_user = "" if system is None else system + layout.between_text
    rendered = layout.prefix_text + before_user + user + layout.mid_text + assistant
    return [*chat_messages(system, user), {"role": "assistant", "content": assistant}], rendered


def user_message(data: dict) -> str:
    """A prompt.json's user message (with its {question} placeholder)."""
    return next(m["content"] for m in data["messages"] if m.get("role") == "user")


def build(
    *,
    info: dict,
    prompt: str,
    prompt_ids: list[int],
    joiner: str,
    task: object,
    model: object,
    tokenizer: object,
    scores: dict,
    method: str = "greater",
    placement: str = AFTER_QUESTION,
) -> dict:
    """The prompt.json of a finished run; `info` is the run's run.json (model, task, config, split)."""
    config = info.get("config", {})
    messages, rendered = chat(tokenizer, prompt, joiner, task.extractor, placement)  # type: ignore[attr-defined]
    options = info.get("task_options") or {}
    choices = options.get("choices") or LABELS.get(task.answer_type)  # type: ignore[attr-defined]
    return {
        "format": FORMAT,
        "prompt": prompt,
        "prompt_ids": list(prompt_ids),
        "joiner": joiner,
        "placement": placement,
        "extractor": task.extractor,  # type: ignore[attr-defined]
        "answer_type": task.answer_type,  # type: ignore[attr-defined]
        "choices": list(choices) if isinstance(choices, list | tuple) else choices,
        "messages": messages,
        "rendered": rendered,
        "model": model_identity(model_name(info["model"]), model),
        "tokenizer": {"sha256": tokenizer_sha256(tokenizer), "hash_of": "vocabulary, special tokens, chat template"},
        "task": {
            "name": info["task"],
            "data_dir": info.get("data_dir"),
            "task_options": options,
            "split": info.get("split", {}),
            "scored_on": "test",
        },
        "evaluation": {
            "max_new_tokens": config.get("max_new_tokens"),
            "batch_size": config.get("batch_size"),
            "decoding": "greedy",
        },
        "scores": scores,
        "method": method,
        "greater_version": __version__,
    }


def is_artifact_file(path: Path) -> bool:
    """Whether a --prompt-file is a prompt.json rather than one prompt per line: a .json suffix, or
    text that starts with "{" (a prompt line never needs to)."""
    if path.suffix.lower() == ".json":
        return True
    try:
        with path.open("r", encoding="utf-8") as fh:
            return fh.read(64).lstrip().startswith("{")
    except (OSError, UnicodeDecodeError):
        return False


def read(path: Path) -> dict:
    """A prompt.json, checked for format and the fields evaluation needs; a run folder means its prompt.json."""
    if path.is_dir():
        path = path / FILE
        if not path.is_file():
            raise GreaterError(f"{path.parent} has no {FILE} (runs finished by greater 0.1.0 or later have one)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GreaterError(f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GreaterError(f"{path} is not valid JSON ({exc}); is it a greater prompt.json?") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise GreaterError(f"{path} is not a greater prompt.json (format {found!r}, expected {FORMAT!r})")
    for key, kind in (("prompt", str), ("joiner", str), ("task", dict), ("evaluation", dict), ("messages", list)):
        if not isinstance(data.get(key), kind):
            raise GreaterError(f"{path}: {key!r} is missing or not a {kind.__name__}")
    return data


def prompt_to_score(run: Path | None, prompt_file: Path | None) -> tuple[dict, str]:
    """(run, label) for `greater evaluate`: a finished run's result.json (`run`, a folder) or a
    prompt.json given as `prompt_file`, in result.json's shape; ({}, "") when neither is given (a
    `prompt_file` of one prompt per line is not read here)."""
    from_file = prompt_file is not None and is_artifact_file(prompt_file)
    if from_file and run is not None:
        raise GreaterError(
            f"give {setting_name('run')} DIR or a prompt.json as {setting_name('prompt_file')}, not both"
        )
    if from_file:
        return as_run(read(prompt_file)), "prompt.json"
    if run is None:
        return {}, ""
    result = read_json(run / "result.json")
    if not isinstance(result.get("prompt"), str):
        raise GreaterError(f"{run / 'result.json'} has no 'prompt'")
    return result, "run"


def as_run(data: dict) -> dict:
    """The artifact in the shape of a result.json, for `greater evaluate` (its prompt on its own split)."""
    task = data["task"]
    return {
        "prompt": data["prompt"],
        "task": task.get("name"),
        "data_dir": task.get("data_dir"),
        "task_options": task.get("task_options") or {},
        "split": task.get("split") or {},
        "config": {
            "joiner": data["joiner"],
            "placement": data.get("placement", AFTER_QUESTION),
            "max_new_tokens": data["evaluation"].get("max_new_tokens"),
            "batch_size": data["evaluation"].get("batch_size"),
        },
        "model": _model_to_load(data.get("model") or {}),
    }


def _model_to_load(model: dict) -> str | None:
    """The model a prompt.json names: its local path where that still exists (the id may be relative to
    where the run was started), else its id."""
    path = model.get("path")
    return path if path and Path(path).exists() else model.get("id")


# --- export ---------------------------------------------------------------------------------------


def export_text(data: dict) -> str:
    return data["prompt"] + "\n"


def export_messages(data: dict) -> str:
    """The chat messages with their placeholders and what a caller needs to read the answer, as JSON."""
    keys = ("messages", "extractor", "answer_type", "choices", "prompt", "joiner", "placement")
    return json.dumps({key: data.get(key) for key in keys}, indent=2, ensure_ascii=False) + "\n"


_PROVIDER_SHIM = '''"""promptfoo provider: greater's own evaluation of prompt.json's prompt (from `greater export`)."""

from greater.artifact import promptfoo_call_api as call_api  # noqa: F401
'''
_ASSERT_SHIM = '''"""promptfoo assertion: greater's answer matcher after the extractor (from `greater export`)."""

from greater.artifact import promptfoo_get_assert as get_assert  # noqa: F401
'''


def export_promptfoo(data: dict, artifact_path: Path, config_path: Path, model: str | None, python: str) -> None:
    """A promptfoo config at `config_path`, with greater_provider.py and greater_assert.py beside it.

    The prompt is the run's chat before the assistant's turn (its system message, where the prompt is
    there, and its user message) with the question as the variable {{question}}; the tests are
    the run's test examples (vars question, answer); the provider is greater itself (the prompt's model,
    greedy reasoning capped as in the run, then the extractor); the assertion applies greater's answer
    matcher to what follows the extractor. `python` runs both (greater must be importable there).
    """
    tests = [{"vars": {"question": ex.question, "answer": ex.answer}} for ex in scored_examples(data)]
    folder = config_path.parent
    folder.mkdir(parents=True, exist_ok=True)
    sent = [
        {"role": m["role"], "content": m["content"].replace(QUESTION, "{{question}}")}
        for m in data["messages"]
        if m.get("role") != "assistant"
    ]
    config = {
        "description": f"greater prompt for {data['task']['name']} ({data.get('method', 'greater')})",
        "prompts": [{"id": "greater", "label": "greater", "raw": json.dumps(sent)}],
        "providers": [
            {
                "id": "file://greater_provider.py",
                "label": "greater",
                "config": {
                    "prompt_json": str(artifact_path.resolve()),
                    "model": model,
                    "pythonExecutable": python,
                },
            }
        ],
        "defaultTest": {
            "assert": [
                {
                    "type": "python",
                    "value": "file://greater_assert.py",
                    "config": {"prompt_json": str(artifact_path.resolve()), "pythonExecutable": python},
                }
            ]
        },
        "tests": tests,
        # the provider scores all test questions in one batch, once per worker process
        "evaluateOptions": {"maxConcurrency": 1},
    }
    write_atomic(folder / "greater_provider.py", _PROVIDER_SHIM)
    write_atomic(folder / "greater_assert.py", _ASSERT_SHIM)
    write_atomic(config_path, yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=1000))


def scored_examples(data: dict) -> list:
    """The examples the artifact's test accuracy was measured on (its task, split and seed)."""
    task_info = data["task"]
    task = resolve_task(task_info["name"], task_info.get("data_dir"), task_info.get("task_options") or {})
    split = task_info.get("split") or {}
    return getattr(task.splits(*split_sizes(split), split.get("seed", 0)), task_info.get("scored_on", "test"))


# --- promptfoo's side: provider and assertion ------------------------------------------------------

_LOADED: dict = {}


def _answers(prompt_json: str, model_name: str | None) -> dict[str, dict]:
    """greater's predictions for the artifact's scored examples, by question; computed once per process,
    in one batch as `greater evaluate` does (so each answer is the one the run's accuracy counted)."""
    key = (prompt_json, model_name)
    if key not in _LOADED:
        data = read(Path(prompt_json))
        task_info = data["task"]
        task = resolve_task(task_info["name"], task_info.get("data_dir"), task_info.get("task_options") or {})
        model, tokenizer = load_model(model_name)
        ev = data["evaluation"]
        result = evaluate(
            model,
            tokenizer,
            task,
            scored_examples(data),
            data["prompt"],
            joiner=data["joiner"],
            max_new_tokens=ev.get("max_new_tokens") or 1024,
            batch_size=ev.get("batch_size") or 32,
            placement=data.get("placement", AFTER_QUESTION),
        )
        _LOADED[key] = (data, {p["question"]: p for p in result.predictions}, model, tokenizer, task)
    return _LOADED[key]


def promptfoo_call_api(prompt: str, options: dict, context: dict) -> dict:
    """promptfoo's python provider hook: the model's reasoning, the extractor and its answer, as text.

    The rendered prompt must be the artifact's user message for this question (else an error result),
    so what promptfoo shows is what greater ran.
    """
    config = options.get("config") or {}
    question = (context.get("vars") or {}).get("question", "")
    data, predictions, model, tokenizer, task = _answers(config["prompt_json"], config.get("model"))
    expected = user_message(data).replace(QUESTION, question)
    try:
        sent = json.loads(prompt)
        user = next(m["content"] for m in sent if m.get("role") == "user") if isinstance(sent, list) else prompt
    except (json.JSONDecodeError, StopIteration, KeyError, TypeError):
        user = prompt
    if user != expected:
        return {"error": f"the prompt sent is not prompt.json's user message: {user[:200]!r}"}
    prediction = predictions.get(question)
    if prediction is None:  # a question outside the run's split: scored on its own
        ev = data["evaluation"]
        one = evaluate(
            model,
            tokenizer,
            task,
            [Example(question, str((context.get("vars") or {}).get("answer", "")))],
            data["prompt"],
            joiner=data["joiner"],
            max_new_tokens=ev.get("max_new_tokens") or 1024,
            placement=data.get("placement", AFTER_QUESTION),
        )
        prediction = one.predictions[0]
    return {"output": f"{prediction['reasoning']} {data['extractor']} {prediction['output'].strip()}"}


def promptfoo_get_assert(output: str, context: dict) -> dict:
    """promptfoo's python assertion hook: greater's matcher for the answer type on what follows the
    extractor (its first line), against the test's `answer`."""
    config = (context.get("config") or {}) if isinstance(context, dict) else {}
    provider_config = ((context.get("provider") or {}).get("config") or {}) if isinstance(context, dict) else {}
    prompt_json = config.get("prompt_json") or provider_config.get("prompt_json") or os.environ.get("GREATER_PROMPT")
    data = read(Path(prompt_json)) if prompt_json else None
    extractor = data["extractor"] if data else ""
    normalize = normalizer_for(data["answer_type"], data.get("choices")) if data else normalizer_for("text")
    gold = str((context.get("vars") or {}).get("answer", ""))
    at = output.rfind(extractor) if extractor else -1
    if at < 0:
        return {"pass": False, "score": 0.0, "reason": "the output has no extractor sentence"}
    predicted = normalize(first_answer_span(output[at + len(extractor) :]))
    ok = predicted == normalize(gold)
    return {"pass": ok, "score": float(ok), "reason": f"predicted {predicted!r}, gold {normalize(gold)!r}"}

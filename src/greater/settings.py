"""Every setting a user can give, once: what it is (a config field, or a run's task, model, split or
custom-task option), where run.json keeps it, which commands take it, and how `greater compare` reads
it after a GReaTer method's name (`greater:nll_weight=0.5`).

The command line (`CONFIG_FLAGS`, `names`), run.json and the resume check (`RUN_KEYS`, `Setting.stored`),
the two configs' shared fields (`SHARED`) and compare's method options (`TUNABLE`) are all read from
`SETTINGS`; a new setting is one row here plus its field (and its `add_argument` in `greater.cli_flags`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from greater.tasks.custom import OPTIONS as TASK_OPTIONS

Parser = Callable[[str], object]  # text -> value; raises ValueError or KeyError on bad text
START_SEPARATOR = "|"  # between the starts of compare's `greater:starts=zs-cot|direct` (no "," or ":" in a text there)


def _boolean(text: str) -> bool:
    """ "true" or "false", any case; anything else raises KeyError."""
    return {"true": True, "false": False}[text.lower()]


def _starts(text: str) -> list[str]:
    """Starting prompts separated by `START_SEPARATOR`; an empty one raises ValueError."""
    starts = [part.strip() for part in text.split(START_SEPARATOR)]
    if not all(starts):
        raise ValueError(text)
    return starts


@dataclass(frozen=True)
class Setting:
    """One setting. `name` is the field and the flag's dest (`--name-with-dashes`).

    scopes: "greater": a `GreaterConfig` field `greater optimize` sets; "baseline": a `MethodConfig`
        field `greater optimize --method BASELINE` sets; "compare": a `MethodConfig` field `greater
        compare` sets; "shared": a field both configs hold with the same meaning and default (GReaTer's
        settings at a comparison's budget copy these: `methods.greater_settings`); "run": what defines a
        run besides its config (its task, model, split sizes, custom-task options).
    stored: where run.json keeps it (a config field: ("config", name)).
    parse: how compare reads it after a GReaTer method's name (None: not an option there).
    """

    name: str
    scopes: frozenset[str]
    stored: tuple[str, ...] = ()
    parse: Parser | None = None

    def __post_init__(self) -> None:
        if not self.stored:
            object.__setattr__(self, "stored", ("config", self.name))

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _row(
    name: str, *scopes: str, stored: tuple[str, ...] = (), parse: Callable[[str], object] | None = None
) -> Setting:
    return Setting(name, frozenset(scopes), stored, parse)


SETTINGS: tuple[Setting, ...] = (
    # GReaTer's search options, which a compare row may set after its method's name (in this order)
    _row("num_select", "greater", "baseline", "shared", parse=int),
    _row("nll_weight", "greater", parse=float),
    _row("answer_temperature", "greater", parse=float),
    _row("top_k", "greater", parse=int),
    _row("top_q", "greater", parse=int),
    _row("selection", "greater", parse=str),
    _row("selection_nll_weight", parse=float),  # no flag: compare's option only
    _row("candidate_nll", "greater", parse=_boolean),
    _row("patience", "greater", parse=int),
    _row("keep_best", "greater", parse=_boolean),
    _row("starts", "greater", parse=_starts),
    _row("placement", "greater", "baseline", "compare", "shared", parse=str),
    # the budget and what every method shares
    _row("steps", "greater", "baseline", "compare", "shared"),
    _row("max_new_tokens", "greater", "baseline", "compare", "shared"),
    _row("batch_size", "greater", "baseline", "compare", "shared"),
    _row("keep_top", "greater", "compare", "shared"),
    _row("seed", "greater", "baseline", "shared"),
    # where the search starts (a baseline's own default: ZS-CoT's prompt after ".")
    _row("init_prompt", "greater", "baseline"),
    _row("joiner", "greater", "baseline"),
    # GReaTer's other settings
    _row("filler", "greater"),
    _row("grad_batch_size", "greater"),
    _row("dev_keeps_initial", "greater"),
    # the baselines' own
    _row("evaluations", "baseline", "compare"),
    _row("meta_max_new_tokens", "compare"),
    # what defines a run besides its config
    _row("task", "run", stored=("task",)),
    _row("model", "run", stored=("model",)),
    _row("train", "run", stored=("split", "train")),
    _row("test", "run", stored=("split", "test")),
    _row("dev", "run", stored=("split", "dev")),
    *(_row(key, "run", stored=("task_options", key)) for key in TASK_OPTIONS),
)


def names(scope: str) -> tuple[str, ...]:
    """The settings of `scope` (see `Setting`), in `SETTINGS`' order."""
    return tuple(s.name for s in SETTINGS if scope in s.scopes)


CONFIG_FLAGS = names("greater")  # the GreaterConfig fields `greater optimize` sets (flag dest == field)
SHARED = names("shared")
RUN_KEYS: dict[str, tuple[str, ...]] = {s.name: s.stored for s in SETTINGS if "run" in s.scopes}
TUNABLE: dict[str, Parser] = {s.name: s.parse for s in SETTINGS if s.parse is not None}

"""The search space: `--set` values -> settings fixed for every trial and the dimensions swept.

`--set lora.r=8,16,64` (a comma list) and `--set training.learning_rate=1e-4..1e-3` (a range, for
random or TPE search) are dimensions; any other `--set` applies to every trial. A range of a
learning rate is searched on a log scale. Every value is checked against the settings schema here,
before anything is written, so a bad one fails in one line naming its key.

Grid search walks the points in order (the last dimension fastest); random and TPE search ask
Optuna for each trial's values, from a study rebuilt from the trials recorded so far (so a resumed
sweep goes on where it stopped, with no Optuna database).
"""

from __future__ import annotations

import itertools
import math
import types
import typing
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict

from phi3e2e.errors import UserError
from phi3e2e.workflow.settings import FinetuneSettings, build_settings, parse_override

Search = Literal["grid", "random", "tpe"]
SEARCHES: tuple[str, ...] = typing.get_args(Search)
RANGE = ".."


class Dimension(BaseModel):
    """One swept setting: a list of values, or a numeric range [low, high]."""

    model_config = ConfigDict(frozen=True)

    key: str
    values: Optional[list[Any]] = None
    low: Optional[float] = None
    high: Optional[float] = None
    integer: bool = False
    log: bool = False

    @property
    def is_range(self) -> bool:
        return self.values is None

    def describe(self) -> str:
        if self.values is not None:
            return f"{self.key} in {{{', '.join(str(v) for v in self.values)}}}"
        scale = ", log scale" if self.log else ""
        return f"{self.key} in [{_number(self.low, self.integer)}, {_number(self.high, self.integer)}]{scale}"


class SearchSpace(BaseModel):
    model_config = ConfigDict(frozen=True)

    fixed: list[str]  # `--set` texts applied to every trial
    dimensions: list[Dimension]
    search: Search
    trials: int

    def grid_point(self, number: int) -> dict[str, Any]:
        """Trial `number`'s values (1-based) in grid order."""
        points = itertools.product(*(d.values for d in self.dimensions))
        point = next(itertools.islice(points, number - 1, None))
        return {d.key: value for d, value in zip(self.dimensions, point)}

    def set_args(self, values: dict[str, Any]) -> list[str]:
        """The `--set` arguments of one trial: the fixed ones, then its values."""
        return [*self.fixed, *(f"{key}={_yaml_scalar(value)}" for key, value in values.items())]


def parse_space(set_args: list[str], search: Optional[str], trials: Optional[int]) -> SearchSpace:
    """The space `--set`, `--search` and `--trials` describe, or one line naming what is wrong."""
    fixed, dimensions = [], []
    for text in set_args:
        key, _, raw = text.partition("=")
        key, raw = key.strip(), raw.strip()
        dimension = _dimension(key, raw, text)
        if dimension is None:
            _check_value(*parse_override(text))
            fixed.append(text)
            continue
        if any(d.key == key for d in dimensions):
            raise UserError(f"--set {key}: given twice as a dimension; list every value once ({key}=a,b,c)")
        dimensions.append(dimension)
    if not dimensions:
        raise UserError("--set: nothing to sweep; give a setting a comma list (--set lora.r=8,16) or a range "
                        "(--set training.learning_rate=1e-4..1e-3)")  # fmt: skip
    swept = {d.key for d in dimensions}
    for text in fixed:
        if (key := parse_override(text)[0]) in swept:
            raise UserError(f"--set {key}: both fixed and swept; give it once")
    ranges = [d for d in dimensions if d.is_range]
    search = search or ("tpe" if ranges else "grid")
    if search not in SEARCHES:
        raise UserError(f"--search {search}: choose from {', '.join(SEARCHES)}")
    if search == "grid" and ranges:
        d = ranges[0]
        raise UserError(f"--set {d.key}: a range ({_number(d.low, d.integer)}{RANGE}{_number(d.high, d.integer)}) "
                        f"needs --search random or tpe; grid search takes a list ({d.key}=a,b,c)")  # fmt: skip
    if trials is not None and trials < 1:
        raise UserError(f"--trials {trials}: at least 1")
    if search == "grid":
        size = math.prod(len(d.values) for d in dimensions)
        if trials is not None and trials > size:
            raise UserError(f"--trials {trials}: the grid has only {size} points "
                            f"({' x '.join(str(len(d.values)) for d in dimensions)}); leave --trials out to run them all")
        trials = trials or size
    elif trials is None:
        raise UserError(f"--trials: {search} search needs the number of trials to run (each is a whole fine-tune)")
    return SearchSpace(fixed=fixed, dimensions=dimensions, search=search, trials=trials)


def _dimension(key: str, raw: str, text: str) -> Optional[Dimension]:
    """The dimension `KEY=a,b,c` or `KEY=lo..hi` describes; None for a fixed value."""
    kind = _field_kind(key)
    if kind is None or kind is str or raw.startswith(("[", "{")):
        return None  # an unknown key fails in _check_value; text (a template) and lists are never split
    if "," in raw:
        values = [parse_override(f"{key}={piece}")[1] for piece in raw.split(",")]
        if any(value == "" for value in values):
            raise UserError(f"--set {text!r}: an empty value in the list")
        values = [_check_value(key, value) for value in values]  # as the settings hold them: "1e-4" -> 0.0001
        if len(set(map(str, values))) != len(values):
            raise UserError(f"--set {key}: a value is listed twice")
        return Dimension(key=key, values=values)
    if RANGE not in raw:
        return None
    low_text, _, high_text = raw.partition(RANGE)
    if kind not in (int, float):
        raise UserError(f"--set {key}={raw}: a range needs a number setting; list the values instead ({key}=a,b)")
    try:
        low, high = float(low_text), float(high_text)
    except ValueError:
        raise UserError(f"--set {key}={raw}: a range is two numbers, LOW{RANGE}HIGH (e.g. 1e-4{RANGE}1e-3)") from None
    integer = kind is int
    if integer and not (low.is_integer() and high.is_integer()):
        raise UserError(f"--set {key}={raw}: {key} is a whole number; give whole bounds")
    if not low < high:
        raise UserError(f"--set {key}={raw}: the low end must be below the high end")
    for bound in (low, high):
        _check_value(key, int(bound) if integer else bound)
    log = key.endswith("learning_rate")
    if log and low <= 0:
        raise UserError(f"--set {key}={raw}: a learning rate range is searched on a log scale; both ends above 0")
    return Dimension(key=key, low=low, high=high, integer=integer, log=log)


def _field_kind(key: str) -> Optional[type]:
    """int, float, bool or str for a setting's type, Literal for a choice, list for a list; None: unknown key."""
    section, _, field = key.partition(".")
    section_field = FinetuneSettings.model_fields.get(section)
    info = section_field.annotation.model_fields.get(field) if section_field else None
    if info is None:
        return None
    annotation = info.annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))  # Optional[X] -> X
    if typing.get_origin(annotation) is Literal:
        return Literal
    return annotation if annotation in (int, float, bool, str) else list


def _check_value(key: str, value: Any) -> Any:
    """The value as the settings hold it; an unknown key or a bad value: the settings' own one-line error."""
    section, _, field = key.partition(".")
    return getattr(getattr(build_settings("other", {key: value}), section), field)


def _number(value: Optional[float], integer: bool) -> str:
    return str(int(value)) if integer and value is not None else f"{value:g}"


def _yaml_scalar(value: Any) -> str:
    """A value as `--set` reads it back (workflow.settings.parse_override)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    return str(value)


# --- random and TPE: Optuna ---------------------------------------------------------------------


def optuna_values(space: SearchSpace, history: list[tuple[dict[str, Any], str, Optional[float]]],
                  number: int) -> dict[str, Any]:  # fmt: skip
    """Trial `number`'s values from Optuna, given the trials so far as (values, status, objective).

    The sampler's seed is the trial number: a resumed sweep asks the same question it would have."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.RandomSampler(seed=number) if space.search == "random" else \
        optuna.samplers.TPESampler(seed=number)  # fmt: skip
    study = optuna.create_study(direction="minimize", sampler=sampler)
    distributions = {d.key: _distribution(d) for d in space.dimensions}
    states = {"succeeded": optuna.trial.TrialState.COMPLETE, "pruned": optuna.trial.TrialState.PRUNED}
    for values, status, objective in history:
        state = states.get(status, optuna.trial.TrialState.FAIL)
        if state == optuna.trial.TrialState.COMPLETE and objective is None:
            state = optuna.trial.TrialState.FAIL
        study.add_trial(optuna.trial.create_trial(
            params=values, distributions=distributions, state=state,
            value=objective if state == optuna.trial.TrialState.COMPLETE else None,
        ))  # fmt: skip
    trial = study.ask(distributions)
    return {d.key: trial.params[d.key] for d in space.dimensions}


def _distribution(d: Dimension):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if d.values is not None:
        return CategoricalDistribution(d.values)
    if d.integer:
        return IntDistribution(int(d.low), int(d.high), log=d.log)
    return FloatDistribution(d.low, d.high, log=d.log)

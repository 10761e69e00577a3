"""Typed YAML configs.

Every spec and recipe is a tree of frozen dataclasses deriving from `Config`. `load_config` reads
YAML into that tree and reports *all* problems at once, each with the file and the field path
(``recipe.yaml: lm.steps: expected int, got 'ten'``, ``lm.learning_rate: must be > 0, got -0.002``),
so a wrong field fails at load time rather than an hour into training. A number must be finite
everywhere, a field declared with `bounded` must lie in its bounds, and a class's `rules` say what
must hold across its fields; building a config in Python checks the same and names the fields.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import numbers
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Iterable, Literal, TypeVar, Union

import yaml

from unitok.core.errors import UnitokError
from unitok.core.text_files import read_utf8

T = TypeVar("T")


class ConfigError(UnitokError):
    """A config file does not match the structure it configures."""


class ConfigProblems(ConfigError):
    """Every problem of one config object, as (field path or None, what must hold) pairs."""

    def __init__(self, problems: list[tuple[str | None, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{field}: {message}" if field else message for field, message in problems))


@dataclasses.dataclass(frozen=True)
class Bounds:
    """The range a number must lie in (None: unbounded on that side)."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def holds(self, value: float) -> bool:
        return ((self.gt is None or value > self.gt) and (self.ge is None or value >= self.ge)
                and (self.lt is None or value < self.lt) and (self.le is None or value <= self.le))

    def __str__(self) -> str:
        low = f"[{_shown(self.ge)}" if self.ge is not None else f"({_shown(self.gt)}" if self.gt is not None else None
        high = f"{_shown(self.le)}]" if self.le is not None else f"{_shown(self.lt)})" if self.lt is not None else None
        if low and high:
            return f"in {low}, {high}"
        if low:
            return f"{'>=' if self.ge is not None else '>'} {low[1:]}"
        return f"{'<=' if self.le is not None else '<'} {high[:-1]}"


def _shown(number: float) -> str:
    """A bound or value as a message shows it: integers whole, floats short."""
    return str(number) if isinstance(number, int) else f"{number:g}"


def bounded(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING, gt: float | None = None,
            ge: float | None = None, lt: float | None = None, le: float | None = None) -> Any:
    """A `Config` field whose number (or each number of its list, or each value of its mapping) must
    lie in these bounds; None passes."""
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={"bounds": Bounds(gt, ge, lt, le)})


class Config:
    """Base of every typed config: building one, from YAML or in Python, checks that every number
    is finite, that every `bounded` field lies in its bounds and that the class's `rules` hold, and
    raises `ConfigProblems` with all that do not. `MOVED` maps the fields of older versions to
    what a file should say now; `LATER` names fields added after configs of the class were first
    hashed, which stay out of `to_dict(…, stable=True)` (stage keys, tokenizer hashes) at their defaults."""

    MOVED: ClassVar[dict[str, str]] = {}
    LATER: ClassVar[frozenset[str]] = frozenset()

    def rules(self) -> Iterable[tuple[bool, str | None, str]]:
        """(holds, field or None, what must hold) for what spans fields or is not a range."""
        return ()

    def __post_init__(self):
        problems = _type_problems(self)
        mistyped = {path.split(".")[0].split("[")[0] for path, _ in problems}
        problems += [(path, message) for path, message in _range_problems(self) if path.split(".")[0].split("[")[0]
                     not in mistyped]
        if not problems:  # rules read several fields: only once each has its type and range
            problems = [(f, message) for holds, f, message in self.rules() if not holds]
        if problems:
            raise ConfigProblems(problems)


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_problems(config: Any) -> list[tuple[str, str]]:
    """Check every field against its declared type as a YAML file's value would be (a config built
    in Python gets the same errors), and store the converted value (a list for a tuple field)."""
    errors: list[str] = []
    hints = _type_hints(type(config))
    for f in dataclasses.fields(config):
        before = len(errors)
        value = _convert(hints[f.name], getattr(config, f.name), f.name, errors)
        if len(errors) == before:
            object.__setattr__(config, f.name, value)
    return [tuple(error.split(": ", 1)) for error in errors]


def _range_problems(config: Any) -> list[tuple[str, str]]:
    """Every number of a `bounded` field (or of its list or mapping) outside its bounds."""
    problems = []
    for f in dataclasses.fields(config):
        value, bounds = getattr(config, f.name), f.metadata.get("bounds")
        if bounds is None:
            continue
        items = (value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple))
                 else [(None, value)])
        for key, number in items:
            if isinstance(number, numbers.Real) and not isinstance(number, bool) and not bounds.holds(number):
                where = f.name if key is None else f"{f.name}.{key}" if isinstance(value, dict) else f"{f.name}[{key}]"
                problems.append((where, f"must be {bounds}, got {_shown(number)}"))
    return problems


def read_yaml(path: str | Path) -> dict:
    """The mapping a YAML config file holds ({} for an empty file); ConfigError naming the file
    when it is missing, not UTF-8, not YAML or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(read_utf8(path, ConfigError))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of fields, got {_describe(data)}")
    return data or {}


def load_config(path: str | Path, cls: type[T]) -> T:
    """Read the YAML file at `path` into an instance of dataclass `cls`."""
    return from_dict(cls, read_yaml(path), source=str(path))


def from_dict(cls: type[T], data: Any, source: str = "<config>") -> T:
    """Build dataclass `cls` from plain data, raising one ConfigError listing every problem."""
    errors: list[str] = []
    value = _convert(cls, data, "", errors)
    if errors:
        raise ConfigError("\n".join(f"{source}: {e}" for e in errors))
    return value


def to_dict(config: Any, stable: bool = False) -> Any:
    """The plain-data form of a config tree (inverse of `from_dict`). `stable`: without the
    `Config.LATER` fields that hold their defaults, what a config hashes as (stage keys, tokenizer
    hashes), so that adding a setting keeps every key and saved hash made before it."""
    if dataclasses.is_dataclass(config):
        later = getattr(config, "LATER", frozenset()) if stable else frozenset()
        return {f.name: to_dict(getattr(config, f.name), stable) for f in dataclasses.fields(config)
                if f.name not in later or getattr(config, f.name) != _default(f)}
    if isinstance(config, (list, tuple)):
        return [to_dict(v, stable) for v in config]
    if isinstance(config, dict):
        return {k: to_dict(v, stable) for k, v in config.items()}
    return config


def _default(field: dataclasses.Field) -> Any:
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default


def merged(base: dict, overrides: dict) -> dict:
    """`base` with `overrides` merged in, mapping by mapping (a non-mapping value replaces)."""
    out = dict(base)
    for key, value in overrides.items():
        out[key] = merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def config_hash(*parts: Any) -> str:
    """A short stable hash of configs and plain values, used to decide whether a stage must re-run."""
    blob = json.dumps([to_dict(p, stable=True) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if not isinstance(value, (dict, list)) else type(value).__name__


def _convert(tp: Any, value: Any, where: str, errors: list[str]) -> Any:
    label = where or "<root>"
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(tp, value, where, errors)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        shaped = [o for o in options if _container_of(o) is not None and isinstance(value, _container_of(o))]
        if len(shaped) == 1:  # one option takes this shape (mapping / list): report its own errors
            return _convert(shaped[0], value, where, errors)
        for option in options:
            trial: list[str] = []
            converted = _convert(option, value, where, trial)
            if not trial:
                return converted
        if len(options) == 1:  # Optional[X]: report X's own error
            return _convert(options[0], value, where, errors)
        errors.append(f"{label}: expected one of {[_type_name(o) for o in options]}, got {_describe(value)}")
        return None
    if origin is Literal:
        if value not in args:
            errors.append(f"{label}: expected one of {list(args)}, got {_describe(value)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            errors.append(f"{label}: expected a list, got {_describe(value)}")
            return None
        item_type = args[0] if args else Any
        items = [_convert(item_type, v, f"{where}[{i}]", errors) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            errors.append(f"{label}: expected a mapping, got {_describe(value)}")
            return None
        key_type, value_type = args if args else (Any, Any)
        return {k: _convert(value_type, v, f"{where}.{k}" if where else str(k), errors) for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float:
        number = value
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if isinstance(number, (int, float)) and not isinstance(number, bool):
            if math.isfinite(number):
                return float(number)
            errors.append(f"{label}: expected a finite number, got {number}")
            return None
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp in (str, bool):
        if isinstance(value, tp):
            return value
    elif isinstance(tp, type) and isinstance(value, tp):
        return value
    errors.append(f"{label}: expected {_type_name(tp)}, got {_describe(value)}")
    return None


def _convert_dataclass(cls: Any, value: Any, where: str, errors: list[str]) -> Any:
    label = where or "<root>"
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        errors.append(f"{label}: expected a mapping for {cls.__name__}, got {_describe(value)}")
        return None
    errors_before = len(errors)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    moved = getattr(cls, "MOVED", {})  # fields of older unitok versions -> where they went
    for key in value:
        if key in moved:
            errors.append(f"{_join(where, key)}: {moved[key]}")
        elif key not in fields:
            errors.append(f"{_join(where, key)}: unknown field (expected one of: {', '.join(fields)})")
    kwargs = {}
    for name, field in fields.items():
        if name in value:
            kwargs[name] = _convert(hints[name], value[name], _join(where, name), errors)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            errors.append(f"{_join(where, name)}: missing required field ({_type_name(hints[name])})")
    if len(errors) > errors_before:
        return None
    try:
        return cls(**kwargs)
    except ConfigProblems as err:  # `Config` checks: every problem with its own path
        errors += [f"{_join(where, field)}: {message}" if field else f"{label}: {message}"
                   for field, message in err.problems]
    except (TypeError, ValueError) as err:  # other __post_init__ checks
        errors.append(f"{label}: {err}")
    return None


def _container_of(tp: Any) -> type | None:
    """dict for dataclasses and mappings, list for lists and tuples, None for scalars."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) or origin is dict:
        return dict
    return list if origin in (list, tuple) else None


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(tp)))
    return getattr(tp, "__name__", str(tp))

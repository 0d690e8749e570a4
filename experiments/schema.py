"""Typed config schemas and their validation.

Every experiment declares its keys as a frozen dataclass whose fields are made
with :func:`param`, which records a docstring and a range check next to the
default. :func:`validate` turns the plain mapping Hydra composed into that
dataclass, or raises :class:`ConfigError` naming the first bad key, what was
given and what is allowed. The entry point prints that error as one line and
exits with code 2 before any work is done.

Checks that involve several keys go in a ``check(self)`` method of the schema
that raises :class:`ConfigError`; :func:`validate` calls it.

A library's own settings dataclass (``armor_jax.solver.armor.ArmorConfig``) can be a
field of a schema as it is, so that its settings are one nested config node
with the library's defaults: its fields' docs come from the ``Attributes:``
section of its docstring, and a ``ValueError`` with ``key`` and ``message``
attributes raised when it is built (``armor_jax.errors.SettingError``) is
reported as a config error on that key.

The schemas are the only home of the default values: :func:`as_container`
turns a schema's default instance into the plain mapping that the entry point
registers with Hydra's ConfigStore as the experiment's config.

Example::

    @dataclasses.dataclass(frozen=True)
    class Config:
      horizon: int = param(10_000, "rounds per run", check=gt(0))
      eps: float = param(0.9, "erasure probability", check=in_range(0, 1, hi_open=True))
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any, Callable, Mapping

__all__ = [
    "ConfigError", "InputError", "Check", "param", "field_of", "validate", "describe",
    "as_container", "field_docs", "gt", "ge", "in_range", "one_of", "each", "nonempty",
]


class ConfigError(ValueError):
  """A config value is unknown, of the wrong type, or out of range."""

  def __init__(self, key: str, message: str):
    self.key = key
    self.message = message
    super().__init__(f"config error: key '{key}': {message}")


class InputError(ValueError):
  """A model, tokenizer or data file named by the config cannot be used (one line, exit 2)."""


@dataclasses.dataclass(frozen=True)
class Check:
  """A predicate on a value with a human description of what it allows."""
  fn: Callable[[Any], bool]
  allowed: str

  def __call__(self, value) -> bool:
    return bool(self.fn(value))


def gt(lo) -> Check:
  return Check(lambda v: v > lo, f"a number > {lo}")


def ge(lo) -> Check:
  return Check(lambda v: v >= lo, f"a number >= {lo}")


def in_range(lo, hi, *, lo_open: bool = False, hi_open: bool = False) -> Check:
  left, right = "(" if lo_open else "[", ")" if hi_open else "]"

  def fn(v):
    ok_lo = v > lo if lo_open else v >= lo
    ok_hi = v < hi if hi_open else v <= hi
    return ok_lo and ok_hi

  return Check(fn, f"a number in {left}{lo}, {hi}{right}")


def one_of(*choices) -> Check:
  return Check(lambda v: v in choices, "one of " + ", ".join(map(str, choices)))


def each(check: Check, empty: bool = False) -> Check:
  """Applies ``check`` to every element of a sequence (an empty one fails unless ``empty``)."""
  if empty:
    return Check(lambda vs: all(check(v) for v in vs), f"a list, each {check.allowed}")
  return Check(lambda vs: len(vs) > 0 and all(check(v) for v in vs),
               f"a non-empty list, each {check.allowed}")


def nonempty() -> Check:
  return Check(lambda vs: len(vs) > 0, "a non-empty list")


def param(default, doc: str, *, check: Check | None = None):
  """A schema field: ``default``, a one-line ``doc`` and an optional ``check``."""
  kwargs: dict[str, Any] = {"metadata": {"doc": doc, "check": check}}
  if isinstance(default, (list, dict, set)):
    raise TypeError("use a tuple for sequence defaults (schemas are frozen)")
  if dataclasses.is_dataclass(default):
    kwargs["default_factory"] = lambda: default
  else:
    kwargs["default"] = default
  return dataclasses.field(**kwargs)


def field_of(schema: type, name: str, default=dataclasses.MISSING):
  """Another schema's field ``name`` (its doc and check), with its default or ``default``:
  a schema that shares a key with another (or gives it another default) declares it once."""
  f = next(f for f in dataclasses.fields(schema) if f.name == name)
  if default is dataclasses.MISSING:
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
  return param(default, f.metadata["doc"], check=f.metadata["check"])


def _type_name(tp) -> str:
  origin = typing.get_origin(tp)
  if origin in (tuple, list):
    (inner, *_) = typing.get_args(tp) or (Any,)
    return f"a list of {_type_name(inner)}"
  if origin in (typing.Union, types.UnionType):
    return " or ".join(_type_name(a) for a in typing.get_args(tp))
  if tp is type(None):
    return "null"
  if dataclasses.is_dataclass(tp):
    return "a mapping"
  return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(
      tp, getattr(tp, "__name__", str(tp)))


def _coerce(value, tp, key: str):
  """Returns ``value`` as type ``tp`` or raises ConfigError."""
  origin = typing.get_origin(tp)
  if tp is Any:
    return value
  if origin in (typing.Union, types.UnionType):
    for arg in typing.get_args(tp):
      try:
        return _coerce(value, arg, key)
      except ConfigError:
        continue
    raise ConfigError(key, f"must be {_type_name(tp)}; got {value!r}")
  if tp is type(None):
    if value is None:
      return None
    raise ConfigError(key, f"must be null; got {value!r}")
  if origin in (tuple, list):
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
      # A scalar where a list is expected is read as a one-element list, so
      # that `eps=0.9` and `eps=[0.5,0.9]` both work on the command line.
      value = [value]
    args = typing.get_args(tp)
    inner = args[0] if args else Any
    return tuple(_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value))
  if dataclasses.is_dataclass(tp):
    if not isinstance(value, Mapping):
      raise ConfigError(key, f"must be a mapping; got {value!r}")
    return validate(tp, value, prefix=key + ".")
  if tp is bool:
    if isinstance(value, bool):
      return value
    raise ConfigError(key, f"must be true/false; got {value!r}")
  if tp is int:
    if isinstance(value, bool) or not isinstance(value, int):
      if isinstance(value, float) and value.is_integer():
        return int(value)
      raise ConfigError(key, f"must be an integer; got {value!r}")
    return value
  if tp is float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise ConfigError(key, f"must be a number; got {value!r}")
    return float(value)
  if tp is str:
    if not isinstance(value, str):
      raise ConfigError(key, f"must be a string; got {value!r}")
    return value
  raise TypeError(f"unsupported schema type {tp!r} for key {key}")


def validate(schema: type, values: Mapping[str, Any], *, prefix: str = ""):
  """Builds ``schema`` from ``values``, raising ConfigError on the first problem.

  Args:
    schema: a dataclass whose fields were made with :func:`param`.
    values: a plain mapping (e.g. ``OmegaConf.to_container(cfg, resolve=True)``).
    prefix: prepended to key names in error messages (for nested schemas).

  Returns:
    An instance of ``schema``.
  """
  hints = typing.get_type_hints(schema)
  fields = {f.name: f for f in dataclasses.fields(schema)}
  unknown = sorted(set(values) - set(fields))
  if unknown:
    raise ConfigError(prefix + unknown[0],
                      "unknown key; allowed keys: " + ", ".join(sorted(fields)))
  kwargs = {}
  for name, f in fields.items():
    key = prefix + name
    if name not in values:
      continue
    value = _coerce(values[name], hints[name], key)
    check = f.metadata.get("check")
    if check is not None and value is not None and not check(value):
      raise ConfigError(key, f"must be {check.allowed}; got {values[name]!r}")
    kwargs[name] = value
  try:
    instance = schema(**kwargs)
  except ValueError as e:   # a library settings class refusing a value (SettingError)
    if not (hasattr(e, "key") and hasattr(e, "message")):
      raise
    raise ConfigError(prefix + e.key, e.message) from None
  # Checks across several keys: a schema may define check(self), raising ConfigError.
  if hasattr(instance, "check"):
    try:
      instance.check()
    except ConfigError as e:
      raise ConfigError(prefix + e.key, e.message) from None
  return instance


def field_docs(schema: type) -> dict[str, str]:
  """One line of documentation per field: the ``param`` doc, else the docstring's
  ``Attributes:`` entry (Google style, as a library dataclass has it)."""
  docs: dict[str, str] = {}
  lines = (schema.__doc__ or "").splitlines()
  try:
    start = next(i for i, l in enumerate(lines) if l.strip() == "Attributes:")
  except StopIteration:
    start = len(lines)
  indent, names = None, []
  for line in lines[start + 1:]:
    depth = len(line) - len(line.lstrip())
    m = re.match(r"^\s{2,}(\w+(?:, \w+)*):\s*(.*)$", line)
    if m and (indent is None or depth <= indent):        # an entry: "name: text"
      indent, names = depth, m.group(1).split(", ")
      for n in names:
        docs[n] = m.group(2).strip()
    elif indent is not None and line.strip() and depth > indent:   # its continuation
      for n in names:
        docs[n] += " " + line.strip()
    elif line.strip():                                    # the section has ended
      break
  for f in dataclasses.fields(schema):
    if f.metadata.get("doc"):
      docs[f.name] = f.metadata["doc"]
  return docs


def describe(schema, *, prefix: str = "") -> list[tuple[str, str, Any, str]]:
  """Rows (key, type, value, doc) of a schema (values: its defaults) or of an instance."""
  rows = []
  cls = schema if isinstance(schema, type) else type(schema)
  hints = typing.get_type_hints(cls)
  docs = field_docs(cls)
  for f in dataclasses.fields(cls):
    tp = hints[f.name]
    if not isinstance(schema, type):
      value = getattr(schema, f.name)
    else:
      value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if dataclasses.is_dataclass(tp):
      rows += describe(value if not isinstance(schema, type) else tp, prefix=prefix + f.name + ".")
      continue
    doc = docs.get(f.name, "")
    check = f.metadata.get("check")
    if check is not None:
      doc = f"{doc} ({check.allowed})"
    rows.append((prefix + f.name, _type_name(tp), value, doc))
  return rows


def as_container(value) -> Any:
  """A schema instance (or any value in one) as plain dicts, lists and scalars."""
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    return {f.name: as_container(getattr(value, f.name)) for f in dataclasses.fields(value)}
  if isinstance(value, (tuple, list)):
    return [as_container(v) for v in value]
  return value

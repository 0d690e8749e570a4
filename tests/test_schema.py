"""Config schemas: validation messages, coercion, and the YAML configs against their schemas."""
import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from experiments import harness
from experiments.schema import ConfigError, each, ge, in_range, one_of, param, validate

CONF = Path(__file__).resolve().parent.parent / "conf"


@dataclasses.dataclass(frozen=True)
class Inner:
  rate: float = param(0.5, "a rate", check=in_range(0, 1, hi_open=True))


@dataclasses.dataclass(frozen=True)
class Outer:
  n: int = param(3, "count", check=ge(1))
  xs: tuple[float, ...] = param((0.1,), "values", check=each(in_range(0, 1)))
  kind: str = param("a", "kind", check=one_of("a", "b"))
  inner: Inner = param(Inner(), "nested")
  maybe: str | None = param(None, "optional")


def test_defaults_and_coercion():
  cfg = validate(Outer, {"n": 4.0, "xs": 0.5, "inner": {"rate": 0}})
  assert cfg == Outer(n=4, xs=(0.5,), inner=Inner(rate=0.0))
  assert isinstance(cfg.inner.rate, float)


@pytest.mark.parametrize("values, key, fragment", [
    ({"m": 1}, "m", "unknown key; allowed keys: inner, kind, maybe, n, xs"),
    ({"n": 0}, "n", "must be a number >= 1; got 0"),
    ({"n": 1.5}, "n", "must be an integer"),
    ({"n": True}, "n", "must be an integer"),
    ({"xs": [0.2, 1.2]}, "xs", "each a number in [0, 1]"),
    ({"xs": []}, "xs", "a non-empty list"),
    ({"xs": ["a"]}, "xs[0]", "must be a number"),
    ({"kind": "c"}, "kind", "one of a, b"),
    ({"inner": {"rate": 1.0}}, "inner.rate", "[0, 1)"),
    ({"inner": {"bad": 1}}, "inner.bad", "unknown key"),
    ({"inner": 3}, "inner", "must be a mapping"),
])
def test_errors_name_the_key(values, key, fragment):
  with pytest.raises(ConfigError) as e:
    validate(Outer, values)
  assert e.value.key == key
  assert fragment in str(e.value)
  assert "\n" not in str(e.value)


def _schema_keys(schema, prefix=""):
  keys = set()
  hints = typing.get_type_hints(schema)
  for f in dataclasses.fields(schema):
    if dataclasses.is_dataclass(hints[f.name]):
      keys |= _schema_keys(hints[f.name], prefix + f.name + ".")
    else:
      keys.add(prefix + f.name)
  return keys


def _yaml_keys(d, prefix=""):
  keys = set()
  for k, v in d.items():
    if isinstance(v, dict):
      keys |= _yaml_keys(v, prefix + k + ".")
    else:
      keys.add(prefix + k)
  return keys


@pytest.mark.parametrize("name", sorted(harness.EXPERIMENTS))
def test_experiment_yaml_lists_every_key_and_validates(name):
  """Every schema key is in the YAML (so `key=value` works) and the YAML is valid."""
  data = yaml.safe_load((CONF / "experiment" / f"{name}.yaml").read_text())
  data = {k: v for k, v in data.items() if k not in ("defaults", "hydra")}
  exp = harness.get_experiment(name)
  assert _yaml_keys(data) == _schema_keys(exp.schema)
  validate(exp.schema, data)

"""Config schemas: validation messages, coercion, and the schemas as the registered configs."""
import dataclasses
from pathlib import Path

import pytest

import experiments.main  # noqa: F401  (registers the configs)
from armor_jax.solver.armor import ArmorConfig
from experiments import armor_prune, harness, tour
from experiments.schema import (ConfigError, as_container, describe, each, field_docs, ge,
                                in_range, one_of, param, validate)

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


def _compose(overrides):
  from hydra import compose, initialize_config_dir
  from omegaconf import OmegaConf, open_dict
  with initialize_config_dir(config_dir=str(CONF), version_base=None):
    cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
  name = cfg.hydra.runtime.choices["experiment"]
  with open_dict(cfg):
    del cfg["hydra"]
  return name, harness.split_and_validate(name, OmegaConf.to_container(cfg, resolve=True))


@pytest.mark.parametrize("name", sorted(harness.EXPERIMENTS))
def test_the_registered_config_is_the_schema(name):
  """`experiment=NAME` composes to exactly the schema's defaults, through Hydra and back."""
  schema = harness.get_experiment(name).schema
  assert _compose([f"experiment={name}"]) == (name, (harness.RunConfig(), schema()))
  assert validate(schema, as_container(schema())) == schema()


def test_tour_overrides_reach_the_nested_configs():
  _, (_, cfg) = _compose(["armor_prune.armor.iters=3", "erasure_bandit.n_seeds=4"])
  assert cfg.armor_prune.armor == dataclasses.replace(tour.Config().armor_prune.armor, iters=3)
  assert cfg.erasure_bandit == dataclasses.replace(tour.Config().erasure_bandit, n_seeds=4)
  assert cfg.collab_bandit == tour.Config().collab_bandit


def test_a_library_settings_class_is_a_config_node():
  cfg = validate(armor_prune.Config, {"armor": {"iters": 3.0, "scheme": "official"}})
  assert cfg.armor == ArmorConfig(iters=3, scheme="official")
  for values, key, fragment in [({"block_size": 0}, "armor.block_size", "an integer >= 1"),
                                ({"scheme": "adam"}, "armor.scheme", "one of exact, official"),
                                ({"lr": -1.0}, "armor.lr", "a number > 0"),
                                ({"foo": 1}, "armor.foo", "unknown key"),
                                ({"iters": "many"}, "armor.iters", "an integer")]:
    with pytest.raises(ConfigError) as e:
      validate(armor_prune.Config, {"armor": values})
    assert e.value.key == key and fragment in str(e.value), str(e.value)


def test_every_setting_of_a_library_class_is_documented():
  docs = field_docs(ArmorConfig)
  assert set(docs) == {f.name for f in dataclasses.fields(ArmorConfig)}
  assert all(len(d) > 10 and "\n" not in d for d in docs.values()), docs
  assert "largest divisor" in docs["block_size"]     # a continuation line is joined


# Values an experiment sets on purpose in its ARMOR node; every other setting has one
# default, ArmorConfig's.
_ARMOR_OVERRIDES = {("tour", "armor_prune.armor"): {"iters"},
                    ("bench_armor_layer", "official"): {"block_size", "scheme", "iters"},
                    ("bench_armor_layer", "exact"): {"block_size", "iters"},
                    ("bench_armor_scale", "armor"): {"iters"}}


def _armor_nodes(cfg, prefix=""):
  for f in dataclasses.fields(cfg):
    value = getattr(cfg, f.name)
    if isinstance(value, ArmorConfig):
      yield prefix + f.name, value
    elif dataclasses.is_dataclass(value):
      yield from _armor_nodes(value, prefix + f.name + ".")


@pytest.mark.parametrize("name", sorted(harness.EXPERIMENTS))
def test_armor_settings_have_one_default(name):
  cfg = harness.get_experiment(name).schema()
  flat = {k for k, *_ in describe(cfg)}
  assert not any(k.split(".")[-1].startswith("armor_") for k in flat), flat
  for node, value in _armor_nodes(cfg):
    changed = {f.name for f in dataclasses.fields(ArmorConfig)
               if getattr(value, f.name) != getattr(ArmorConfig(), f.name)}
    assert changed == _ARMOR_OVERRIDES.get((name, node), set()), (node, changed)


def test_a_config_is_validated_and_preflighted_once(monkeypatch):
  calls = []
  exp = harness.Experiment("x", Outer, lambda cfg, ctx: {}, "", preflight=calls.append)
  monkeypatch.setattr(harness, "get_experiment", lambda name: exp)
  monkeypatch.setattr(harness, "_validated", {})
  first = harness.split_and_validate("x", {"n": 4, "seed": 1}, preflight=True)
  assert harness.split_and_validate("x", {"n": 4, "seed": 1}) == first   # the run, after precheck
  assert harness.split_and_validate("x", {"n": 4, "seed": 1}, preflight=True) == first
  assert calls == [Outer(n=4)]
  harness.split_and_validate("x", {"n": 5, "seed": 1}, preflight=True)
  assert calls == [Outer(n=4), Outer(n=5)]

"""The library's two user errors: an input it cannot use and a setting out of range.

:class:`InputError` is raised by the loaders (file missing, not the format, truncated,
a tensor of the wrong shape or dtype, a NaN weight), by the text readers (too short for
one window) and by the pruning pipeline (a block whose weights are not finite).
:class:`SettingError` is raised by a settings dataclass (``ArmorConfig``,
``PruneConfig``) built with a value it does not allow; it names the setting, so a
config system can point at the key. The experiment harness prints either as one line
and exits with code 2.
"""


import numpy as np


class InputError(ValueError):
  """A model, tokenizer or text file cannot be used; the message names the file and why."""


class SettingError(ValueError):
  """A setting is out of range: ``key`` names it, ``message`` says what it allows."""

  def __init__(self, key: str, allowed: str, value):
    self.key = key
    self.message = f"must be {allowed}; got {value!r}"
    super().__init__(f"{key}: {self.message}")


def check_settings(obj, rules) -> None:
  """Raises SettingError for the first ``(name, predicate, allowed)`` rule ``obj`` breaks."""
  for name, ok, allowed in rules:
    value = getattr(obj, name)
    if not ok(value):
      raise SettingError(name, allowed, value)


def nonfinite(a) -> str:
  """"" for an all-finite array, else "holds N NaN/Inf value(s) (first at (i, j))"."""
  bad = ~np.isfinite(np.asarray(a, np.float32))
  if not bad.any():
    return ""
  first = tuple(int(i) for i in np.argwhere(bad)[0])
  return f"holds {int(bad.sum())} NaN/Inf value(s) (first at {first})"

"""The error a run reports as an input problem: a model, tokenizer or text it cannot use.

Raised by the loaders (file missing, not the format, truncated, a tensor of the wrong
shape or dtype, a NaN weight), by the text readers (too short for one window) and by
the pruning pipeline (a block whose weights are not finite). The experiment harness
prints its message as one line and exits with code 2, as for a config error.
"""


import numpy as np


class InputError(ValueError):
  """A model, tokenizer or text file cannot be used; the message names the file and why."""


def nonfinite(a) -> str:
  """"" for an all-finite array, else "holds N NaN/Inf value(s) (first at (i, j))"."""
  bad = ~np.isfinite(np.asarray(a, np.float32))
  if not bad.any():
    return ""
  first = tuple(int(i) for i in np.argwhere(bad)[0])
  return f"holds {int(bad.sum())} NaN/Inf value(s) (first at {first})"

"""Progress bars for long jitted work (called from inside jit via host callbacks)."""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator

from tqdm.auto import tqdm


@contextlib.contextmanager
def chunk_bar(desc: str, n_chunks: int, *, enabled: bool = True,
              horizon: int | None = None) -> Iterator[Callable[[int], None] | None]:
  """Yields a callback ``done(k)`` (k chunks finished) driving a tqdm bar, or None.

  Pass the callback as ``progress=`` to :func:`bandits.core.simulate`; it is
  called once per chunk of rounds from inside the jitted scan.
  """
  if not enabled:
    yield None
    return
  n_chunks = max(1, min(n_chunks, horizon or n_chunks))
  bar = tqdm(total=n_chunks, desc=desc, unit="chunk", file=sys.stderr, leave=False,
             mininterval=0.5)

  def done(k) -> None:
    # update() respects mininterval; refresh() would not. Several devices may report the
    # same chunk (one call each), so only forward moves count.
    bar.update(max(0, int(k) - bar.n))

  try:
    yield done
  finally:
    bar.close()

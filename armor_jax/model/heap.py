"""glibc's heap settings for a streamed pruning run: freed memory goes back at once, except
inside ARMOR's iterations, which reuse the same temporaries every iteration.

glibc maps each allocation above its mmap threshold on its own and unmaps it when freed.
By default it raises that threshold after the first large free and keeps later buffers in
its heap, so a streamed run's resident size would grow past what it holds by the XLA
temporaries of every block. :func:`return_freed_memory` pins the threshold at 128 KiB.
That costs page faults wherever a compiled loop allocates and frees buffers of a few MiB
on every call: ARMOR's iterations on a 1536x576 layer run about a third slower under the
pin. :func:`iterating` lifts it while ARMOR iterates (buffers up to 16 MiB, and a heap
top up to 64 MiB, are kept) and then gives the freed memory back. Both are no-ops off
glibc, and :func:`iterating` is one wherever the pin was not set.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
PINNED_MMAP = 128 * 1024            # glibc's default trim threshold as well
ITERATING_MMAP = 16 * 2**20
ITERATING_TRIM = 64 * 2**20

_state = {"pinned": False}


@functools.cache
def _libc():
  try:
    return ctypes.CDLL("libc.so.6")
  except OSError:
    return None


def return_freed_memory() -> None:
  """Pins glibc's mmap threshold at 128 KiB: every larger buffer is unmapped when freed."""
  libc = _libc()
  try:
    if libc is not None and libc.mallopt(_M_MMAP_THRESHOLD, PINNED_MMAP):
      _state["pinned"] = True
  except AttributeError:
    pass


@contextlib.contextmanager
def iterating():
  """Inside: freed buffers up to 16 MiB stay in the heap for reuse (where
  :func:`return_freed_memory` pinned the threshold). On exit: the pin is restored and the
  heap's free pages are returned (``malloc_trim``)."""
  libc = _libc() if _state["pinned"] else None
  if libc is None:
    yield
    return
  libc.mallopt(_M_MMAP_THRESHOLD, ITERATING_MMAP)
  libc.mallopt(_M_TRIM_THRESHOLD, ITERATING_TRIM)
  try:
    yield
  finally:
    libc.mallopt(_M_TRIM_THRESHOLD, PINNED_MMAP)
    libc.mallopt(_M_MMAP_THRESHOLD, PINNED_MMAP)
    libc.malloc_trim(0)

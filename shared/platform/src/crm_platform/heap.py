"""The cyclic garbage collector's settings for a service process: what start-up built frozen out
of the collections, a higher young threshold, and none at all while a batch is built.

Its own module (not ``crm_platform.app``) so a process that serves no HTTP, the analytics
worker, uses it without importing FastAPI, httpx and the rest of the app's stack (about 12 MB
of its resident memory: docs/performance.md, "Thirteenth session, memory").
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


def freeze_startup_heap() -> None:
    """Leave what start-up built (modules, models, schemas, clients) out of later collections.

    The cyclic garbage collector's full collections walk every tracked object; a service's
    start-up leaves hundreds of thousands of them that live as long as the process. Frozen
    (``gc.freeze``), they are no longer walked: per-request and per-event work that
    allocates many small objects (an import batch, a bulk capture) spent about a fifth of
    its CPU in those walks before (docs/performance.md).

    Then the young generation is collected every :data:`GC_YOUNG_THRESHOLD` net allocations
    instead of Python's 700: a 500-lead bulk batch keeps tens of thousands of objects alive
    while it is built, and at 700 each of them was walked by several young collections and
    promoted into the full collections' heap (11-15% of leads' CPU per bulk lead, a
    third of that at 10,000; docs/performance.md, ninth session). Objects without reference
    cycles are freed by their reference counts either way; only cyclic garbage waits longer.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


# Net allocations between young-generation collections in a service process (Python's 700).
GC_YOUNG_THRESHOLD = 10_000
# The same while a batch is built (:func:`batch_heap`): above what a 500-lead bulk batch (two
# at once) keeps alive, so its transient objects are freed before any collection walks them.
GC_BATCH_YOUNG_THRESHOLD = 100_000


class _BatchHeap:
    """How many batches are open in this process, and the threshold the first one found."""

    open = 0
    found: tuple[int, int, int] = (GC_YOUNG_THRESHOLD, 10, 10)


@contextmanager
def batch_heap() -> Iterator[None]:
    """While a batch is built and committed (a bulk capture), no young collection unless
    :data:`GC_BATCH_YOUNG_THRESHOLD` net allocations pile up; the threshold found is put back
    when the last batch open in the process ends (several coroutines' batches overlap).

    A 500-lead batch keeps tens of thousands of objects (leads, events, documents) alive until
    its transaction ends and frees them by their reference counts; at :data:`GC_YOUNG_THRESHOLD`
    young collections walked them, promoted the survivors and middle ones walked them again,
    and found almost nothing to free (64 young and 6 middle collections over 20,000 bulk leads
    freed 178 objects, 0.017-0.026 ms of leads' CPU per lead; none at all with this:
    docs/performance.md, "Eleventh session, bulk"). Cyclic garbage still waits at most
    :data:`GC_BATCH_YOUNG_THRESHOLD` net allocations, and only while a batch is open.
    """
    if _BatchHeap.open == 0:
        _BatchHeap.found = gc.get_threshold()
        if _BatchHeap.found[0] < GC_BATCH_YOUNG_THRESHOLD:
            gc.set_threshold(GC_BATCH_YOUNG_THRESHOLD, *_BatchHeap.found[1:])
    _BatchHeap.open += 1
    try:
        yield
    finally:
        _BatchHeap.open -= 1
        if _BatchHeap.open == 0:
            gc.set_threshold(*_BatchHeap.found)

"""torch's intra-op thread count, set for one piece of work and restored afterwards.

The count decides CPU numerics (a sum split over 1 or 2 threads rounds differently), so a
trial's config carries it (``threads``) and every step that trains — pretraining included —
runs under it; it is process-global, hence the restore.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block on ``threads`` torch threads (0: leave the count as it is)."""
    before = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)

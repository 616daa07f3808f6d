"""Seeds derived from several integer keys, shared by training (per step) and sampling (per request)."""

from __future__ import annotations

import numpy as np

# Training's independent random streams: the first key after the seed, so no two kinds of draw share a stream.
(
    STREAM_TIME,
    STREAM_NOISE,
    STREAM_AUGMENT,
    STREAM_MODEL,
    STREAM_VALIDATION,
    STREAM_SPLIT,
    STREAM_INIT,
    STREAM_STATISTICS,
) = range(8)


def derived_seed(*keys: int) -> int:
    """A 63-bit seed that depends on every key (numpy's SeedSequence hashing), for torch and numpy generators."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint64)[0] >> 1)

"""The model tests run tiny tensors on one intra-op thread.

Their convolutions are too small to gain from a second thread, and on a busy machine
(two cores shared with other jobs) OpenMP's spinning worker threads made a ResNet-18
forward at 40x56 take 2 s instead of 0.02 s.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

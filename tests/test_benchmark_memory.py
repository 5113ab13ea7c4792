"""The benchmark's peak memory after start-up (benchmarks/common.py): its peak can be
restarted, so a step's peak is not the start-up measurement's."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
import common  # noqa: E402  pylint: disable=wrong-import-position

_MIB = 1024 * 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="Linux /proc only")
def test_the_peak_since_a_reset_forgets_what_was_freed_before_it():
    block = np.ones(192 * _MIB, np.uint8)          # resident: every page written
    with_block = common.peak_rss_since_reset_mib()
    del block
    assert common.reset_peak_rss()
    after_reset = common.peak_rss_since_reset_mib()
    assert after_reset < with_block - 150
    block = np.ones(64 * _MIB, np.uint8)
    assert common.peak_rss_since_reset_mib() > after_reset + 50
    del block

"""The busy-machine rule shared by lsvit-bench's report and lsvit compare."""

from __future__ import annotations

from lsvit.bench.machine import BUSY_LOAD_PER_CORE, NOISY_SPREAD, busy_warning


def test_quiet_machine_gets_no_warning():
    assert busy_warning([0.3, 1.9], cpus=2, spreads=[0.01, NOISY_SPREAD]) is None
    assert busy_warning([None, None], cpus=2) is None


def test_load_at_one_per_core_warns_with_the_numbers():
    warning = busy_warning([0.5, BUSY_LOAD_PER_CORE * 2], cpus=2)
    assert warning == (
        "warning: the machine is busy (load average 2.0 on 2 cores): timings are unreliable, rerun when it is idle"
    )


def test_wide_spread_warns_even_at_low_load():
    warning = busy_warning([0.1], cpus=16, spreads=[0.05, 0.6])
    assert warning is not None and "spread (IQR) up to 60% of the median" in warning and "load" not in warning

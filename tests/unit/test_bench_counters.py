"""The per-message cost bench reads the processes' own counters: check that it reads them right."""

from __future__ import annotations

import os
import time

from bench.costs import cpu_seconds, smaps, total_cpu


def test_cpu_seconds_is_this_process_user_plus_system_time():
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:  # burn some CPU so the counter has ticks to compare
        pass
    mine = os.times()
    measured = cpu_seconds(os.getpid())
    assert abs(measured - (mine.user + mine.system)) < 0.05
    assert total_cpu([os.getpid(), 2**22 + 12345]) >= measured  # a vanished process counts nothing


def test_smaps_reports_rss_pss_and_uss_in_bytes():
    figures = smaps(os.getpid())
    with open("/proc/self/status") as status:
        rss = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))
    assert figures["rss"] >= figures["pss"] >= figures["uss"] > 0
    assert abs(figures["rss"] - rss) < 8 * 2**20

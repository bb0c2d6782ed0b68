"""Page faults per call (jaxnorm.bench.faults): fresh large buffers fault, reused ones do not."""

import numpy as np
import pytest

from jaxnorm.bench import faults
from jaxnorm.bench.cases import batch_independent_cases
from jaxnorm.bench.run import run_case

pytestmark = pytest.mark.skipif(faults.resource is None, reason="needs resource.getrusage (Unix)")


def test_a_fresh_large_buffer_faults_once_per_page_and_a_reused_one_does_not():
    # 128 MiB per call: above glibc's largest mmap threshold, so each call maps
    # new pages and touches every one (at least 64 faults even with 2 MiB pages).
    fresh = faults.page_faults_per_call(lambda: np.ones(16 * 2**20), calls=3)
    kept = np.empty(16 * 2**20)
    reused = faults.page_faults_per_call(lambda: kept.fill(1.0) or kept, calls=3)
    assert fresh >= 64
    assert reused < 16 <= fresh - reused


def test_unavailable_without_getrusage(monkeypatch):
    monkeypatch.setattr(faults, "resource", None)
    assert faults.page_faults_per_call(lambda: 0) is None


def test_run_case_reports_faults_per_call():
    case = next(c for c in batch_independent_cases((2, 8, 8, 16)) if c.scheme == "rms_norm")
    row = run_case(case, repeats=2, memory=True)
    for name in ("jaxnorm", "flax"):
        for kind in ("fwd", "fwd_bwd"):
            assert row[f"{name}_{kind}_faults"] >= 0

"""Run pytest with the given arguments and print one JSON line: how many tests passed, failed, skipped.

    python benchmarks/pytest_json.py -m gpu tests/gpu        (benchmarks/gpu.sh's tests_gpu case)
"""

from __future__ import annotations

import json
import sys
import time

import pytest


class Tally:
    def __init__(self) -> None:
        self.counts = {"passed": 0, "failed": 0, "skipped": 0, "collected": 0}
        self.failures: list[str] = []

    def pytest_collection_modifyitems(self, items) -> None:
        self.counts["collected"] = len(items)

    def pytest_runtest_logreport(self, report) -> None:
        if report.when == "call" or (report.when == "setup" and not report.passed):
            key = "skipped" if report.skipped else "passed" if report.passed else "failed"
            self.counts[key] += 1
            if key == "failed":
                self.failures.append(report.nodeid)


def main(argv: list[str]) -> int:
    tally, start = Tally(), time.perf_counter()
    rc = int(pytest.main(["-q", "-p", "no:cacheprovider", *argv], plugins=[tally]))
    print(json.dumps({"case": "tests_gpu", "args": argv, "rc": rc, **tally.counts, "failures": tally.failures,
                      "seconds": round(time.perf_counter() - start, 1)}), flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

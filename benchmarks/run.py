# -*- test-case-name: tests.test_benchmarks -*-
"""
Run mailnet's benchmark suite against this checkout, on loopback only:

    python benchmarks/run.py            # the full suite (a few minutes)
    python benchmarks/run.py --short    # a smoke run (seconds)

See C{benchmarks/README.rst} and C{docs/performance.rst}.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
# This checkout's mailnet and the bench package, whatever is installed.
sys.path[:0] = [os.path.dirname(_HERE), _HERE]

from mailnetbench.driver import run  # noqa: E402

if __name__ == "__main__":
    run(sys.argv[1:])

# -*- test-case-name: tests.test_benchmarks -*-
"""
The login-flood benchmark (issue 11): honest delivery and login latency
while many connections guess passwords, on loopback only:

    python benchmarks/authflood.py                       # 150 connections, 40 s
    python benchmarks/authflood.py --sources 150         # from 150 addresses
    python benchmarks/authflood.py --checkout /work/main # another checkout's server
    python benchmarks/authflood.py --short               # a smoke run (seconds)

See C{benchmarks/README.rst} and C{docs/performance.rst}.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
# This checkout's mailnet and the bench package, whatever is installed.
sys.path[:0] = [os.path.dirname(_HERE), _HERE]

from mailnetbench.authflood import run  # noqa: E402

if __name__ == "__main__":
    run(sys.argv[1:])

# -*- test-case-name: tests.test_benchmarks -*-
"""
mailnet's benchmark suite: a load generator on Twisted, the server under
test in a subprocess, and a driver that runs bounded cases, checks that no
accepted message was lost, and reports figures beside the targets.

Run it with C{python benchmarks/run.py} (see C{benchmarks/README.rst}).
"""

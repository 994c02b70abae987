"""Quantum Suite: a DevSecOps saga orchestrator.

The application layer: settings, the CLI, the worker assembly, the embedded dev stack, the metrics endpoint and
the benchmarks. It is the only layer that reads settings; it builds every client and hands each agent what it needs.
"""

__version__ = "0.1.0"

"""Agents: one module per agent, each a class holding its clients whose bound methods are its activities.

This package knows nothing of ``events`` nor of anything above it.
"""

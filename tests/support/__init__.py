"""Helpers of the test suite itself (not of any one directory's tests)."""

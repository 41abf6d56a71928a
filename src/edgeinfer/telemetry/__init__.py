"""Counters and timings of what the server does."""

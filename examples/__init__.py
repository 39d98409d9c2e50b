"""Runnable example handlers used by the README, the demo and the tests."""

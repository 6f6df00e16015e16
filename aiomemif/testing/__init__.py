"""Helpers for testing code that uses aiomemif (and for aiomemif's own tests)."""

"""Runnable example programs (``python -m skate.examples.pi``)."""

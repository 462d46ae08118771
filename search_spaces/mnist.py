"""Keras MNIST spaces (filled in by the Keras issue)."""

from __future__ import annotations

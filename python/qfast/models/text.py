"""Kept for user code that imports ``qfast.models.text``: the paragraphs now live in
:mod:`qfast.calibration.text`."""

from __future__ import annotations

from ..calibration.text import calibration_paragraphs, heldout_paragraphs

__all__ = ["calibration_paragraphs", "heldout_paragraphs"]

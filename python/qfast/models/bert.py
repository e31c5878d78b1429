"""Kept for user code that imports ``qfast.models.bert``: the BERT forward pass is
:mod:`qfast.model.arch.bert`."""

from __future__ import annotations

from ..model.arch.bert import Bert, BertConfig

__all__ = ["Bert", "BertConfig"]

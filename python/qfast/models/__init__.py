"""Small NumPy models whose real activations calibrate and evaluate qfast's quantizers.

- :class:`Bert` (``qfast.model.arch.bert``): a BERT encoder forward pass (all-MiniLM-L6-v2 by
  default) that captures the inputs of its linear layers and evaluates replaced weights.
- :func:`calibration_paragraphs` / :func:`heldout_paragraphs` (``qfast.calibration.text``): disjoint
  sets of English Wikipedia paragraphs to calibrate on and to measure on.

This package is kept where user code imports it from (``qfast.models.bert``, ``.text`` and
``.layer_error`` re-export their new homes). Importing it needs only NumPy; loading a model
needs the optional packages ``safetensors`` and ``tokenizers``
(``pip install 'qfast-quant[models]'``), imported on first use.
"""

from __future__ import annotations

from ..calibration.text import calibration_paragraphs, heldout_paragraphs
from ..model.arch.bert import Bert, BertConfig

__all__ = ["Bert", "BertConfig", "calibration_paragraphs", "heldout_paragraphs"]

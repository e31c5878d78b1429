"""The calibration floor: what quantizers learn from besides the weights.

- ``hessian``: :class:`Hessian`, GPTQ's accumulated ``2 X^T X`` (``qfast.Hessian``);
- ``text``: disjoint sets of English Wikipedia paragraphs to calibrate on and to measure on
  (``calibration_paragraphs`` / ``heldout_paragraphs``, also ``qfast.models``).
"""

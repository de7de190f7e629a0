"""The method and its baselines as pure NumPy: anchoring samples (EndPrompt, PoSE, contiguous, full-length) and the
sample stream's order."""

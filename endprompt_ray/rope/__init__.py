"""RoPE scaling written into transformers' `rope_parameters`, and LongRoPE's per-frequency factors."""

"""Evaluation: RULER (ruler/), LongBench (longbench/), passkey and report_code retrieval (passkey.py), perplexity by
length (perplexity.py). Each takes a loaded causal LM + tokenizer or a model directory and writes files + a result."""

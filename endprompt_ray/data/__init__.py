"""Corpora into samples: where a corpus lives, tokenising, and the Ray Data pipeline that anchors them."""

"""LongRoPE's factor search: the evolution (pure), its Ray Tune searcher and fitness actors, outputs, comparison."""

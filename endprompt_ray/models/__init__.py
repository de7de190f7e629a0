"""Models: loading (directories, hub ids, GGUF, the tiny and toy presets), attention, LoRA, S2-Attn, export."""

"""endprompt-ray: extend the context window of RoPE models with EndPrompt on Ray."""

__version__ = "0.1.0"

"""The one error type evaluation code raises for bad input; its message says what is wrong, where, and how to fix it."""


class EvalInputError(ValueError):
    """Unknown task, a length too short for a task, missing or malformed data files, a model without a tokenizer."""

"""The families' error, in a module of its own so that the adapter and the catalog both raise it without importing
each other."""


class UnsupportedModelError(ValueError):
    """The model is not a mixture-of-experts causal LM of a family the studio understands."""

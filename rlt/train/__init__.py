"""Training on pre-pruned token streams: the streaming loader (and, later, the model and loop)."""

from rlt.train._loader import STATE_VERSION, TokenBatch, TokenLoader, TokenStream

__all__ = ["STATE_VERSION", "TokenBatch", "TokenLoader", "TokenStream"]

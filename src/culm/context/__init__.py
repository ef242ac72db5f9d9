"""Context window management: the token budget, compaction of the model's view, and recovery
when a provider refuses a request as too long. The stored transcript is never changed: a
compaction is stored beside it and the model's view is built from both (``view.py``)."""

"""The event bus: how stored run events and control notices cross processes.

``base.py`` is the seam, ``local.py`` the in-process backend (embedded, or no Redis), ``redis.py``
the Redis backend; ``link.py`` keeps the one Redis connection and its health.
"""

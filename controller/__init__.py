"""Turnout's control plane: the controller, the single writer of a fleet's routing state.

It shares only the pure core with the proxy (``proxy.core``: the config model and reader, the writer,
the bucket tables, the wire messages); the two never import each other's shell (``make lint``).
"""

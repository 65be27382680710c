"""Turnout's pure core, shared by the proxy and the controller.

The config model and its reader, request matching, hashing and bucket tables, routing snapshots, flag
evaluation, endpoint-health bookkeeping, counters, layering of admin changes over the file, and the
wire messages between a writer of routing state and its receivers. Nothing here does network I/O,
reads the clock or imports asyncio, aiohttp, httptools, ssl or docker (``make lint`` checks it).
"""

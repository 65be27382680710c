"""What Turnout's two processes share: the pure core, the shared I/O, the admin-API plumbing, the
providers and the one CLI.

    turnout/core/       pure: config model and reader, matching, hashing and bucket tables, routing,
                        flags, health bookkeeping, counters, layers, the writer, wire messages
    turnout/io/         the I/O both processes do the same way: the atomic state file, process logs
    turnout/api/        the admin-API plumbing both servers use: tokens and who may call, change
                        routes and their schemas, the OpenAPI document, views of the state
    turnout/providers/  where routing state comes from besides files and admin calls (Docker)
    turnout/cli/        the ``turnout`` command: starts either server, talks to their APIs

``proxy`` (the data plane) and ``controller`` (the control plane) stand beside this package and never
import each other; import-linter checks the layers (``make lint``).
"""

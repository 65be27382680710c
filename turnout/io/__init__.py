"""The I/O both processes do the same way (the atomic state file, process logs)."""

"""The ``turnout`` command (``main``): starts either server and talks to their admin APIs."""

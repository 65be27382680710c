"""Providers: where routing state comes from besides files and admin calls (Docker discovery). Shared by the
proxy and the controller; they import only the pure core."""

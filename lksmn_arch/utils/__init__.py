"""Helpers every part uses: atomic file writing (``atomic``) and checkpoint reading and checking (``checkpoint``)."""

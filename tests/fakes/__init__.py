"""Fakes that sit at the edges of integration tests (model APIs on loopback, ...)."""

"""Fake servers for the tests: model providers on 127.0.0.1."""

"""abi_tui: a terminal workstation for local LLMs."""

__version__ = "0.1.0"

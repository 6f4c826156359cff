"""How one endpoint waits and retries: its timeouts, retries and circuit-breaker settings."""

from __future__ import annotations

from dataclasses import dataclass, fields

from abi_tui.backoff import Backoff


@dataclass(frozen=True)
class RemotePolicy:
    """Connect 10 s, first token 60 s, between tokens 30 s, retries only before the first
    token, a breaker per endpoint. Each field can be set per endpoint in config.toml."""

    connect_timeout_s: float = 10.0
    first_token_timeout_s: float = 60.0
    between_tokens_timeout_s: float = 30.0
    retries: int = 2            # extra attempts, only before the first token
    retry_backoff_s: float = 0.5  # first backoff; doubles per attempt, with jitter
    retry_backoff_max_s: float = 8.0
    breaker_failures: int = 5
    breaker_open_s: float = 30.0

    def backoff(self) -> Backoff:
        """A fresh backoff for one request's retries (+-50% jitter: the retries of many
        streams do not land together)."""
        return Backoff(initial=self.retry_backoff_s, maximum=self.retry_backoff_max_s, jitter=0.5)


POLICY_KEYS = frozenset(f.name for f in fields(RemotePolicy))

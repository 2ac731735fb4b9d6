"""A token bucket: the rate limit of tenants' requests and of anonymous audit entries."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class TokenBucket:
    """Holds `tokens` as of time `at`; `take` refills it at `rate` a second, up to `burst`."""

    tokens: float
    at: float

    def take(self, now: float, rate: float, burst: float) -> bool:
        """Take one token if there is one; False (and nothing taken) if not."""
        self.tokens = min(burst, self.tokens + (now - self.at) * rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

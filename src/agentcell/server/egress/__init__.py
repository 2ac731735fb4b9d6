"""Network egress of sandboxes: the policy, the per-sandbox HTTP(S) forward proxy that enforces it,
and the node-local package mirrors (pip, npm) served through the same listener."""

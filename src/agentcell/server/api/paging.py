"""Page tokens of lists sorted by (created_at, id): E2B's /v2/sandboxes and /snapshots, and
/v1/snapshots. A token names the last item of the page before (not an offset), so an item added or
deleted between two pages neither shifts the next page nor repeats one; it is opaque to clients."""

from __future__ import annotations

import base64

from agentcell.errors import InvalidArgument


def page_token(created_at: float, item_id: str) -> str:
    """The token of the page after the item with this creation time and id."""
    return base64.urlsafe_b64encode(f"{created_at!r}|{item_id}".encode()).decode()


def after_token(token: str, name: str) -> tuple[float, str]:
    """The (created_at, id) a token names; `name` is the query parameter that brought it.
    Raises InvalidArgument for a token this server did not issue."""
    try:
        created, item_id = base64.urlsafe_b64decode(token.encode()).decode().split("|", 1)
        return float(created), item_id
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument(
            f"{name} is not one this server issued; send the {name} of the page before "
            "unchanged, or none for the first page"
        ) from None

"""Storage and tracking URLs as they may be shown: with any password masked."""

from __future__ import annotations

import re


def mask_password(url: str) -> str:
    """`postgresql://user:secret@host/db` -> `postgresql://user:***@host/db`."""
    return re.sub(r"(//[^:/@]+:)[^/]*@", r"\1***@", url)  # up to the last @ of the netloc

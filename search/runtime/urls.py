"""Storage and tracking URLs as they may be shown: with any password masked."""

from __future__ import annotations

import re

MASK = "***"
# `password=` in a query string: `?password=...` or `&password=...`, up to the next parameter.
QUERY_PASSWORD = re.compile(r"([?&;]password=)[^&;#\s]*", re.IGNORECASE)
# The user-info `user:password@`: the user name may be empty, and the password may hold any
# character but white space (`/`, `@`, `:` too, unescaped), so it runs to the last `@`.
USER_PASSWORD = re.compile(r"([A-Za-z][\w+.-]*://[^\s:@/?#]*:)\S*@")


def mask_password(text: str) -> str:
    """Every password in `text`, a URL or a message holding URLs, replaced by `***`.

    `postgresql://user:secret@host/db` -> `postgresql://user:***@host/db`; also
    `postgresql://:secret@host/db` and `...?sslmode=require&password=secret`.
    """
    return USER_PASSWORD.sub(rf"\1{MASK}@", QUERY_PASSWORD.sub(rf"\1{MASK}", text))

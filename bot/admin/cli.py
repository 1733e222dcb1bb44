"""``zapa admin create``: operators' accounts, with a password that meets the policy."""

from __future__ import annotations

import asyncio
import getpass
import re
import sys

from bot.admin.passwords import WeakPassword, check_policy, hash_password
from config import Settings

USERNAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")


async def create_admin(settings: Settings, username: str) -> int:
    """Create the admin or reset its password; 2 with one line when refused."""
    from storage.admin_store import SqlAdminStore
    from storage.db import open_database
    from storage.migrate import upgrade_head

    if not USERNAME.fullmatch(username):
        print(
            "zapa: the username must be 1-64 letters, digits, '.', '_', '-' or '@'", file=sys.stderr
        )
        return 2
    password = _read_password()
    if password is None:
        print("zapa: no password given", file=sys.stderr)
        return 2
    try:
        check_policy(password, username)
    except WeakPassword as exc:
        print(f"zapa: password refused: {exc}", file=sys.stderr)
        return 2
    if settings.is_sqlite:
        await asyncio.to_thread(upgrade_head, settings.database_url)
    database = open_database(settings.database_url, 1)
    try:
        store = SqlAdminStore(database)
        _, created = await store.save_admin(username, await hash_password(password))
        await store.audit("created" if created else "password_set", username, None)
    finally:
        await database.dispose()
    print(f"admin {username} {'created' if created else 'has a new password'}")
    return 0


def _read_password() -> str | None:
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != first:
            print("zapa: the passwords differ", file=sys.stderr)
            return None
        return first or None
    line = sys.stdin.readline().rstrip("\r\n")
    return line or None

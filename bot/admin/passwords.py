"""Admin passwords: the policy, and argon2id hashing (bcrypt hashes verify and are upgraded).

Hashing is memory-hard on purpose (tens of milliseconds, 64 MiB), so it runs in a thread:
the event loop keeps serving webhooks while someone signs in.
"""

from __future__ import annotations

import asyncio
from functools import cache

from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher
from pwdlib.hashers.bcrypt import BcryptHasher

MIN_LENGTH = 12
MAX_LENGTH = 1024  # argon2 takes any length; this only bounds the work a request can ask for

# The commonest passwords and patterns of leaked-password lists; anything containing one of
# these (ignoring case, digits and symbols around it) is refused.
_COMMON = frozenset(
    {
        "password",
        "passw0rd",
        "123456",
        "12345678",
        "123456789",
        "1234567890",
        "qwerty",
        "qwertyuiop",
        "asdfghjkl",
        "zxcvbnm",
        "abc123",
        "iloveyou",
        "letmein",
        "welcome",
        "admin",
        "administrator",
        "monkey",
        "dragon",
        "football",
        "baseball",
        "master",
        "sunshine",
        "princess",
        "shadow",
        "superman",
        "trustno1",
        "starwars",
        "whatever",
        "freedom",
        "michael",
        "jennifer",
        "charlie",
        "computer",
        "internet",
        "secret",
        "changeme",
        "default",
        "zapa",
        "111111",
        "000000",
        "123123",
        "654321",
        "666666",
        "987654321",
        "qazwsx",
        "1q2w3e4r",
        "1qaz2wsx",
        "q1w2e3r4",
        "login",
        "hello",
        "access",
        "mustang",
        "batman",
        "hunter2",
        "solo",
        "killer",
        "pokemon",
        "ninja",
    }
)


class WeakPassword(ValueError):
    """The password breaks the policy; the message says how."""


def check_policy(password: str, username: str) -> None:
    """Refuse short, overlong, commonplace or username-based passwords.

    Raises:
        WeakPassword: with a message for the operator.
    """
    if len(password) < MIN_LENGTH:
        raise WeakPassword(f"use at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise WeakPassword(f"use at most {MAX_LENGTH} characters")
    core = "".join(c for c in password.lower() if c.isalpha())
    if len(set(password)) < 4:
        raise WeakPassword("use more than a few different characters")
    if username and username.lower() in password.lower():
        raise WeakPassword("do not put the username in the password")
    if core in _COMMON or password.lower() in _COMMON:
        raise WeakPassword("that is one of the commonest passwords")
    if any(word in password.lower() for word in _COMMON if len(word) >= 6) and len(core) < 16:
        raise WeakPassword("that is built on one of the commonest passwords")


@cache
def _hasher() -> PasswordHash:
    # The first hasher hashes; the others only verify (and mark the hash for an update).
    return PasswordHash((Argon2Hasher(), BcryptHasher()))


async def hash_password(password: str) -> str:
    """An argon2id hash of ``password``."""
    return await asyncio.to_thread(_hasher().hash, password)


async def verify_password(password: str, hashed: str) -> tuple[bool, str | None]:
    """Whether ``password`` matches; a new argon2id hash when the old one should be replaced."""
    return await asyncio.to_thread(_hasher().verify_and_update, password, hashed)


@cache
def dummy_hash() -> str:
    """A hash to verify against when the username is unknown, so both take the same time."""
    return _hasher().hash("an account that does not exist")

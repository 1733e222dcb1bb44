"""The admin password policy."""

from __future__ import annotations

import pytest

from bot.admin.passwords import WeakPassword, check_policy


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("short one", "at least 12"),
        ("x" * 1025, "at most 1024"),
        ("abababababababab", "different characters"),
        ("my name is ops-admin!", "username"),
        ("Password1234567!", "commonest"),
        ("iloveyou2025!!", "commonest"),
        ("qwertyuiop12345", "commonest"),
    ],
)
def test_weak_passwords_are_refused_with_the_reason(password: str, reason: str) -> None:
    with pytest.raises(WeakPassword, match=reason):
        check_policy(password, "ops")


@pytest.mark.parametrize(
    "password",
    ["a long and unusual passphrase", "Tr0ub4dor&3-horse-staple", "correct horse battery staple"],
)
def test_good_passwords_pass(password: str) -> None:
    check_policy(password, "ops")

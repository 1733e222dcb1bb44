"""Signing operators in and out: lockouts, per-address limits, audit, revocable tokens.

A token is a short-lived JWT (HS256) naming a server-side session; signing out revokes the
session, and with it every copy of the token. Wrong credentials cost the same whether or not
the account exists: an unknown name is checked against a dummy hash and counts a failure too.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
import structlog

from bot.admin.passwords import dummy_hash, verify_password
from bot.admin.ports import Admin, AdminStore, Lockout
from bot.ports import RateLimiter

logger = structlog.get_logger(__name__)

TOKEN_SECONDS = 3600
FAILURE_WINDOW_SECONDS = 15 * 60
MAX_FAILURES = 5
LOCK_SECONDS = 3600
ISSUER = "zapa"
KEY_NAME = "admin-token-key"


@dataclass(frozen=True, slots=True)
class Grant:
    """A signed-in session's token."""

    access_token: str
    expires_in: int


class SignInRefused(Exception):
    """Sign-in refused: ``status`` 401 or 429, an error code, and when to try again."""

    def __init__(self, status: int, error: str, detail: str, retry_after: float | None = None):
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.retry_after = retry_after


class NotSignedIn(Exception):
    """The request carries no valid, unrevoked token."""


class AdminAuth:
    """Sign-in, sign-out and token checks over an :class:`AdminStore`."""

    def __init__(
        self,
        store: AdminStore,
        address_limiter: RateLimiter,
        *,
        secret_key: str | None = None,
        token_seconds: int = TOKEN_SECONDS,
        lockout: Lockout | None = None,
    ) -> None:
        self._store = store
        # Where failures are counted and locks kept: Redis when configured, else the store.
        self._lockout: Lockout = lockout if lockout is not None else store
        self._limiter = address_limiter
        self._key = secret_key
        self._token_seconds = token_seconds

    async def login(self, username: str, password: str, address: str | None) -> Grant:
        """Check the credentials and open a session.

        Raises:
            SignInRefused: 429 ``too_many_attempts`` (this address), 429 ``account_locked``,
                or 401 ``invalid_credentials``.
            bot.errors.DependencyUnavailable: the database or Redis is down.
        """
        decision = await self._limiter.hit(f"admin-login:{address or 'unknown'}")
        if not decision.allowed:
            await self._store.audit("throttled", username, address)
            raise SignInRefused(
                429, "too_many_attempts", "too many sign-in attempts", decision.retry_after
            )
        failures = await self._lockout.login_failures(username)
        if failures.locked_until is not None:
            await self._store.audit("refused_locked", username, address)
            raise _locked(failures.locked_until)
        admin = await self._store.admin_by_username(username)
        valid, new_hash = await verify_password(
            password, admin.password_hash if admin is not None else dummy_hash()
        )
        if admin is None or not valid:
            failures = await self._lockout.add_login_failure(
                username, FAILURE_WINDOW_SECONDS, MAX_FAILURES, LOCK_SECONDS
            )
            await self._store.audit("login_failed", username, address)
            if failures.locked_until is not None:
                await self._store.audit("locked", username, address)
                logger.warning("admin_locked", username=username, address=address)
            raise SignInRefused(401, "invalid_credentials", "wrong username or password")
        await self._lockout.clear_login_failures(username)
        await self._store.record_login(admin.id, new_hash)
        expires = datetime.now(UTC) + timedelta(seconds=self._token_seconds)
        session = await self._store.create_session(admin.id, expires)
        await self._store.audit("login", username, address)
        claims = {
            "iss": ISSUER,
            "sub": str(admin.id),
            "sid": session.id,
            "iat": int(time.time()),
            "exp": int(expires.timestamp()),
        }
        token = jwt.encode(claims, await self._signing_key(), algorithm="HS256")
        return Grant(token, self._token_seconds)

    async def authenticate(self, token: str) -> tuple[Admin, str]:
        """The admin and session id a token stands for.

        Raises:
            NotSignedIn: a malformed, expired, forged or revoked token.
        """
        try:
            claims = jwt.decode(
                token,
                await self._signing_key(),
                algorithms=["HS256"],
                issuer=ISSUER,
                options={"require": ["exp", "sub", "sid", "iss"]},
            )
        except jwt.PyJWTError as exc:
            raise NotSignedIn(str(exc)) from exc
        session = await self._store.session(str(claims["sid"]))
        now = datetime.now(UTC)
        if session is None or session.revoked_at is not None or session.expires_at <= now:
            raise NotSignedIn("the session has ended")
        admin = await self._store.admin_by_id(session.admin_id)
        if admin is None or str(admin.id) != str(claims["sub"]):
            raise NotSignedIn("the account is gone")
        return admin, session.id

    async def logout(self, admin: Admin, session_id: str, address: str | None) -> None:
        """Revoke the session; its token stops working everywhere at once."""
        await self._store.revoke_session(session_id)
        await self._store.audit("logout", admin.username, address)

    async def record(self, admin: Admin, event: str, detail: str, address: str | None) -> None:
        """Write an admin's action (a ban, a changed limit) to the audit log."""
        await self._store.audit(event, admin.username, address, detail)

    async def _signing_key(self) -> str:
        if self._key is None:
            # Stored in the database, so every process (and every restart) signs alike.
            self._key = await self._store.secret(KEY_NAME, secrets.token_urlsafe(48))
        return self._key


def _locked(until: datetime) -> SignInRefused:
    wait = max(1.0, (until - datetime.now(UTC)).total_seconds())
    return SignInRefused(429, "account_locked", "too many failed sign-ins; try later", wait)

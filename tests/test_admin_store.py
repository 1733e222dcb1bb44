"""SqlAdminStore against real SQLite and real PostgreSQL databases."""

from __future__ import annotations

import asyncio
import inspect
import socket
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from bot.admin.ports import AdminStore, LoginFailures
from bot.errors import DependencyUnavailable
from storage.admin_store import SqlAdminStore
from storage.db import Database, open_database
from storage.models import utcnow

HOUR = 3600.0


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    database = open_database(database_url, pool_size=10)
    yield database
    await database.dispose()


@pytest.fixture
def store(database: Database) -> SqlAdminStore:
    return SqlAdminStore(database)


def test_store_offers_every_method_of_the_port() -> None:
    port_methods = {
        name for name, member in vars(AdminStore).items() if inspect.iscoroutinefunction(member)
    }
    assert len(port_methods) == 13
    for name in port_methods:
        implementation = getattr(SqlAdminStore, name)
        assert inspect.iscoroutinefunction(implementation), name
        port_parameters = inspect.signature(getattr(AdminStore, name)).parameters
        assert list(inspect.signature(implementation).parameters) == list(port_parameters), name


async def test_saving_an_admin_creates_it_then_sets_a_new_password(store: SqlAdminStore) -> None:
    admin, created = await store.save_admin("ann", "hash-1")
    assert created
    assert (admin.username, admin.password_hash, admin.last_login_at) == ("ann", "hash-1", None)
    assert admin.created_at.utcoffset() == timedelta(0)

    updated, created_again = await store.save_admin("ann", "hash-2")
    assert not created_again
    assert updated.id == admin.id
    assert updated.password_hash == "hash-2"
    assert updated.created_at == admin.created_at
    assert await store.admin_by_username("ann") == updated


async def test_admins_are_found_by_exact_name_and_by_id(store: SqlAdminStore) -> None:
    ann, _ = await store.save_admin("ann", "h")
    bob, _ = await store.save_admin("bob", "h")

    assert ann.id != bob.id
    assert await store.admin_by_username("bob") == bob
    assert await store.admin_by_id(ann.id) == ann
    assert await store.admin_by_username("Ann") is None
    assert await store.admin_by_username("nobody") is None
    assert await store.admin_by_id(bob.id + 100) is None


async def test_recording_a_login_sets_the_time_and_replaces_the_hash_only_when_given(
    store: SqlAdminStore,
) -> None:
    admin, _ = await store.save_admin("ann", "old-hash")
    before = utcnow()

    await store.record_login(admin.id, None)
    first = await store.admin_by_id(admin.id)
    assert first is not None
    assert first.password_hash == "old-hash"
    assert first.last_login_at is not None
    assert before <= first.last_login_at <= utcnow()

    await store.record_login(admin.id, "rehashed")
    second = await store.admin_by_id(admin.id)
    assert second is not None
    assert second.password_hash == "rehashed"
    assert second.last_login_at is not None
    assert second.last_login_at >= first.last_login_at


async def test_sessions_are_created_found_and_revoked_once(store: SqlAdminStore) -> None:
    admin, _ = await store.save_admin("ann", "h")
    expires = utcnow() + timedelta(hours=1)

    session = await store.create_session(admin.id, expires)
    other = await store.create_session(admin.id, expires)
    assert session.id != other.id
    assert len(session.id) >= 43  # 32 random bytes, base64url
    assert set(session.id) <= set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    )
    assert await store.session(session.id) == session
    assert session.revoked_at is None
    assert await store.session("unknown") is None

    await store.revoke_session(session.id)
    revoked = await store.session(session.id)
    assert revoked is not None
    assert revoked.revoked_at is not None
    assert revoked.expires_at == expires

    await store.revoke_session(session.id)
    await store.revoke_session("unknown")
    assert await store.session(session.id) == revoked
    untouched = await store.session(other.id)
    assert untouched is not None
    assert untouched.revoked_at is None


async def test_audit_log_lists_newest_first_up_to_the_limit(store: SqlAdminStore) -> None:
    await store.audit("login_failed", "ann", "203.0.113.5", "wrong password")
    await store.audit("login", "ann", "203.0.113.5")
    await store.audit("created", "bob", None)

    entries = await store.audit_log()
    assert [(e.event, e.username, e.address, e.detail) for e in entries] == [
        ("created", "bob", None, None),
        ("login", "ann", "203.0.113.5", None),
        ("login_failed", "ann", "203.0.113.5", "wrong password"),
    ]
    assert entries[0].at >= entries[-1].at
    assert [e.event for e in await store.audit_log(limit=2)] == ["created", "login"]


async def fail(
    store: SqlAdminStore, times: int, *, window: float = HOUR, lock: float = HOUR
) -> None:
    for _ in range(times):
        await store.add_login_failure("ann", window, max_failures=5, lock_seconds=lock)


async def test_the_fifth_failure_locks_the_account(store: SqlAdminStore) -> None:
    assert await store.login_failures("ann") == LoginFailures(count=0, locked_until=None)

    await fail(store, 3)
    fourth = await store.add_login_failure("ann", HOUR, max_failures=5, lock_seconds=HOUR)
    assert fourth.count == 4
    assert fourth.locked_until is None

    before = utcnow()
    fifth = await store.add_login_failure("ann", HOUR, max_failures=5, lock_seconds=HOUR)
    assert fifth.count == 5
    assert fifth.locked_until is not None
    assert before + timedelta(seconds=HOUR) <= fifth.locked_until <= utcnow() + timedelta(hours=1)
    assert await store.login_failures("ann") == fifth
    assert (await store.login_failures("bob")).count == 0


async def test_failures_outside_the_window_no_longer_count(database: Database) -> None:
    store = SqlAdminStore(database, failure_window_seconds=0.3)
    await fail(store, 4, window=0.3)
    assert (await store.login_failures("ann")).count == 4

    await asyncio.sleep(0.4)
    assert (await store.login_failures("ann")).count == 0
    restarted = await store.add_login_failure("ann", 0.3, max_failures=5, lock_seconds=HOUR)
    assert restarted.count == 1
    assert restarted.locked_until is None


async def test_a_lock_ends_when_its_time_is_up(store: SqlAdminStore) -> None:
    await fail(store, 5, lock=0.3)
    assert (await store.login_failures("ann")).locked_until is not None

    await asyncio.sleep(0.4)
    assert await store.login_failures("ann") == LoginFailures(count=5, locked_until=None)


async def test_a_shorter_lock_does_not_cut_a_longer_one(store: SqlAdminStore) -> None:
    await fail(store, 5, lock=HOUR)
    long_lock = (await store.login_failures("ann")).locked_until

    sixth = await store.add_login_failure("ann", HOUR, max_failures=5, lock_seconds=1)
    assert sixth.count == 6
    assert sixth.locked_until == long_lock


async def test_clearing_forgets_failures_but_keeps_an_active_lock(store: SqlAdminStore) -> None:
    await fail(store, 2)
    await store.clear_login_failures("ann")
    assert await store.login_failures("ann") == LoginFailures(count=0, locked_until=None)
    counted = await store.add_login_failure("ann", HOUR, max_failures=5, lock_seconds=HOUR)
    assert counted.count == 1

    await fail(store, 4)
    locked = await store.login_failures("ann")
    assert locked.locked_until is not None
    await store.clear_login_failures("ann")
    cleared = await store.login_failures("ann")
    assert cleared.count == 0
    assert cleared.locked_until == locked.locked_until
    await store.clear_login_failures("nobody")


async def test_concurrent_failures_each_count_once(store: SqlAdminStore) -> None:
    results = await asyncio.gather(
        *(
            store.add_login_failure("ann", HOUR, max_failures=5, lock_seconds=HOUR)
            for _ in range(10)
        )
    )

    assert sorted(result.count for result in results) == list(range(1, 11))
    assert sum(result.locked_until is None for result in results) == 4
    assert (await store.login_failures("ann")).count == 10


async def test_secret_keeps_the_first_value_stored(store: SqlAdminStore) -> None:
    assert await store.secret("signing_key", "first") == "first"
    assert await store.secret("signing_key", "second") == "first"
    assert await store.secret("other", "third") == "third"


async def test_concurrent_first_calls_agree_on_one_secret(store: SqlAdminStore) -> None:
    values = await asyncio.gather(*(store.secret("signing_key", f"value-{i}") for i in range(10)))

    assert len(set(values)) == 1
    assert values[0] in {f"value-{i}" for i in range(10)}
    assert await store.secret("signing_key", "late") == values[0]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_an_unreachable_database_raises_dependency_unavailable() -> None:
    database = open_database(f"postgresql://postgres@127.0.0.1:{closed_port()}/zapa", pool_size=1)
    try:
        store = SqlAdminStore(database)
        with pytest.raises(DependencyUnavailable):
            await store.admin_by_username("ann")
        with pytest.raises(DependencyUnavailable):
            await store.add_login_failure("ann", HOUR, max_failures=5, lock_seconds=HOUR)
    finally:
        await database.dispose()

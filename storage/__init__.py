"""Durable storage: SQLAlchemy models, the SQL conversation store and Alembic migrations.

Import the parts from their modules: ``storage.db`` (``open_database``, which runs units
of database work), ``storage.repository`` (``SqlConversationStore``), ``storage.migrate``
(``upgrade_head``).
"""

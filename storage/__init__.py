"""Durable storage: SQLAlchemy models, the SQL conversation store and Alembic migrations.

Import the parts from their modules: ``storage.db`` (engines and sessions),
``storage.repository`` (``SqlConversationStore``), ``storage.migrate`` (``upgrade_head``).
"""

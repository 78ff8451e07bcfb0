"""Alembic environment for the dbrollback ``shop`` example project.

Based on Alembic's ``generic`` template, with two additions:

* If the caller hands in a live SQLAlchemy ``Connection`` via
  ``config.attributes["connection"]``, it is used as-is (no engine is built
  and the connection is neither closed nor committed here beyond what
  ``context.begin_transaction()`` does).  If that connection is already inside
  a transaction, ``begin_transaction()`` joins it and the caller decides
  whether to commit; otherwise Alembic begins and commits its own transaction.
* Logging from ``alembic.ini`` is only applied when Alembic runs on its own
  (no connection handed in), so a host program keeps its logging setup.
  ``config.attributes["configure_logger"]`` (True/False) overrides that
  choice.  When applied, loggers that already exist are not disabled.
"""

from logging.config import fileConfig

from alembic import context
from sqlalchemy import engine_from_config, pool
from sqlalchemy.engine import Connection

# this is the Alembic Config object, which provides
# access to the values within the .ini file in use.
config = context.config

# Interpret the config file for Python logging, unless embedded in a program
# that handed us its connection (see the module docstring).
_configure_logger = config.attributes.get(
    "configure_logger", config.attributes.get("connection") is None
)
if config.config_file_name is not None and _configure_logger:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

# The shop migrations are hand-written; no autogenerate support.
target_metadata = None


def run_migrations_offline() -> None:
    """Run migrations in 'offline' mode.

    This configures the context with just a URL and not an Engine, so no DBAPI
    is needed.  Calls to context.execute() emit the given string to the script
    output.
    """
    url = config.get_main_option("sqlalchemy.url")
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )

    with context.begin_transaction():
        context.run_migrations()


def _run_with_connection(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)

    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run migrations in 'online' mode.

    Uses the connection supplied in ``config.attributes["connection"]`` when
    present; otherwise creates an Engine from the ini settings.
    """
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_with_connection(connection)
        return

    connectable = engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )

    with connectable.connect() as connection:
        _run_with_connection(connection)


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

"""What the seeder and the data comparison need to know about the user tables, read from pg_catalog.

Types are resolved through domains to their base type (arrays to their element, ranges and
multiranges to their subtype, composite types to their attributes' types), so a value generator can
be chosen for them; the name used in casts stays the column's own type, so a domain's checks still
apply to generated values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import psycopg

QualifiedName = tuple[str, str]

# Schemas that are never the user's: the catalogs, and dbrollback's own catalog schema.
USER_NAMESPACE = "n.nspname NOT IN ('information_schema', 'dbrollback') AND n.nspname !~ '^pg_'"

_SIMPLE_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_$]*")
_STRING_LITERAL = re.compile(r"'((?:[^']|'')*)'")
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.])")


def quote_name(name: str) -> str:
    """A name as it would be written in SQL: double-quoted unless it is a plain lower-case word."""
    if _SIMPLE_IDENTIFIER.fullmatch(name):
        return name
    return '"' + name.replace('"', '""') + '"'


def display_name(*parts: str) -> str:
    return ".".join(quote_name(p) for p in parts)


@dataclass(frozen=True)
class VersionTable:
    """Alembic's version table (as the project's env.py configures it): never compared or seeded."""

    name: str = "alembic_version"
    schema: str | None = None

    def matches(self, schema: str, table: str) -> bool:
        return table == self.name and (self.schema is None or schema == self.schema)


@dataclass(frozen=True)
class ValueType:
    sql_name: str  # qualified name without typmod: what generated literals are cast to
    # base type name after domains (int4, varchar, …), "enum", "array", "range", "multirange",
    # "composite"
    base: str
    category: str  # pg_type.typcategory of the base type
    typmod: int
    labels: tuple[str, ...] = ()  # enum labels in order
    element: ValueType | None = None  # arrays: the element type; (multi)ranges: the subtype
    hints: tuple[str, ...] = ()  # literals from a domain's CHECK constraints
    fields: tuple[ValueType, ...] = ()  # composite types: their attributes' types, in order


@dataclass(frozen=True)
class ColumnInfo:
    name: str
    attnum: int
    type: ValueType
    type_text: str  # format_type() with the column's typmod, e.g. numeric(8,3)
    not_null: bool
    default: str | None
    identity: str  # '' | 'a' (ALWAYS) | 'd' (BY DEFAULT)
    generated: str  # '' | 's' (stored)

    @property
    def filled_by_server(self) -> bool:
        """Identity, generated and serial columns: the server picks their values."""
        return bool(self.identity or self.generated or (self.default and "nextval(" in self.default))


@dataclass(frozen=True)
class ForeignKey:
    name: str
    columns: tuple[str, ...]
    parent: QualifiedName
    parent_columns: tuple[str, ...]


@dataclass(frozen=True)
class TableInfo:
    schema: str
    name: str
    columns: tuple[ColumnInfo, ...]
    primary_key: tuple[str, ...] | None
    unique_keys: tuple[tuple[str, ...], ...]  # unique indexes without expressions or predicates
    foreign_keys: tuple[ForeignKey, ...]
    check_hints: dict[str, tuple[str, ...]] = field(default_factory=dict)  # column -> literals

    @property
    def qualified(self) -> QualifiedName:
        return (self.schema, self.name)

    @property
    def display(self) -> str:
        return display_name(self.schema, self.name)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def column_types(self) -> tuple[str, ...]:
        return tuple(c.type_text for c in self.columns)

    @property
    def column_casts(self) -> tuple[str, ...]:
        return tuple(c.type.sql_name for c in self.columns)

    def column(self, name: str) -> ColumnInfo:
        return next(c for c in self.columns if c.name == name)

    def row_key(self) -> tuple[str, ...] | None:
        """Columns that identify a row: the primary key, else a unique key of NOT NULL columns."""
        if self.primary_key:
            return self.primary_key
        not_null = {c.name for c in self.columns if c.not_null}
        keys = sorted((k for k in self.unique_keys if set(k) <= not_null), key=len)
        return keys[0] if keys else None


_TABLES_SQL = f"""
SELECT c.oid, n.nspname, c.relname
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND {USER_NAMESPACE}
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_class'::regclass
                  AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY n.nspname, c.relname
"""

_COLUMNS_SQL = """
SELECT a.attrelid, a.attname, a.attnum, a.atttypid, a.atttypmod, a.attnotnull, a.attidentity,
       a.attgenerated, pg_catalog.pg_get_expr(d.adbin, d.adrelid),
       pg_catalog.format_type(a.atttypid, a.atttypmod)
FROM pg_catalog.pg_attribute a
LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = ANY(%s) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attrelid, a.attnum
"""

_UNIQUE_INDEXES_SQL = """
SELECT i.indrelid, i.indisprimary, i.indkey::int2[]
FROM pg_catalog.pg_index i
WHERE i.indrelid = ANY(%s) AND i.indisunique AND i.indexprs IS NULL AND i.indpred IS NULL
ORDER BY i.indrelid, NOT i.indisprimary, i.indexrelid
"""

_CONSTRAINTS_SQL = """
SELECT k.conrelid, k.conname, k.contype, k.conkey, k.confkey, fn.nspname, fc.relname, fc.oid,
       pg_catalog.pg_get_constraintdef(k.oid)
FROM pg_catalog.pg_constraint k
LEFT JOIN pg_catalog.pg_class fc ON fc.oid = k.confrelid
LEFT JOIN pg_catalog.pg_namespace fn ON fn.oid = fc.relnamespace
WHERE k.conrelid = ANY(%s) AND k.contype IN ('f', 'c')
ORDER BY k.conrelid, k.conname
"""

_TYPES_SQL = """
SELECT t.oid, t.typname, t.typtype, t.typcategory, t.typelem, t.typbasetype, t.typtypmod,
       ARRAY(SELECT e.enumlabel FROM pg_catalog.pg_enum e WHERE e.enumtypid = t.oid
             ORDER BY e.enumsortorder),
       (SELECT r.rngsubtype FROM pg_catalog.pg_range r WHERE r.rngtypid = t.oid),
       ARRAY(SELECT pg_catalog.pg_get_constraintdef(k.oid) FROM pg_catalog.pg_constraint k
             WHERE k.contypid = t.oid AND k.contype = 'c'),
       t.typrelid
FROM pg_catalog.pg_type t WHERE t.oid = %s
"""

# Only asked for a multirange type (typtype 'm'), which exists from PostgreSQL 14 on, as does the column.
_MULTIRANGE_SUBTYPE_SQL = """
SELECT r.rngsubtype FROM pg_catalog.pg_range r WHERE r.rngmultitypid = %s
"""

_COMPOSITE_FIELDS_SQL = """
SELECT a.atttypid, a.atttypmod FROM pg_catalog.pg_attribute a
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum
"""


def literal_hints(definitions: list[str]) -> tuple[str, ...]:
    """String and number literals in CHECK definitions: values worth trying when generated ones fail
    (``status IN ('new', 'paid')`` → new, paid; ``rating BETWEEN 1 AND 5`` → 1, 5)."""
    found: list[str] = []
    for definition in definitions:
        found.extend(m.replace("''", "'") for m in _STRING_LITERAL.findall(definition))
        found.extend(_NUMBER.findall(_STRING_LITERAL.sub("", definition)))
    return tuple(dict.fromkeys(found))


class _TypeResolver:
    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self.cache: dict[tuple[int, int], ValueType] = {}

    def resolve(self, oid: int, typmod: int) -> ValueType:
        if (oid, typmod) not in self.cache:
            self.cache[(oid, typmod)] = self._resolve(oid, typmod, self._sql_name(oid), ())
        return self.cache[(oid, typmod)]

    def _sql_name(self, oid: int) -> str:
        # The internal, qualified name (pg_catalog.bpchar, pg_catalog."bit"): format_type()'s
        # "character" or "bit" would mean character(1) / bit(1) in a cast and truncate values.
        row = self.conn.execute(
            "SELECT quote_ident(n.nspname) || '.' || quote_ident(t.typname) FROM pg_catalog.pg_type t "
            "JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace WHERE t.oid = %s",
            (oid,),
        ).fetchone()
        assert row is not None
        return str(row[0])

    def _resolve(self, oid: int, typmod: int, sql_name: str, hints: tuple[str, ...]) -> ValueType:
        row = self.conn.execute(_TYPES_SQL, (oid,)).fetchone()
        assert row is not None, oid
        _, typname, typtype, category, elem, basetype, domain_typmod, labels, subtype, checks, relid = row
        if typtype == "d":  # a domain: generate for its base type, cast to the domain
            base_typmod = typmod if typmod != -1 else domain_typmod
            return self._resolve(basetype, base_typmod, sql_name, hints + literal_hints(list(checks)))
        if typtype == "e":
            return ValueType(sql_name, "enum", category, typmod, labels=tuple(labels), hints=hints)
        if typtype == "r" and subtype is not None:
            sub = self._resolve(subtype, -1, self._sql_name(subtype), ())
            return ValueType(sql_name, "range", category, typmod, element=sub, hints=hints)
        if typtype == "m":
            found = self.conn.execute(_MULTIRANGE_SUBTYPE_SQL, (oid,)).fetchone()
            if found is not None:
                sub = self._resolve(found[0], -1, self._sql_name(found[0]), ())
                return ValueType(sql_name, "multirange", category, typmod, element=sub, hints=hints)
        if typtype == "c" and relid:
            fields = tuple(
                self._resolve(field_oid, field_typmod, self._sql_name(field_oid), ())
                for field_oid, field_typmod in self.conn.execute(_COMPOSITE_FIELDS_SQL, (relid,)).fetchall()
            )
            return ValueType(sql_name, "composite", category, typmod, hints=hints, fields=fields)
        if category == "A" and elem:
            element = self._resolve(elem, typmod, self._sql_name(elem), ())
            return ValueType(sql_name, "array", category, typmod, element=element, hints=hints)
        return ValueType(sql_name, str(typname), str(category), typmod, hints=hints)


def describe_tables(conn: psycopg.Connection, version_table: VersionTable) -> list[TableInfo]:
    """Every user table (not partitions, not the version table, not extension members)."""
    tables = [
        (oid, schema, name)
        for oid, schema, name in conn.execute(_TABLES_SQL).fetchall()
        if not version_table.matches(schema, name)
    ]
    if not tables:
        return []
    oids = [t[0] for t in tables]
    resolver = _TypeResolver(conn)
    columns: dict[int, list[ColumnInfo]] = {oid: [] for oid in oids}
    for relid, name, attnum, typid, typmod, not_null, identity, generated, default, type_text in conn.execute(
        _COLUMNS_SQL, (oids,)
    ).fetchall():
        vtype = resolver.resolve(typid, typmod)
        columns[relid].append(
            ColumnInfo(name, attnum, vtype, type_text, not_null, default, identity, generated)
        )
    names_by_num = {oid: {c.attnum: c.name for c in cols} for oid, cols in columns.items()}
    primary: dict[int, tuple[str, ...]] = {}
    unique: dict[int, list[tuple[str, ...]]] = {oid: [] for oid in oids}
    for relid, is_primary, keys in conn.execute(_UNIQUE_INDEXES_SQL, (oids,)).fetchall():
        key = tuple(names_by_num[relid][k] for k in keys if k in names_by_num[relid])
        if len(key) != len(keys):
            continue
        if is_primary:
            primary[relid] = key
        unique[relid].append(key)
    foreign: dict[int, list[ForeignKey]] = {oid: [] for oid in oids}
    checks: dict[int, dict[str, list[str]]] = {oid: {} for oid in oids}
    rows = conn.execute(_CONSTRAINTS_SQL, (oids,)).fetchall()
    parent_oids = {r[7] for r in rows if r[2] == "f"}
    parent_columns = _column_names(conn, sorted(parent_oids))
    for relid, conname, contype, conkey, confkey, parent_schema, parent_table, parent_oid, definition in rows:
        own = tuple(names_by_num[relid][k] for k in conkey or ())
        if contype == "f":
            ref = tuple(parent_columns[parent_oid][k] for k in confkey)
            foreign[relid].append(ForeignKey(conname, own, (parent_schema, parent_table), ref))
        else:
            for column in own:
                checks[relid].setdefault(column, []).append(definition)
    return [
        TableInfo(
            schema=schema,
            name=name,
            columns=tuple(columns[oid]),
            primary_key=primary.get(oid),
            unique_keys=tuple(unique[oid]),
            foreign_keys=tuple(foreign[oid]),
            check_hints={column: literal_hints(defs) for column, defs in checks[oid].items()},
        )
        for oid, schema, name in tables
    ]


def _column_names(conn: psycopg.Connection, oids: list[int]) -> dict[int, dict[int, str]]:
    names: dict[int, dict[int, str]] = {oid: {} for oid in oids}
    if oids:
        for relid, attnum, name in conn.execute(
            "SELECT attrelid, attnum, attname FROM pg_catalog.pg_attribute "
            "WHERE attrelid = ANY(%s) AND attnum > 0 AND NOT attisdropped",
            (oids,),
        ).fetchall():
            names[relid][attnum] = name
    return names

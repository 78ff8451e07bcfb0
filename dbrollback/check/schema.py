"""A normalised picture of a database's schema from pg_catalog, and the exact differences between two.

Covered: schemas, extensions, tables, columns (type, default, nullability, identity, generated,
collation), indexes (pg_get_indexdef, name included), constraints (pg_get_constraintdef), sequences
(parameters, not their current value), enum types with their values in order, domains, composite
and range types, views and materialized views (definition), functions and procedures
(pg_get_functiondef), aggregates (signature) and triggers. Left out: dbrollback's own schema, the
Alembic version table, the system schemas, objects that belong to extensions, column order
(Alembic cannot add a column at a position), owners, privileges, comments, statistics.

Definitions are read with ``search_path`` set to pg_catalog only, so every name in them is
schema-qualified and two snapshots of the same schema read the same.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from dbrollback.check.tables import USER_NAMESPACE, VersionTable, display_name

__all__ = ["SchemaDifference", "SchemaObject", "SchemaSnapshot", "capture_schema", "diff_schemas"]

_NOT_EXTENSION_MEMBER = """NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend dep
    WHERE dep.classid = '{catalog}'::regclass AND dep.objid = {oid} AND dep.deptype = 'e')"""
_LONG_VALUE = 100  # longer (or multi-line) values are shown as a diff, not inline


def _own(catalog: str, oid: str) -> str:
    return _NOT_EXTENSION_MEMBER.format(catalog=catalog, oid=oid)


@dataclass(frozen=True)
class SchemaObject:
    kind: str  # "table", "column", "enum type", …
    name: str  # display name, e.g. public.orders.total
    parent: str | None  # the table it belongs to (its differences are folded into the table's)
    attributes: tuple[tuple[str, str], ...]

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name}"


@dataclass(frozen=True)
class SchemaSnapshot:
    objects: dict[tuple[str, str], SchemaObject] = field(default_factory=dict)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SchemaSnapshot) and self.objects == other.objects

    def __hash__(self) -> int:  # pragma: no cover - snapshots are compared, not hashed
        return hash(tuple(sorted(self.objects)))


@dataclass(frozen=True)
class SchemaDifference:
    object: str  # "enum type public.mood"
    change: str  # "added" (exists only after the downgrade) | "removed" | "changed"
    attribute: str | None
    before: str | None
    after: str | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"object": self.object, "change": self.change, "attribute": self.attribute,
                "before": self.before, "after": self.after, "message": self.message}  # fmt: skip


class _Collector:
    def __init__(self, version_table: VersionTable) -> None:
        self.version_table = version_table
        self.objects: dict[tuple[str, str], SchemaObject] = {}

    def add(self, kind: str, name: str, parent: str | None = None, **attributes: Any) -> None:
        values = tuple((k.replace("_", " "), _text(v)) for k, v in attributes.items())
        self.objects[(kind, name)] = SchemaObject(kind, name, parent, values)

    def skip_table(self, schema: str, table: str | None) -> bool:
        return table is not None and self.version_table.matches(schema, table)


def _text(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(_text(v) for v in value)
    return str(value)


_RELKIND = {
    "r": "table",
    "p": "partitioned table",
    "f": "foreign table",
    "v": "view",
    "m": "materialized view",
}
_IDENTITY = {"": None, "a": "ALWAYS", "d": "BY DEFAULT"}


def capture_schema(conn: psycopg.Connection, version_table: VersionTable) -> SchemaSnapshot:
    """Read the schema of the connected database (autocommit connection; nothing is changed)."""
    out = _Collector(version_table)
    with conn.transaction():
        conn.execute("SET LOCAL search_path = pg_catalog")
        _schemas_and_extensions(conn, out)
        _relations(conn, out)
        _columns(conn, out)
        _indexes(conn, out)
        _constraints(conn, out)
        _sequences(conn, out)
        _types(conn, out)
        _functions(conn, out)
        _triggers(conn, out)
    return SchemaSnapshot(out.objects)


def _schemas_and_extensions(conn: psycopg.Connection, out: _Collector) -> None:
    for (name,) in conn.execute(
        f"SELECT n.nspname FROM pg_namespace n WHERE {USER_NAMESPACE} AND {_own('pg_namespace', 'n.oid')}"
    ).fetchall():
        out.add("schema", display_name(name))
    for name, version, schema in conn.execute(
        "SELECT e.extname, e.extversion, n.nspname FROM pg_extension e "
        "JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname <> 'plpgsql'"
    ).fetchall():
        out.add("extension", display_name(name), version=version, schema=schema)


def _relations(conn: psycopg.Connection, out: _Collector) -> None:
    rows = conn.execute(f"""
        SELECT n.nspname, c.relname, c.relkind, c.relpersistence, c.relrowsecurity,
               CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END,
               CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END,
               CASE WHEN c.relispartition THEN pg_get_expr(c.relpartbound, c.oid) END,
               (SELECT string_agg(quote_ident(pn.nspname) || '.' || quote_ident(pc.relname), ', ')
                FROM pg_inherits i JOIN pg_class pc ON pc.oid = i.inhparent
                JOIN pg_namespace pn ON pn.oid = pc.relnamespace WHERE i.inhrelid = c.oid)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p', 'f', 'v', 'm') AND {USER_NAMESPACE} AND {_own("pg_class", "c.oid")}
    """).fetchall()  # fmt: skip
    for schema, name, relkind, persistence, row_security, view, partition_key, bound, parents in rows:
        if out.skip_table(schema, name):
            continue
        kind = _RELKIND[relkind]
        attributes: dict[str, Any] = {}
        if relkind in ("v", "m"):
            attributes["definition"] = view
        else:
            attributes["unlogged"] = persistence == "u"
            attributes["row_security"] = bool(row_security)
            if partition_key:
                attributes["partition_key"] = partition_key
            if bound:
                attributes["partition_of"] = f"{parents} {bound}"
            elif parents:
                attributes["inherits"] = parents
        out.add(kind, display_name(schema, name), **attributes)


def _columns(conn: psycopg.Connection, out: _Collector) -> None:
    rows = conn.execute(f"""
        SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod),
               CASE WHEN a.attgenerated = '' THEN pg_get_expr(d.adbin, d.adrelid) END,
               a.attnotnull, a.attidentity,
               CASE WHEN a.attgenerated <> '' THEN pg_get_expr(d.adbin, d.adrelid) END,
               CASE WHEN a.attcollation <> t.typcollation THEN co.collname END
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_type t ON t.oid = a.atttypid
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        LEFT JOIN pg_collation co ON co.oid = a.attcollation
        WHERE c.relkind IN ('r', 'p', 'f', 'c') AND a.attnum > 0 AND NOT a.attisdropped
          AND {USER_NAMESPACE} AND {_own("pg_class", "c.oid")}
          AND (c.relkind <> 'c' OR {_own("pg_type", "c.reltype")})
    """).fetchall()  # fmt: skip
    for schema, table, column, type_name, default, not_null, identity, generated, collation in rows:
        if out.skip_table(schema, table):
            continue
        out.add("column", display_name(schema, table, column), display_name(schema, table),
                type=type_name, default=default, nullable="NOT NULL" if not_null else "NULL",
                identity=_IDENTITY.get(identity, identity), generated=generated,
                collation=collation)  # fmt: skip


def _indexes(conn: psycopg.Connection, out: _Collector) -> None:
    # Indexes that implement a primary key, unique or exclusion constraint are compared as the
    # constraint.
    rows = conn.execute(f"""
        SELECT n.nspname, tc.relname, ic.relname, pg_get_indexdef(i.indexrelid), i.indisclustered
        FROM pg_index i
        JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_class tc ON tc.oid = i.indrelid
        JOIN pg_namespace n ON n.oid = ic.relnamespace
        WHERE {USER_NAMESPACE} AND {_own("pg_class", "tc.oid")}
          AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid
                          AND k.conrelid = i.indrelid AND k.contype IN ('p', 'u', 'x'))
    """).fetchall()  # fmt: skip
    for schema, table, index, definition, clustered in rows:
        if out.skip_table(schema, table):
            continue
        out.add("index", display_name(schema, index), display_name(schema, table),
                definition=definition, clustered=bool(clustered))  # fmt: skip


def _constraints(conn: psycopg.Connection, out: _Collector) -> None:
    # NOT NULL constraints (pg_constraint rows since PostgreSQL 18) are compared as the column's
    # nullability; domain constraints with their domain.
    rows = conn.execute(f"""
        SELECT n.nspname, c.relname, k.conname, pg_get_constraintdef(k.oid), k.convalidated
        FROM pg_constraint k
        JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE k.contype <> 'n' AND {USER_NAMESPACE} AND {_own("pg_class", "c.oid")}
    """).fetchall()  # fmt: skip
    for schema, table, name, definition, validated in rows:
        if out.skip_table(schema, table):
            continue
        out.add("constraint", f"{display_name(name)} on {display_name(schema, table)}",
                display_name(schema, table), definition=definition, validated=bool(validated))  # fmt: skip


def _sequences(conn: psycopg.Connection, out: _Collector) -> None:
    rows = conn.execute(f"""
        SELECT n.nspname, c.relname, format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement,
               s.seqmin, s.seqmax, s.seqcache, s.seqcycle, tn.nspname, tc.relname, ta.attname
        FROM pg_sequence s
        JOIN pg_class c ON c.oid = s.seqrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = c.oid
             AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
        LEFT JOIN pg_class tc ON tc.oid = d.refobjid
        LEFT JOIN pg_namespace tn ON tn.oid = tc.relnamespace
        LEFT JOIN pg_attribute ta ON ta.attrelid = d.refobjid AND ta.attnum = d.refobjsubid
        WHERE {USER_NAMESPACE} AND {_own("pg_class", "c.oid")}
    """).fetchall()  # fmt: skip
    for schema, name, type_name, start, increment, low, high, cache, cycle, tschema, table, column in rows:
        owner = display_name(tschema, table, column) if table and column else None
        parent = display_name(tschema, table) if table else None
        out.add("sequence", display_name(schema, name), parent, type=type_name, start=start,
                increment=increment, minimum=low, maximum=high, cache=cache, cycle=bool(cycle),
                owned_by=owner)  # fmt: skip


def _types(conn: psycopg.Connection, out: _Collector) -> None:
    rows = conn.execute(f"""
        SELECT n.nspname, t.typname, t.typtype,
               ARRAY(SELECT e.enumlabel FROM pg_enum e WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder),
               CASE WHEN t.typtype = 'd' THEN format_type(t.typbasetype, t.typtypmod) END,
               t.typnotnull, t.typdefault,
               ARRAY(SELECT pg_get_constraintdef(k.oid) FROM pg_constraint k WHERE k.contypid = t.oid
                     ORDER BY k.conname),
               (SELECT format_type(r.rngsubtype, NULL) FROM pg_range r WHERE r.rngtypid = t.oid),
               (SELECT string_agg(quote_ident(a.attname) || ' ' || format_type(a.atttypid, a.atttypmod),
                                  ', ' ORDER BY a.attnum)
                FROM pg_attribute a WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped)
        FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE t.typtype IN ('e', 'd', 'r', 'c') AND {USER_NAMESPACE} AND {_own("pg_type", "t.oid")}
          AND (t.typtype <> 'c' OR (SELECT c.relkind FROM pg_class c WHERE c.oid = t.typrelid) = 'c')
    """).fetchall()  # fmt: skip
    for schema, name, typtype, labels, base, not_null, default, checks, subtype, attributes in rows:
        qualified = display_name(schema, name)
        if typtype == "e":
            out.add("enum type", qualified, values=", ".join(_quote_label(v) for v in labels))
        elif typtype == "d":
            out.add("domain", qualified, type=base, nullable="NOT NULL" if not_null else "NULL",
                    default=default, constraints=list(checks) or None)  # fmt: skip
        elif typtype == "r":
            out.add("range type", qualified, subtype=subtype)
        else:
            out.add("composite type", qualified, attributes=attributes)


def _quote_label(label: str) -> str:
    return "'" + label.replace("'", "''") + "'"


def _functions(conn: psycopg.Connection, out: _Collector) -> None:
    # pg_get_functiondef() refuses aggregates; their signature and result are compared instead.
    rows = conn.execute(f"""
        SELECT n.nspname, p.proname, pg_get_function_identity_arguments(p.oid), p.prokind,
               CASE WHEN p.prokind <> 'a' THEN pg_get_functiondef(p.oid) END,
               pg_get_function_result(p.oid)
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE {USER_NAMESPACE} AND {_own("pg_proc", "p.oid")}
    """).fetchall()  # fmt: skip
    kinds = {"f": "function", "p": "procedure", "a": "aggregate", "w": "window function"}
    for schema, name, arguments, prokind, definition, result in rows:
        label = f"{display_name(schema, name)}({arguments})"
        if prokind == "a":
            out.add("aggregate", label, result=result)
        else:
            out.add(kinds.get(prokind, "function"), label, definition=(definition or "").strip())


def _triggers(conn: psycopg.Connection, out: _Collector) -> None:
    rows = conn.execute(f"""
        SELECT n.nspname, c.relname, t.tgname, pg_get_triggerdef(t.oid), t.tgenabled
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE NOT t.tgisinternal AND {USER_NAMESPACE} AND {_own("pg_class", "c.oid")}
    """).fetchall()  # fmt: skip
    enabled = {"O": "yes", "D": "no", "R": "replica only", "A": "always"}
    for schema, table, name, definition, state in rows:
        if out.skip_table(schema, table):
            continue
        owner = display_name(schema, table)
        out.add(
            "trigger",
            f"{display_name(name)} on {owner}",
            owner,
            definition=definition,
            enabled=enabled.get(state, state),
        )


# -- differences ------------------------------------------------------------------------------------

_KIND_ORDER = ("schema", "extension", "enum type", "domain", "composite type", "range type", "table",
               "partitioned table", "foreign table", "column", "constraint", "index", "sequence", "view",
               "materialized view", "function", "procedure", "window function", "aggregate",
               "trigger")  # fmt: skip


def _order(key: tuple[str, str]) -> tuple[int, str]:
    kind, name = key
    return (_KIND_ORDER.index(kind) if kind in _KIND_ORDER else len(_KIND_ORDER), name)


def diff_schemas(before: SchemaSnapshot, after: SchemaSnapshot) -> list[SchemaDifference]:
    """What differs between the schema before the upgrade and after the downgrade.

    An object that exists on one side only is one difference; its columns, constraints, indexes,
    triggers and owned sequences are not listed again.
    """
    removed = {k for k in before.objects if k not in after.objects}
    added = {k for k in after.objects if k not in before.objects}
    whole_tables = {before.objects[k].name for k in removed} | {after.objects[k].name for k in added}
    differences: list[SchemaDifference] = []
    for key in sorted(removed | added | (before.objects.keys() & after.objects.keys()), key=_order):
        old, new = before.objects.get(key), after.objects.get(key)
        item = old or new
        assert item is not None
        if item.parent in whole_tables and key[0] != "table":
            continue
        if old is None:
            differences.append(SchemaDifference(item.label, "added", None, None, _summary(item),
                                                f"{item.label} exists after the downgrade but not before "
                                                "the upgrade"))  # fmt: skip
        elif new is None:
            differences.append(SchemaDifference(item.label, "removed", None, _summary(item), None,
                                                f"{item.label} exists before the upgrade but not after "
                                                "the downgrade"))  # fmt: skip
        else:
            differences.extend(_changed(old, new))
    return differences


def _summary(item: SchemaObject) -> str:
    return "; ".join(f"{k}: {v}" for k, v in item.attributes if v not in ("(none)", "no"))


def _changed(old: SchemaObject, new: SchemaObject) -> Iterable[SchemaDifference]:
    new_values = dict(new.attributes)
    for attribute, value in old.attributes:
        other = new_values.get(attribute, "(none)")
        if value == other:
            continue
        if "\n" in value or "\n" in other or len(value) + len(other) > _LONG_VALUE:
            lines = difflib.unified_diff(value.splitlines(), other.splitlines(), "before the upgrade",
                                         "after the downgrade", lineterm="", n=1)  # fmt: skip
            message = f"{old.label}: {attribute} differs:\n" + "\n".join(lines)
        else:
            message = f"{old.label}: {attribute} {value} before the upgrade, {other} after the downgrade"
        yield SchemaDifference(old.label, "changed", attribute, value, other, message)

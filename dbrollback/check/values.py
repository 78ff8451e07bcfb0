"""Generated column values, as the text PostgreSQL reads them (they are sent as literals cast to the
column's type).

Every value is derived from the row's number ``n`` (distinct per table, across every seeding
round) and a random generator seeded from the run's seed, the column and ``n``: the same seed gives
the same rows, and distinct ``n`` give distinct values for every type with enough room, which is
what unique and primary keys need. Text values mix case, spaces, quotes and non-ASCII letters, so a
migration that lower-cases, trims or re-encodes text changes them visibly.
"""

from __future__ import annotations

import json
import random
import uuid
from datetime import datetime, timedelta

from dbrollback.check.tables import ValueType

__all__ = ["Unsupported", "generate"]

_WORDS = ("Alpha", "bravo", "CHARLIE", "Délta", "o'Echo", " Foxtrot ", "golf Hotel", "India;",
          'Juliet "J"', "kïlo ünicode")  # fmt: skip
_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"
_EPOCH = datetime(2000, 1, 1)
_INTEGER_LIMITS = {"int2": 32_000, "int4": 2_000_000_000, "int8": 9_000_000_000_000_000_000}
_TEXT_TYPES = {"text", "varchar", "bpchar", "name", "citext"}


class Unsupported(Exception):
    """No generator knows this type."""


def _base36(n: int) -> str:
    digits = ""
    while True:
        n, rest = divmod(n, 36)
        digits = _BASE36[rest] + digits
        if n == 0:
            return digits


def _text(n: int, rng: random.Random, limit: int | None) -> str:
    value = f"{rng.choice(_WORDS)} {n}"
    if limit is None or len(value) <= limit:
        return value
    short = _base36(n)
    return short[-limit:] if limit > 0 else ""


def _numeric(n: int, rng: random.Random, typmod: int) -> str:
    if typmod < 4:  # unconstrained numeric
        return f"{n}.{rng.randint(1, 9999):04d}"
    precision, scale = ((typmod - 4) >> 16) & 0xFFFF, (typmod - 4) & 0xFFFF
    whole_digits = max(precision - scale, 0)
    whole = n % (10**whole_digits) if whole_digits else 0
    if scale <= 0:
        return str(whole)
    # A non-zero last digit, so that rounding or a narrower scale is visible.
    fraction = "".join(str(rng.randint(0, 9)) for _ in range(scale - 1)) + str(rng.randint(1, 9))
    return f"{whole}.{fraction}"


def _quote_element(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _from_hints(hints: tuple[str, ...], n: int, rng: random.Random, base: str) -> str | None:
    """A value taken from literals found in CHECK constraints (numbers: one in their range)."""
    if base in _INTEGER_LIMITS or base in ("numeric", "float4", "float8"):
        numbers = sorted(int(float(h)) for h in hints if _is_number(h))
        if numbers:
            # Bounds and their neighbours (``> 0``, ``<= 10``), or anything between two bounds.
            near = [k + d for k in numbers for d in (-1, 0, 1)]
            if numbers[-1] - numbers[0] > 1 and rng.random() < 0.5:
                return str(rng.randint(numbers[0], numbers[-1]))
            return str(rng.choice(near))
    strings = [h for h in hints if not _is_number(h)] or list(hints)
    return strings[n % len(strings)] if strings else None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def generate(vtype: ValueType, n: int, rng: random.Random, hints: tuple[str, ...] | None = None) -> str:
    """The text of a value of ``vtype`` for row ``n``.

    ``hints`` (literals from the column's CHECK constraints; the domain's are added) are used when
    given: the seeder passes them when a row with plain generated values was refused.
    Raises Unsupported for types no generator knows (the caller then uses NULL or the default).
    """
    if hints is not None and hints + vtype.hints:
        hinted = _from_hints(hints + vtype.hints, n, rng, vtype.base)
        if hinted is not None:
            return hinted
    base, typmod = vtype.base, vtype.typmod
    if base == "enum":
        if not vtype.labels:
            raise Unsupported(vtype.sql_name)
        return vtype.labels[n % len(vtype.labels)]
    if base == "array":
        assert vtype.element is not None
        count = n % 3 + 1
        elements = [generate(vtype.element, n * 3 + i, rng) for i in range(count)]
        return "{" + ",".join(_quote_element(e) for e in elements) + "}"
    if base == "range":
        assert vtype.element is not None
        bound = generate(vtype.element, n, rng)
        return f"[{_quote_element(bound)},{_quote_element(bound)}]"
    if base == "multirange":
        assert vtype.element is not None
        bound = generate(vtype.element, n, rng)
        return f"{{[{_quote_element(bound)},{_quote_element(bound)}]}}"
    if base == "composite":
        if not vtype.fields:
            raise Unsupported(vtype.sql_name)
        return "(" + ",".join(_quote_element(generate(f, n, rng)) for f in vtype.fields) + ")"
    if base in _INTEGER_LIMITS:
        return str(n % _INTEGER_LIMITS[base] + 1)
    if base == "numeric":
        return _numeric(n, rng, typmod)
    if base in ("float4", "float8"):
        return f"{n}.{rng.randint(1, 99):02d}"
    if base == "money":
        return f"{n}.{rng.randint(1, 99):02d}"
    if base == "bool":
        return "true" if n % 2 else "false"
    if base in _TEXT_TYPES or vtype.category == "S":
        limit = typmod - 4 if base in ("varchar", "bpchar") and typmod >= 4 else None
        if base == "name":
            limit = 63
        return _text(n, rng, limit)
    if base == "date":
        return (_EPOCH.date() + timedelta(days=n % 36_500)).isoformat()
    if base in ("timestamp", "timestamptz"):
        moment = _EPOCH + timedelta(minutes=7 * n, seconds=rng.randint(0, 59),
                                    microseconds=rng.randint(1, 999_999))  # fmt: skip
        return moment.isoformat() + ("+00:00" if base == "timestamptz" else "")
    if base in ("time", "timetz"):
        seconds = (61 * n) % 86_400
        value = (
            f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}.{rng.randint(1, 999_999):06d}"
        )
        return value + ("+00" if base == "timetz" else "")
    if base == "interval":
        return f"{n} minutes {rng.randint(0, 59)} seconds"
    if base == "uuid":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    if base in ("json", "jsonb"):
        return json.dumps({"n": n, "label": rng.choice(_WORDS), "tags": [rng.randint(0, 9), None, True]},
                          ensure_ascii=False)  # fmt: skip
    if base == "bytea":
        return "\\x" + n.to_bytes(8, "big").hex() + rng.randbytes(4).hex()
    if base == "inet":
        return f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"
    if base == "cidr":
        return f"10.{(n >> 8) & 255}.{n & 255}.0/24"
    if base in ("macaddr", "macaddr8"):
        size = 6 if base == "macaddr" else 8
        return ":".join(f"{b:02x}" for b in (n % 256**size).to_bytes(size, "big"))
    if base in ("bit", "varbit"):
        length = typmod if typmod > 0 else (1 if base == "bit" else 16)
        return format(n, "b").zfill(length)[-length:]
    if base == "xml":
        return f'<v n="{n}">{rng.choice(_WORDS).strip()}</v>'.replace("&", "&amp;")
    if base == "tsvector":
        return f"w{n} {_base36(n)}x"
    if base == "point":
        return f"({n},{rng.randint(0, 99)})"
    if base == "oid":
        return str(n % 4_000_000_000 + 1)
    if base == "pg_lsn":
        return f"{n:X}/{rng.getrandbits(32):X}"
    if base == "tsquery":
        return f"w{n} & {_base36(n)}x"
    if base == "hstore":  # the extension's type
        return f'"n"=>"{n}", "label"=>{_quote_element(rng.choice(_WORDS))}'
    raise Unsupported(vtype.sql_name)

"""A database password never appears in output, the catalog, snapshot files or manifests."""

from __future__ import annotations

from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

from .conftest import Project

SECRET = "Sup3rSecretPw"


def test_password_never_leaks(
    project: Project, cli, db: psycopg.Connection, database_url: str, tmp_path: Path
):
    # The test server trusts local connections, so the password is accepted and ignored: what
    # matters is what dbrollback does with it.
    url = make_url(database_url).set(password=SECRET).render_as_string(hide_password=False)
    assert SECRET in url
    project.add_revision("r1", None, """
        op.create_table("t", sa.Column("id", sa.Integer, primary_key=True), sa.Column("v", sa.Text))
        op.execute("INSERT INTO t SELECT g, g::text FROM generate_series(1, 50) g")
    """)  # fmt: skip
    project.add_revision("r2", "r1", 'op.drop_column("t", "v")')
    store = tmp_path / "store"
    args = ["--database-url", url, "--store", str(store)]
    outputs = []
    for command in (["plan", "--json"], ["upgrade", "r1"], ["upgrade", "--json"], ["snapshot", "create"],
                    ["snapshot", "list", "--json"], ["history", "--json"], ["status"], ["config", "show"]):  # fmt: skip
        result = cli(*command, *args)
        assert result.code == 0, (command, result.err)
        outputs.append(result.out + result.err)
    snapshot_id = outputs[3].strip().splitlines()[-1]
    for command in (["verify", "--snapshot", snapshot_id], ["restore", "--snapshot", snapshot_id, "--yes"],
                    ["snapshot", "show", snapshot_id, "--json"], ["restore", "--snapshot", "nope", "--yes"]):  # fmt: skip
        result = cli(*command, *args)
        outputs.append(result.out + result.err)
    bad_host = make_url(url).set(host="127.0.0.1", port=1, query={}).render_as_string(hide_password=False)
    unreachable = cli("status", "--database-url", bad_host)
    assert unreachable.code == 2
    outputs.append(unreachable.out + unreachable.err)

    assert all(SECRET not in text for text in outputs)
    for path in store.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    catalog_text = db.execute(
        "SELECT concat_ws(' ', (SELECT string_agg(r::text, ' ') FROM dbrollback.runs r),"
        " (SELECT string_agg(a::text, ' ') FROM dbrollback.audit a),"
        " (SELECT string_agg(s::text, ' ') FROM dbrollback.snapshots s),"
        " (SELECT string_agg(p::text, ' ') FROM dbrollback.restore_points p))"
    ).fetchone()[0]  # type: ignore[index]
    assert "upgrade" in catalog_text and SECRET not in catalog_text

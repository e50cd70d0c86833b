"""Any engine, no Kaelum code: deltalake, polars and plain DuckDB read the same events as the views."""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl
import pytest
from deltalake import DeltaTable

import store
from store import StoreWriter, events_from_dicts
from store.compact import compact
from store_traces import _traces  # the e2e traces (tests/ is on sys.path)


@pytest.fixture(scope="module")
def st(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("engines") / "store"
    traces = list(_traces().values())
    with StoreWriter(root, "host-a") as a, StoreWriter(root, "host-b") as b:
        for i, (_tid, evs) in enumerate(traces):
            (a if i % 2 else b).commit(events_from_dicts([e.to_dict() for e in evs]))
    compact(root)  # OPTIMIZE: the log now removes files; every engine must follow it
    with StoreWriter(root, "host-c") as c:  # and a commit after it
        c.commit(events_from_dicts([e.to_dict() for e in traces[0][1][:3]]))  # re-sent: same ids
    return root


def _view_rows(root: Path) -> list[tuple]:
    con = store.connect(root)
    try:
        return sorted(con.execute('SELECT id, type, trace_id, seq, writer, "offset" FROM _events_all').fetchall())
    finally:
        con.close()


def test_deltalake_polars_and_duckdb_read_what_the_views_read(st: Path):
    want = _view_rows(st)
    assert len(want) == sum(len(e) for _t, e in _traces().values()) + 3
    cols = ["id", "type", "trace_id", "seq", "writer", "offset"]
    dt = DeltaTable(str(st / "events"))
    got_delta = sorted(zip(*(dt.to_pyarrow_table(columns=cols).column(c).to_pylist() for c in cols)))
    got_polars = sorted(pl.scan_delta(str(st / "events")).select(cols).collect().rows())
    files = dt.file_uris()
    got_duckdb = sorted(duckdb.execute(f'SELECT {", ".join(chr(34) + c + chr(34) for c in cols)} FROM read_parquet(?)', [files]).fetchall())
    assert got_delta == got_polars == got_duckdb == want
    # The de-duplicated view equals what a user gets by de-duplicating on id themselves.
    con = store.connect(st)
    assert con.execute("SELECT count(*) FROM events").fetchone()[0] == pl.scan_delta(str(st / "events")).select("id").unique().collect().height
    # The same version by number, from every engine (time travel without Kaelum).
    v = dt.version() - 1
    old = store.connect(st, as_of=v).execute("SELECT count(*) FROM _events_all").fetchone()[0]
    assert old == DeltaTable(str(st / "events"), version=v).to_pyarrow_table(columns=["id"]).num_rows
    assert old == pl.scan_delta(str(st / "events"), version=v).select(pl.len()).collect().item() == len(want) - 3


def test_duckdb_delta_extension_where_a_user_has_it(st: Path):
    con = duckdb.connect()
    try:
        con.execute("LOAD delta")
    except duckdb.Error:
        pytest.skip("DuckDB's delta extension is not installed here (it is downloaded on first INSTALL)")
    n = con.execute(f"SELECT count(*) FROM delta_scan('{st / 'events'}')").fetchone()[0]
    assert n == len(_view_rows(st))

"""The SQLite adapter's bulk shapes: the same rows as plain sqlite3, in a bounded number of statements.

`controller/store/database.py` explains why (the GIL is released once per step); these tests pin
what a caller relies on: a query's rows come back exactly and in its order, a multi-row upsert
behaves as the statements one by one, ids from `insert_returning_ids` name the rows inserted.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.errors import StoreError
from controller.store.database import SqliteDatabase

CELLS = st.one_of(
    st.none(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    # Every real the store holds (timestamps, durations, RSSI) is far below 1e15; see `_aggregated`.
    st.floats(min_value=-1e15, max_value=1e15, allow_nan=False),
    st.text(),
    st.binary(),
)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[SqliteDatabase]:
    database = SqliteDatabase(tmp_path / "store.sqlite3")
    database.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, k TEXT UNIQUE, a, b)")
    yield database
    database.close()


def _statements(db: SqliteDatabase) -> list[str]:
    """Every statement the adapter's connection runs from now on."""
    seen: list[str] = []
    db._db.set_trace_callback(seen.append)
    return seen


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.tuples(CELLS, CELLS), max_size=40))
def test_a_query_returns_every_value_exactly_and_in_its_order(
    tmp_path_factory: pytest.TempPathFactory, rows: list[tuple[object, object]]
) -> None:
    database = SqliteDatabase(tmp_path_factory.mktemp("db") / "store.sqlite3")
    database.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, a, b)")
    database.executemany("INSERT INTO item (a, b) VALUES (?, ?)", rows)
    # Descending ids: an order the table's own scan would not give.
    got = database.fetchall("SELECT a, b FROM item WHERE id > ? ORDER BY id DESC", (0,))
    database.close()
    assert got == [tuple(row) for row in reversed(rows)]


def test_thousands_of_rows_travel_in_a_bounded_number_of_statements(db: SqliteDatabase) -> None:
    rows = [(f"k{index:05d}", index * 0.5, bytes([index % 256]) * 4) for index in range(5_000)]
    seen = _statements(db)
    with db.transaction():
        db.executemany("INSERT INTO item (k, a, b) VALUES (?, ?, ?)", rows)
    got = db.fetchall("SELECT k, a, b FROM item ORDER BY k DESC")
    db.executemany("DELETE FROM item WHERE k = ?", [(k,) for k, _, _ in rows[:4_000]])
    # BEGIN, 5 inserts of 1,000 rows, COMMIT; the query's width, the query; 4 deletes.
    assert len(seen) <= 13, seen[:20]
    assert got == sorted(rows, reverse=True)
    assert db.fetchall("SELECT COUNT(*) FROM item") == [(1_000,)]


def test_a_multi_row_upsert_behaves_as_the_statements_one_by_one(db: SqliteDatabase, tmp_path: Path) -> None:
    upsert = (
        "INSERT INTO item (k, a, b) VALUES (?, ?, ?) ON CONFLICT (k) DO UPDATE SET"
        " a = excluded.a, b = excluded.b WHERE excluded.a > item.a"
    )
    # The same key several times in one batch, newer and older values mixed.
    rows = [("x", 1, "one"), ("y", 5, "five"), ("x", 3, "three"), ("x", 2, "two"), ("y", 4, "four")]
    db.executemany(upsert, rows)
    plain = sqlite3.connect(tmp_path / "plain.sqlite3")
    plain.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, k TEXT UNIQUE, a, b)")
    plain.executemany(upsert, rows)
    expected = plain.execute("SELECT k, a, b FROM item ORDER BY k").fetchall()
    plain.close()
    assert (
        db.fetchall("SELECT k, a, b FROM item ORDER BY k")
        == expected
        == [("x", 3, "three"), ("y", 5, "five")]
    )


def test_inserted_ids_name_the_rows_inserted(db: SqliteDatabase) -> None:
    db.executemany("INSERT INTO item (k) VALUES (?)", [("before",)])
    rows = [(f"k{index}", index) for index in range(2_500)]
    with db.transaction():
        ids = db.insert_returning_ids("INSERT INTO item (k, a) VALUES (?, ?)", rows)
    assert len(ids) == len(set(ids)) == len(rows)
    by_id = dict((row_id, (k, a)) for row_id, k, a in db.fetchall("SELECT id, k, a FROM item"))
    assert [by_id[row_id] for row_id in ids] == rows
    assert db.insert_returning_ids("INSERT INTO item (k, a) VALUES (?, ?)", []) == []


def test_statements_of_other_shapes_still_run_and_errors_are_store_errors(db: SqliteDatabase) -> None:
    db.executemany("INSERT INTO item (k, a) VALUES (?, ?)", [("x", 1), ("y", 2)])
    # Not a VALUES insert nor a delete by one key: run row by row, as sqlite3 does.
    db.executemany("UPDATE item SET a = a + ? WHERE k = ?", [(10, "x"), (20, "y")])
    assert db.fetchall("SELECT a FROM item ORDER BY k") == [(11,), (22,)]
    assert db.fetchall("INSERT INTO item (k) VALUES (?) RETURNING k", ("z",)) == [("z",)]
    with pytest.raises(StoreError, match="UNIQUE"):
        db.executemany("INSERT INTO item (k) VALUES (?)", [("x",)])
    with pytest.raises(StoreError, match="no such table"):
        db.fetchall("SELECT * FROM missing")
    with pytest.raises(StoreError, match="placeholders"):
        db.insert_returning_ids("INSERT INTO item (k) SELECT k FROM item", [()])

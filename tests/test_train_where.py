"""--where: one standalone expression, applied after the other filters, with clear errors and limits."""

from __future__ import annotations

import time

import pyarrow as pa
import pytest

from train.data import DataError, select_rows
from train.where import WhereError, check_where, column_names, filter_rows


def _table(rows):
    return pa.Table.from_pylist(
        [
            {"trace_id": t, "domain": d, "query": q, "steps": ["s"], "final_answer": "1", "reward": r, "verified": True, "tags": []}
            for t, d, r, q in rows
        ]
    )


ROWS = _table(
    [
        ("a", "math", 0.95, "q1"),
        ("b", "math", 0.75, "q2"),
        ("c", "code", 0.99, "q3"),
        ("d", "logic", 0.5, "日本語"),
        ("e", "math", 0.85, "日本語"),
    ]
)


def test_a_fragment_cannot_escape_the_other_filters():
    # Validated as `SELECT (pred)` and pasted after `domain = ? and reward >= ? and`, this selected
    # code and logic rows and the math row with reward 0.75.
    with pytest.raises(WhereError, match=r"not a query fragment: the '\)' at character 11 closes a parenthesis it did not open"):
        check_where("reward>0.9) or (1=1")
    with pytest.raises(WhereError, match=r"not a query fragment: 1 '\(' left open"):
        check_where("(reward>0.9 or (1=1)")
    # A true predicate keeps exactly the rows the other filters kept, never more.
    rows, stages = select_rows(ROWS, view="training_examples", domain="math", min_reward=0.8, where="(reward>0.9) or (1=1)")
    assert [r["trace_id"] for r in rows] == ["a", "e"]
    assert [n for _, n in stages] == [5, 3, 2, 2]


def test_non_ascii_text_in_a_predicate():
    # Token offsets are bytes: mixing them with character offsets raised IndexError.
    assert check_where("query <> '日本語' and reward > 0.5") == "query <> '日本語' and reward > 0.5"
    with pytest.raises(WhereError, match="found 2 statements"):
        check_where("query = '日本語'; select 1")
    rows, _ = select_rows(ROWS, view="training_examples", domain=None, min_reward=None, where="query = '日本語'")
    assert [r["trace_id"] for r in rows] == ["d", "e"]
    with pytest.raises(WhereError, match=r"the '\)' at character 14"):
        check_where("query = '日本語') or (1=1")


@pytest.mark.parametrize("pred", ["not " * 900 + "true", "(" * 150 + "true" + ")" * 150, "not " * 20000 + "true"], ids=["900 NOTs", "150 parentheses", "20000 NOTs"])
def test_deep_nesting_is_a_clear_error(pred):
    with pytest.raises(WhereError, match="nests expressions more than 100 levels deep|Max expression depth"):
        check_where(pred)


def test_sleeping_is_refused():
    with pytest.raises(WhereError, match=r"may not call pg_sleep\(\)"):
        check_where("pg_sleep(120) is null")
    with pytest.raises(WhereError, match=r"may not call sleep_ms\(\)"):
        check_where("sleep_ms(120000) is null")


def test_a_runaway_predicate_hits_the_time_limit():
    started = time.monotonic()
    with pytest.raises(WhereError, match=r"ran longer than 1 s on 5 rows of training_examples and was stopped"):
        filter_rows(ROWS, "len(list_filter(range(2000000000), lambda x: x % 7 = 0)) > 0", time_limit_s=1, memory_limit_bytes=8 << 30)
    assert time.monotonic() - started < 10


def test_a_runaway_predicate_hits_the_memory_limit():
    # Materialising 200M integers grew a process to 8 GiB; DuckDB's own memory_limit does not
    # bound list building, so the child's resident memory is watched.
    started = time.monotonic()
    with pytest.raises(WhereError, match=r"used more than 256 MiB evaluating 5 rows of training_examples and was stopped"):
        filter_rows(ROWS, "len(list_transform(range(200000000), lambda x: x + 1)) > 0", memory_limit_bytes=256 << 20)
    assert time.monotonic() - started < 30


def test_a_failing_predicate_names_the_view_and_the_error():
    with pytest.raises(DataError, match=r"--where failed on training_examples: Binder Error: .*no_such_column"):
        select_rows(ROWS, view="training_examples", domain=None, min_reward=None, where="no_such_column > 1")


def test_filter_rows_keeps_order_and_types():
    kept = filter_rows(ROWS, "reward > 0.8 and domain <> 'code'")
    assert kept.schema == ROWS.schema
    assert kept.column("trace_id").to_pylist() == ["a", "e"]
    assert filter_rows(ROWS.slice(0, 0), "reward > 0").num_rows == 0


def test_aliases_are_refused():
    with pytest.raises(WhereError, match="not a named column"):
        check_where("reward > 0.9 as good")


def test_column_names_are_every_name_a_column_reference_uses():
    assert column_names("n_steps >= 2 and Reward > 0.8") == {"n_steps", "reward"}
    assert column_names("selected.reward > 0.5 or query ilike '%x%'") == {"selected", "reward", "query"}  # a qualifier too
    assert column_names("1 = 1") == set()
    with pytest.raises(WhereError, match="may not contain subqueries"):
        column_names("reward > (select 0)")  # checked first, like check_where


def test_a_worker_keeps_its_child_between_requests_and_replaces_one_that_ran_away():
    """``WhereWorker`` (kaelum ui's dataset page): one child for many requests, each with the same
    limits; a request past its time or memory limit kills the child, and the next starts a new one."""
    from train.where import WhereWorker

    with WhereWorker() as worker:
        kept = worker.filter_rows(ROWS, "reward > 0.8 and domain <> 'code'")
        assert kept.column("trace_id").to_pylist() == ["a", "e"] and kept.schema == ROWS.schema
        first = worker._proc.pid
        assert worker.filter_rows(ROWS, "query = '日本語'").column("trace_id").to_pylist() == ["d", "e"]
        assert worker._proc.pid == first  # the same child answered
        # DuckDB refusing a predicate is that request's error; the child goes on.
        with pytest.raises(WhereError, match=r"--where failed on training_examples: Binder Error: .*no_such_column"):
            worker.filter_rows(ROWS, "no_such_column > 1")
        assert worker.filter_rows(ROWS, "reward < 0.6").column("trace_id").to_pylist() == ["d"]
        assert worker._proc.pid == first
        started = time.monotonic()
        with pytest.raises(WhereError, match=r"ran longer than 1 s on 5 rows of training_examples and was stopped"):
            worker.filter_rows(ROWS, "len(list_filter(range(2000000000), lambda x: x % 7 = 0)) > 0", time_limit_s=1, memory_limit_bytes=8 << 30)
        assert time.monotonic() - started < 10
        assert worker._proc is None  # killed, not reused
        with pytest.raises(WhereError, match=r"used more than 256 MiB evaluating 5 rows of training_examples and was stopped"):
            worker.filter_rows(ROWS, "len(list_transform(range(200000000), lambda x: x + 1)) > 0", memory_limit_bytes=256 << 20)
        assert worker.filter_rows(ROWS, "reward > 0.9").column("trace_id").to_pylist() == ["a", "c"]
        last = worker._proc
        assert last.pid != first and last.poll() is None
    assert last.poll() is not None  # close() stopped the child


def test_a_worker_restarts_a_child_that_died_between_requests():
    import os
    import signal

    from train.where import WhereWorker

    with WhereWorker() as worker:
        assert worker.filter_rows(ROWS, "reward > 0.9").num_rows == 2
        os.kill(worker._proc.pid, signal.SIGKILL)
        worker._proc.wait()
        assert worker.filter_rows(ROWS, "reward > 0.9").num_rows == 2


def test_a_worker_gives_positions_of_the_rows_sent():
    """``WhereWorker.positions``: the rows (ascending positions) of the table sent — the dataset page
    sends only the columns the predicate names and takes the positions on its wider table."""
    from train.where import WhereWorker

    with WhereWorker() as worker:
        got = worker.positions(ROWS.select(["reward", "domain"]), "reward > 0.8 and domain <> 'code'")
        assert got.type == pa.int64() and got.to_pylist() == [0, 4]
        assert worker.positions(ROWS.slice(0, 0), "reward > 0.8").to_pylist() == []
        with pytest.raises(WhereError, match="no_such_column"):
            worker.positions(ROWS.select(["reward"]), "no_such_column > 1")


def test_a_checked_predicate_is_cached_and_a_refused_one_stays_refused():
    pred = "reward > 0.25 and domain = 'math'"
    assert check_where(pred) == pred and check_where(pred) == pred
    assert column_names(pred) == {"reward", "domain"}
    for _ in range(2):
        with pytest.raises(WhereError, match="may not contain subqueries"):
            check_where("reward > (select 0.25)")

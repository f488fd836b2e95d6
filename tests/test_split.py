import pytest

from rerankit.data import Doc, QueryRecord
from rerankit.split import split_records

pytestmark = pytest.mark.smoke


def records(n=200, chunks=40):
    return [
        QueryRecord(f"question {i}", (Doc(f"p{i}", f"text {i}"),), (), source_chunk=f"c{i % chunks}")
        for i in range(n)
    ]


def test_split_by_query_is_disjoint_deterministic_and_near_ratio():
    recs = records()
    train, valid = split_records(recs, 0.2, seed=1)
    assert {r.key for r in train}.isdisjoint({r.key for r in valid})
    assert len(train) + len(valid) == len(recs)
    assert 35 <= len(valid) <= 45
    assert split_records(recs, 0.2, seed=1) == (train, valid)
    assert split_records(list(reversed(recs)), 0.2, seed=1)[1] == sorted(
        valid, key=lambda r: -recs.index(r)
    )  # file order does not change who is where
    assert split_records(recs, 0.2, seed=2)[1] != valid


def test_split_by_source_chunk_keeps_chunks_whole():
    recs = records()
    train, valid = split_records(recs, 0.2, seed=3, group_by="source_chunk")
    assert {r.source_chunk for r in train}.isdisjoint({r.source_chunk for r in valid})
    assert {r.key for r in train}.isdisjoint({r.key for r in valid})
    assert valid


def test_chained_chunks_stay_together():
    # q0-c0-q1-c1-q2 is one component even though q0 and q2 share nothing directly.
    recs = [
        QueryRecord("q0", (Doc("a", "a"),), (), "c0"),
        QueryRecord("q1", (Doc("b", "b"),), (), "c0"),
        QueryRecord("q1", (Doc("c", "c"),), (), "c1"),
        QueryRecord("q2", (Doc("d", "d"),), (), "c1"),
        QueryRecord("q3", (Doc("e", "e"),), (), "c9"),
    ]
    for seed in range(5):
        train, valid = split_records(recs, 0.3, seed=seed, group_by="source_chunk")
        side = {r.query: ("v" if r in valid else "t") for r in recs}
        assert side["q0"] == side["q1"] == side["q2"]


def test_one_group_cannot_be_split():
    with pytest.raises(ValueError, match="one group"):
        split_records(records(3, chunks=1), 0.5, group_by="source_chunk")

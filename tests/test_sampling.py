import pytest

from rerankit.data import Doc, QueryRecord
from rerankit.sampling import NegativeSampler

pytestmark = pytest.mark.smoke


def make_records():
    recs = []
    for i in range(30):
        recs.append(
            QueryRecord(
                f"query {i}",
                tuple(Doc(f"q{i}p{j}", f"positive {i} {j}") for j in range(1 + i % 3)),
                tuple(Doc(f"q{i}n{j}", f"hard {i} {j}") for j in range(10)),
            )
        )
    # Query 0 shares a positive text with a document of query 1 under another id.
    recs.append(QueryRecord("query shared", (Doc("s1", "hard 1 0"),), ()))
    return recs


def test_group_shape_and_labels():
    sampler = NegativeSampler(make_records(), num_negatives=5, hard_ratio=0.6, max_positives=2)
    g = sampler.group(2, epoch=0)  # query 2 has 3 positives, capped at 2
    assert g.labels == (1, 1, 0, 0, 0, 0, 0)
    hard = [d for d in g.doc_ids[2:] if d.startswith("q2n")]
    assert len(hard) == 3  # round(0.6 * 5)
    assert len(set(g.doc_ids)) == len(g.doc_ids)


def test_same_seed_epoch_query_gives_same_group_and_new_epoch_differs():
    a = NegativeSampler(make_records(), seed=1)
    b = NegativeSampler(list(reversed(make_records())), seed=1)  # order of queries irrelevant
    ga = a.group(5, epoch=0)
    gb = b.group(len(make_records()) - 1 - 5, epoch=0)
    assert ga == gb
    assert a.group(5, epoch=0) == ga
    changed = sum(a.group(i, 0).doc_ids != a.group(i, 1).doc_ids for i in range(30))
    assert changed >= 25
    assert NegativeSampler(make_records(), seed=2).group(5, 0) != ga


def test_random_negatives_never_hit_positives_by_id_or_text():
    sampler = NegativeSampler(make_records(), num_negatives=8, hard_ratio=0.0)
    shared = len(make_records()) - 1
    for epoch in range(40):
        g = sampler.group(shared, epoch)
        negs = [(i, t) for i, t, label in zip(g.doc_ids, g.docs, g.labels) if label == 0]
        assert len(negs) == 8
        assert all(i != "s1" and t != "hard 1 0" for i, t in negs)
        # other queries' positives are fair random negatives, their own never
        g0 = sampler.group(0, epoch)
        assert not any(i.startswith("q0p") for i, label in zip(g0.doc_ids, g0.labels) if label == 0)


def test_missing_hard_negatives_are_filled_randomly():
    sampler = NegativeSampler(make_records(), num_negatives=4, hard_ratio=1.0)
    g = sampler.group(len(make_records()) - 1, 0)  # the shared query has no hard negatives
    assert g.labels.count(0) == 4


def test_teacher_scores_follow_their_documents_and_random_negatives_have_none():
    records = [
        QueryRecord(
            f"query {i}",
            (Doc(f"p{i}", f"positive {i}", 10.0 + i),),
            tuple(Doc(f"n{i}_{j}", f"negative {i} {j}", float(j)) for j in range(3)),
        )
        for i in range(4)
    ]
    group = NegativeSampler(records, num_negatives=4, hard_ratio=0.5, seed=1).group(2, epoch=0)
    by_id = {d.doc_id: d.score for r in records for d in r.positives + r.negatives}
    assert group.labels == (1, 0, 0, 0, 0) and len(group.teacher) == 5
    assert group.teacher[:3] == tuple(by_id[d] for d in group.doc_ids[:3])  # positive, 2 hard
    assert all(d.startswith(("p", "n")) and not d.startswith(("p2", "n2")) for d in group.doc_ids[3:])
    assert group.teacher[3:] == (None, None)  # random: scored for another query, if at all

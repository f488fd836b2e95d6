import json

import pytest

from rerankit.data import normalize_query, read_records, write_records
from rerankit.errors import DataError

pytestmark = pytest.mark.smoke


def write(path, *lines):
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in lines))
    return path


def line(q="what is x?", pos=(("p1", "x is a letter"),), neg=(("n1", "y is another"),), **extra):
    return {
        "query_text": q,
        "positives": [{"doc_id": i, "text": t} for i, t in pos],
        "negatives": [{"doc_id": i, "text": t} for i, t in neg],
        **extra,
    }


def test_reads_the_seed_format(tmp_path):
    path = write(
        tmp_path / "d.jsonl",
        line(
            source_chunk="c1",
            meta={"domain": "cmu"},
            pos=(("p1", "a"), ("p2", "b")),
            neg=(("n1", "c"), ("n2", "d")),
        ),
    )
    records, report = read_records(path)
    (rec,) = records
    assert rec.query == "what is x?" and rec.source_chunk == "c1" and rec.meta == {"domain": "cmu"}
    assert [d.doc_id for d in rec.positives] == ["p1", "p2"]
    assert [d.doc_id for d in rec.negatives] == ["n1", "n2"]
    assert report.records == 1 and report.lines == 1


@pytest.mark.parametrize(
    "bad, message, field",
    [
        ("{not json", "not valid JSON", None),
        ('["a list"]', "expected a JSON object", None),
        (json.dumps({"positives": [{"doc_id": "p", "text": "t"}]}), "non-empty string", "query_text"),
        (json.dumps({"query_text": "q"}), "required key is missing", "positives"),
        (json.dumps({"query_text": "q", "positives": "p"}), "expected a list", "positives"),
        (
            json.dumps({"query_text": "q", "positives": [{"doc_id": "p"}]}),
            "text must be a string",
            "positives[0].text",
        ),
        (
            json.dumps({"query_text": "q", "positives": [{"text": "t"}]}),
            "doc_id must be",
            "positives[0].doc_id",
        ),
        (
            json.dumps({"query_text": "q", "positives": [], "negatives": [{"doc_id": "n", "text": 3}]}),
            "text must be a string",
            "negatives[0].text",
        ),
        (json.dumps({"query_text": "q", "positives": [], "extra": 1}), "unknown key", None),
        (
            json.dumps({"query_text": "q", "positives": [{"doc_id": "p", "text": "t", "score": "high"}]}),
            "score must be a finite number",
            "positives[0].score",
        ),
        (
            '{"query_text": "q", "positives": [{"doc_id": "p", "text": "t"}], '
            '"negatives": [{"doc_id": "n", "text": "u", "score": NaN}]}',
            "score must be a finite number",
            "negatives[0].score",
        ),
        (  # an integer too large for a float
            '{"query_text": "q", "positives": [{"doc_id": "p", "text": "t", "score": 1' + "0" * 400 + "}]}",
            "score must be a finite number",
            "positives[0].score",
        ),
    ],
)
def test_bad_lines_name_file_line_and_field(tmp_path, bad, message, field):
    path = write(tmp_path / "d.jsonl", line(), bad)
    with pytest.raises(DataError, match=message) as info:
        read_records(path)
    assert info.value.path == str(path) and info.value.line == 2 and info.value.field == field
    assert str(info.value).startswith(f"{path}:2: ")


def test_skip_policy_counts_bad_lines(tmp_path):
    path = write(tmp_path / "d.jsonl", line(), "{oops", line(q="other"))
    records, report = read_records(path, on_error="skip")
    assert len(records) == 2 and report.skipped_bad_lines == 1
    assert "d.jsonl:2" in report.errors[0]
    assert "skipped bad lines: 1" in report.summary()


def test_cleaning_rules_are_counted(tmp_path):
    path = write(
        tmp_path / "d.jsonl",
        # duplicate doc_id among positives; empty text doc; negative equal to a positive
        line(
            q="q1",
            pos=(("p1", "a"), ("p1", "a again"), ("p2", "  ")),
            neg=(("p1", "a"), ("n1", "a"), ("n2", "b")),
        ),
        # no positive left -> line dropped
        line(q="q2", pos=(("p", ""),)),
        # same normalized query as q1 -> merged
        line(q="  Q1 ", pos=(("p3", "c"),), neg=(("n3", "d"),)),
    )
    records, report = read_records(path)
    assert len(records) == 1
    rec = records[0]
    assert [d.doc_id for d in rec.positives] == ["p1", "p3"]
    assert [d.doc_id for d in rec.negatives] == ["n2", "n3"]
    assert report.dropped_duplicate_doc_ids == 1
    assert report.dropped_empty_text_docs == 2
    assert report.dropped_negatives_equal_to_positive == 2
    assert report.dropped_lines_without_positive == 1
    assert report.merged_duplicate_queries == 1


def test_file_with_no_usable_query_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no usable query"):
        read_records(write(tmp_path / "d.jsonl", line(pos=(("p", " "),))))


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="cannot open"):
        read_records(tmp_path / "nope.jsonl")


def test_round_trip(tmp_path):
    records, _ = read_records(
        write(tmp_path / "d.jsonl", line(source_chunk="c", meta={"k": 1}), line(q="two"))
    )
    write_records(records, tmp_path / "out.jsonl")
    again, _ = read_records(tmp_path / "out.jsonl")
    assert again == records


def test_teacher_scores_round_trip(tmp_path):
    path = write(
        tmp_path / "d.jsonl",
        json.dumps(
            {
                "query_text": "q",
                "positives": [{"doc_id": "p", "text": "t", "score": 12}],
                "negatives": [{"doc_id": "n", "text": "u", "score": -1.5}, {"doc_id": "m", "text": "v"}],
            }
        ),
    )
    (record,), _ = read_records(path)
    assert [d.score for d in record.positives + record.negatives] == [12.0, -1.5, None]
    again = write_records([record], tmp_path / "again.jsonl")
    assert again == 1 and read_records(tmp_path / "again.jsonl")[0] == [record]
    assert "score" not in json.loads((tmp_path / "again.jsonl").read_text())["negatives"][1]


def test_normalize_query():
    assert normalize_query("  What  is\tX? ") == normalize_query("what is x") == "what is x"

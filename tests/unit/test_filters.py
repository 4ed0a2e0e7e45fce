import pytest

from tritonrag.errors import InvalidInput
from tritonrag.kb.docstore import filter_clause
from tritonrag.kb.filters import MAX_FILTER_VALUES, parse_filter


@pytest.mark.parametrize("raw", [None, "", "{}", {}])
def test_no_filter(raw):
    assert parse_filter(raw) is None


def test_json_string_bytes_and_dict_give_equal_filters():
    a = parse_filter('{"source": ["b.md", "a.md"], "year": 2020}')
    assert a == parse_filter(b'{"year": 2020, "source": ["a.md", "b.md"]}')
    assert a == parse_filter({"source": ["a.md", "b.md", "a.md"], "year": 2020})
    assert a.fields == (("source", ("a.md", "b.md")), ("year", (2020,)))
    assert parse_filter(a.to_json()) == a


def test_sql_binds_every_value():
    where, params = filter_clause(parse_filter({"source": "x'; DROP TABLE chunks; --", "doc_id": ["1", "2"]}))
    assert "DROP" not in where
    assert where == 'json_extract(d.metadata, ?) IN (?,?) AND c.source IN (?)'
    assert params == ['$."doc_id"', "1", "2", "x'; DROP TABLE chunks; --"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ({"bad key!": 1}, "not a valid name"),
        ({'x") OR 1=1 --': 1}, "not a valid name"),
        ({"source": []}, "empty list"),
        ({"source": {"nested": 1}}, "strings, numbers or booleans"),
        ({"source": [None]}, "strings, numbers or booleans"),
        ({"source": float("nan")}, "strings, numbers or booleans"),
        ({"source": list(range(MAX_FILTER_VALUES + 1))}, "limit"),
        ("x" * 70000, "characters"),
    ],
)
def test_invalid_filters_are_explained(raw, message):
    with pytest.raises(InvalidInput, match=message):
        parse_filter(raw)

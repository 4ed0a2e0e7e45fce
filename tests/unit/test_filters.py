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


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("[" * 5000 + "]" * 5000, "filter nests arrays and objects more than 2 levels deep"),
        ('{"source": [[["a"]]]}', "more than 2 levels deep"),
        ('{"source": "\\ud800"}', "lone surrogate"),
        ({"source": "\ud800"}, "lone surrogate"),
        ('{"year": ' + "1" * 5000 + "}", "more than 4300 digits"),
        ('{"year": Infinity}', "and numbers finite, got inf"),
        ({"year": 2**70}, "integers must fit in 64 bits"),
        (b'{"source": "\xff"}', "filter is not valid UTF-8"),
        ({f"f{i}": 1 for i in range(65)}, "65 fields; the limit is 64"),
        ({f"f{i}": list(range(900)) for i in range(5)}, "4500 values in all; the limit is 4000"),
        ({1: "a", "b": 2}, "filter field 1 is not a valid name"),
    ],
)
def test_hostile_filters_are_refused_without_recursion_or_crashes(raw, message):
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(").replace("[", r"\[")):
        parse_filter(raw)


def test_a_refused_value_is_quoted_short():
    with pytest.raises(InvalidInput) as caught:
        parse_filter({"source": {"x": "y" * 5000}})
    assert "strings, numbers or booleans" in str(caught.value) and len(str(caught.value)) < 300


def test_equal_values_of_other_types_stay_apart():
    assert parse_filter({"flag": [1, True, 1.0, 1]}).fields == (("flag", (True, 1.0, 1)),)

"""Tag information limits, catalogue files and decision rules: the pure parts (tagvision.knowledge).

Every bad input must give an error that names its row or field; every good value must survive a round trip.
"""

from __future__ import annotations

import json

import pytest

from tagvision.knowledge import FieldError, rules
from tagvision.knowledge import catalogue as cat
from tagvision.knowledge import information as info

# --------------------------------------------------------------------------- information


def test_information_accepts_json_values_and_digests_them_canonically() -> None:
    value = {"brand": "Acme", "price": 49.9, "sizes": ["S", "M"], "stock": {"S": 3, "M": 0}, "sale": False, "x": None}
    assert info.validate(value) is value
    reordered = dict(reversed(list(value.items())))
    assert info.digest(value) == info.digest(reordered) and len(info.digest(value)) == 64
    assert info.digest({}) is None
    assert info.select(value, ("price", "nope")) == {"price": 49.9}
    assert info.select(value, None) is value


@pytest.mark.parametrize(
    ("value", "field", "words"),
    [
        ([1, 2], "information", "must be a JSON object"),
        ({"a": float("nan")}, "information.a", "not a finite number"),
        ({"a": 2**60}, "information.a", "too large"),
        ({"": 1}, "information", "empty"),
        ({"k\x00": 1}, "information", "control characters"),
        ({"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}, "information.a.b.c.d.e.f", "deeper than 6"),
        ({"a": list(range(501))}, "information.a", "501 items"),
        ({f"k{i}": i for i in range(201)}, "information", "201 keys"),
        ({"a": "x" * 8001}, "information.a", "8,001 characters"),
        ({f"k{i}": "y" * 7000 for i in range(5)}, "information", "bytes of JSON"),
        ({"a": {1, 2}}, "information.a", "not a JSON value"),
    ],
)
def test_information_limits_name_the_field(value, field: str, words: str) -> None:
    with pytest.raises(FieldError) as caught:
        info.validate(value)
    assert caught.value.field == field
    assert words in caught.value.message
    assert caught.value.code == "BadRequestTagInformation"


def test_json_text_is_parsed_strictly() -> None:
    assert info.loads('{"a": [1, 2.5, "x"]}') == {"a": [1, 2.5, "x"]}
    for text, words in (
        ('{"a": 1, "a": 2}', "appears twice"),
        ('{"a": NaN}', "not a finite number"),
        ("{'a': 1}", "not valid JSON"),
        ("[" * 100_000, "nests too deeply"),
    ):
        with pytest.raises(FieldError, match=words):
            info.loads(text, "body")


# --------------------------------------------------------------------------- catalogue files

CLOTHING_CSV = b"""tag,brand,price,sizes,note,sku,in_stock
dress,Acme,49.90,"[""S"",""M"",""L""]","<b>bold</b><script>alert(1)</script>",007,true
hat,Hats & Co,15,[],plain,12,false
"""


def test_csv_cells_get_their_types() -> None:
    parsed = cat.read(CLOTHING_CSV, "csv")
    assert parsed.errors == []
    dress, hat = parsed.rows
    assert (dress.line, dress.tag, hat.line, hat.tag) == (2, "dress", 3, "hat")
    assert dress.information == {
        "brand": "Acme",
        "price": 49.9,
        "sizes": ["S", "M", "L"],
        "note": "<b>bold</b><script>alert(1)</script>",
        "sku": "007",  # leading zeros: text, not the number 7
        "in_stock": True,
    }
    assert hat.information["sku"] == 12 and hat.information["in_stock"] is False and hat.information["sizes"] == []
    assert [cat.infer(c) for c in ("1,000", "-3", "2.5e3", "null", '"42"', "TRUE")] == [
        "1,000",
        -3,
        2500.0,
        None,
        "42",
        True,
    ]
    assert cat.infer("   ") is cat.ABSENT


def test_bad_csv_rows_are_reported_with_their_lines_and_the_rest_read() -> None:
    data = (
        b"tag,price,sizes\n"
        b"dress,10,[]\n"  # 2: good
        b'hat,"12\n'  # 3: an unclosed quote runs into line 4
        b'shoes,1,"[1,2]\n'
        b'pants,5,"[1,2"\n'  # 5: broken JSON cell
        b"skirt,5\n"  # 6: too few cells
        b"dress,11,[]\n"  # 7: duplicate tag
        b",3,[]\n"  # 8: no tag
        b"shorts,1e999,[]\n"  # 9: not finite
        b"shirt,7,[]\n"  # 10: good
    )
    parsed = cat.read(data, "csv")
    assert [(r.line, r.tag) for r in parsed.rows] == [(2, "dress"), (10, "shirt")]
    by_line = {e.line: e for e in parsed.errors}
    assert sorted(by_line) == [3, 5, 6, 7, 8, 9]
    assert "CSV" in by_line[3].message and "line 4" in by_line[3].message
    assert by_line[5].field == "sizes" and "not valid JSON" in by_line[5].message and by_line[5].tag == "pants"
    assert "2 cells" in by_line[6].message and "3 columns" in by_line[6].message
    assert by_line[7].field == "tag" and "already on line 2" in by_line[7].message
    assert by_line[8].field == "tag"
    assert by_line[9].field == "price" and "finite" in by_line[9].message
    assert by_line[5].sentence().startswith("line 5, sizes: ")


@pytest.mark.parametrize(
    ("data", "fmt", "words"),
    [
        (b"tag,price,price\nhat,1,2\n", "csv", "'price' appears twice"),
        (b"name,price\nhat,1\n", "csv", "no 'tag' column"),
        (b"tag,,x\nhat,1,2\n", "csv", "column 2 has no name"),
        (b"\xff\xfe not utf-8", "csv", "not UTF-8"),
        (b"   \n", "csv", "empty"),
        (b'{"tag": "hat"}', "json", "array of objects"),
        (b'[{"tag": "hat"}, {"tag": ', "json", "line 1: not valid JSON"),
        (b'[{"tag": "hat"} {"tag": "x"}]', "json", "expected ',' or ']'"),
        (b"x" * (cat.MAX_FILE + 1), "csv", "at most"),
    ],
)
def test_files_that_cannot_be_read_at_all_say_why(data: bytes, fmt: str, words: str) -> None:
    with pytest.raises(FieldError, match=words):
        cat.read(data, fmt)


def test_json_and_jsonl_rows_carry_line_numbers_and_duplicate_keys_are_row_errors() -> None:
    data = (
        b'[\n  {"tag": "a", "x": 1},\n  {"tag": "b", "x": 1, "x": 2},\n  {"tag": "c",\n   "n": {"k": [1]}},\n  7\n]\n'
    )
    parsed = cat.read(data, "json")
    assert [(r.line, r.tag) for r in parsed.rows] == [(2, "a"), (4, "c")]
    assert [(e.line, e.field) for e in parsed.errors] == [(3, "x"), (6, None)]
    assert "appears twice" in parsed.errors[0].message and "must be an object" in parsed.errors[1].message
    big = json.dumps({"tag": "big", "text": "y" * 9000}).encode()
    lines = b'{"tag": "a", "v": true}\n{broken\n\n' + big + b'\n{"tag": "d", "v": [1, {"deep": null}]}\n'
    parsed = cat.read(lines, "jsonl")
    assert [(r.line, r.tag) for r in parsed.rows] == [(1, "a"), (5, "d")]
    assert [(e.line, e.field) for e in parsed.errors] == [(2, None), (4, "text")]
    assert "not valid JSON" in parsed.errors[0].message and "9,000 characters" in parsed.errors[1].message


def test_image_column_and_key_column() -> None:
    data = b"sku,title,photos\nA1,Dress,a.jpg|http://x/b.jpg\nA2,Hat,\n"
    parsed = cat.read(data, "csv", key="sku", images="photos")
    assert [(r.tag, r.information, r.images) for r in parsed.rows] == [
        ("A1", {"title": "Dress"}, ("a.jpg", "http://x/b.jpg")),
        ("A2", {"title": "Hat"}, ()),
    ]
    parsed = cat.read(b'[{"tag": "a", "img": ["1.jpg", "2.jpg"]}, {"tag": "b", "img": 3}]', "json", images="img")
    assert parsed.rows[0].images == ("1.jpg", "2.jpg") and parsed.errors[0].field == "img"


def test_written_catalogues_read_back_to_the_same_values_in_every_format() -> None:
    rows = [
        ("dress", {"brand": "Acme", "price": 49.9, "code": "007", "digits": "42", "truth": "true", "empty": ""}),
        ("hat", {"formula": '=HYPERLINK("http://evil")', "minus": "-x", "quoted": '"q"', "list": ["S", 1, None]}),
        ("shoes", {"nested": {"a": [1, {"b": False}]}, "html": "<img src=x onerror=alert(1)>", "pad": " x "}),
        ("plain", {}),
    ]
    for fmt in cat.FORMATS:
        parsed = cat.read(cat.write(rows, fmt), fmt)
        assert parsed.errors == []
        assert [(r.tag, r.information) for r in parsed.rows] == rows, fmt
    text = cat.write(rows, "csv").decode()
    for line in text.splitlines()[1:]:
        for cell in line.split(","):
            assert not cell.startswith(("=", "+", "@")), f"a cell a spreadsheet would run: {cell}"
    with pytest.raises(FieldError, match="another key column"):
        cat.write([("x", {"tag": 1})], "csv")
    assert cat.format_of("shop.JSONL") == "jsonl" and cat.format_of("x", "csv") == "csv"
    with pytest.raises(FieldError, match="not a catalogue format"):
        cat.format_of("shop.xlsx")


# --------------------------------------------------------------------------- decision rules

CATALOGUE = {
    "glass_shatter": ("t1", {"premiumFactor": 1.8, "severity": 3, "label": "Glass"}),
    "door_dent": ("t2", {"premiumFactor": 1.2, "severity": 1, "label": "Dent"}),
    "unknown": ("t3", {"label": "Other"}),
}


def test_rules_are_checked_against_the_catalogue_and_name_the_field() -> None:
    cases = [
        ({"rules": "x"}, "rules", "must be a list"),
        ([1], "rules[0]", "must be an object"),
        ([{"rule": "eval", "attribute": "x"}], "rules[0].rule", "'eval' is not a rule"),
        (
            [{"rule": "max-above", "attribute": "premiumFactor", "thresold": 0.5}],
            "rules[0].thresold",
            "not a rule field",
        ),
        ([{"rule": "max-above"}], "rules[0].attribute", "name the attribute"),
        ([{"rule": "max-above", "attribute": "premiumFactr"}], "rules[0].attribute", "no tag's information"),
        ([{"rule": "max-above", "attribute": "label"}], "rules[0].attribute", "'label' of tag 'glass_shatter' is text"),
        ([{"rule": "max-above", "attribute": "severity", "threshold": 2}], "rules[0].threshold", "from 0 to 1"),
        ([{"rule": "max-above", "attribute": "severity", "threshold": True}], "rules[0].threshold", "from 0 to 1"),
        (
            [{"rule": "most-probable-above", "attribute": "label", "tags": ["door_dent", "bumper"]}],
            "rules[0].tags[1]",
            "no tag named 'bumper'",
        ),
        ([{"rule": "max-above", "attribute": "severity", "default": "high"}], "rules[0].default", "must be one too"),
        (
            [{"rule": "max-above", "attribute": "severity"}, {"rule": "max-above", "attribute": "severity"}],
            "rules[1].name",
            "already named",
        ),
        ([{"rule": "max-above", "attribute": "severity", "name": "<b>"}], "rules[0].name", "letters"),
        ([{"rule": "max-above", "attribute": "severity"}] * 21, "rules", "at most 20"),
    ]
    for raw, field, words in cases:
        with pytest.raises(FieldError) as caught:
            rules.parse(raw, CATALOGUE)
        assert caught.value.field == field, raw
        assert words in caught.value.message, caught.value.message
        assert caught.value.code == "BadRequestDecisionRule"


def test_rules_evaluate_with_their_inputs() -> None:
    parsed = rules.parse(
        [
            {"rule": "most-probable-above", "attribute": "premiumFactor", "threshold": 0.5, "default": 1.0},
            {"rule": "probability-weighted", "attribute": "premiumFactor", "name": "expected"},
            {"rule": "max-above", "attribute": "severity", "threshold": 0.2, "name": "worst"},
            {"rule": "most-probable-above", "attribute": "label", "tags": ["Door_Dent"], "name": "dent"},
        ],
        CATALOGUE,
    )
    assert [r.to_json({"t2": "door_dent"}).get("tags") for r in parsed] == [None, None, None, ["door_dent"]]
    assert rules.from_stored([r.stored() for r in parsed]) == parsed

    def ranked(p1: float, p2: float, p3: float) -> list[rules.Candidate]:
        tags = [("t1", "glass_shatter", p1), ("t2", "door_dent", p2), ("t3", "unknown", p3)]
        found = [rules.Candidate(i, n, p, CATALOGUE[n][1]) for i, n, p in tags]
        return sorted(found, key=lambda c: -c.probability)

    sure = rules.evaluate(parsed, ranked(0.7, 0.25, 0.05))
    assert sure["premiumFactor"]["value"] == 1.8 and sure["premiumFactor"]["matched"] is True
    assert sure["premiumFactor"]["tagName"] == "glass_shatter"
    assert sure["premiumFactor"]["inputs"] == [
        {"tagId": "t1", "tagName": "glass_shatter", "probability": 0.7, "value": 1.8}
    ]
    assert sure["expected"]["value"] == pytest.approx((0.7 * 1.8 + 0.25 * 1.2) / 0.95)
    assert [i["tagName"] for i in sure["expected"]["inputs"]] == ["glass_shatter", "door_dent"]
    assert sure["worst"]["value"] == 3 and sure["worst"]["tagName"] == "glass_shatter"
    assert sure["dent"]["value"] is None and sure["dent"]["matched"] is False  # door_dent is under 0.5

    unsure = rules.evaluate(parsed, ranked(0.4, 0.35, 0.25))
    assert unsure["premiumFactor"]["value"] == 1.0 and unsure["premiumFactor"]["matched"] is False
    assert unsure["premiumFactor"]["inputs"][0]["probability"] == 0.4
    assert unsure["worst"]["value"] == 3 and len(unsure["worst"]["inputs"]) == 2

    # Later catalogue text where a number was: the rule skips it rather than fail the prediction...
    changed = [rules.Candidate("t1", "glass_shatter", 0.9, {"premiumFactor": "high"})]
    assert rules.evaluate(parsed[1:2], changed)["expected"] == {
        "rule": "probability-weighted",
        "attribute": "premiumFactor",
        "threshold": 0.0,
        "value": None,
        "matched": False,
        "inputs": [],
    }
    # ...and saving such information is refused, naming the rule.
    with pytest.raises(FieldError, match="'expected'") as caught:
        rules.check_information(parsed, "t1", "glass_shatter", {"premiumFactor": "high"})
    assert caught.value.field == "information.premiumFactor"
    rules.check_information(parsed, "t3", "unknown", {"premiumFactor": 2})

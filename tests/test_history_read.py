"""The quick readers that status and list use give what the plain ones give, torn logs included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from atomic_deploy import _history
from atomic_deploy._history import History, read_records
from atomic_deploy._jsonfile import read_json_lines
from atomic_deploy._layout import all_generated, looks_generated

REC = json.dumps({"op": "deploy", "release": "20250101000000", "v": 2,
                  "states": {"20250101000000": "served"}}, sort_keys=True)
REC2 = json.dumps({"op": "deploy", "release": "20250101000001", "v": 2,
                   "states": {"20250101000001": "served"}}, sort_keys=True)


@pytest.mark.parametrize("text", [
    "",
    "\n",
    f"{REC}\n",
    f"{REC}\n{REC2}\n",
    f"{REC}\n{REC2}",  # no final newline
    f"{REC}\n{REC2[:30]}",  # torn last line
    f"{REC}\n{REC2[:40]}\n{REC2}\n",  # torn line, then a record on a fresh line
    f"{REC}\n\n{REC2}\n",  # blank line
    f"  {REC}  \n{REC2}\n",  # spaces around a record
    f"{REC}\r\n{REC2}\r\n",  # CRLF
    f"{REC}\r{REC2}\n",  # a lone CR is a newline too
    f"[1, 2]\n{REC}\n5\n\"x\"\n{REC2}\n",  # not objects: skipped
    f"{REC} {REC2}\n{REC2}\n",  # two values on one line: not a record
    f"{REC},\n{REC2}\n",
    "{\"a\": [{\"x\": 1}\n{\"y\": 2}]}\n{}, {}\n",  # lines that only join into JSON
    "{\"a\": \"\xff\"}\n",
    # lines that only join into one-element arrays, newlines read as "],[" (read_records)
    "{\"a\": [[1\n2]]}\n{}],[{}\n",
    "{\"a\": [[1\n2]]}\n{} ]\t, [ {}\n",
    f"{REC}\n{{\"m\": \"a],[b\", \"n\": [[1], [2]]}}\n{REC2}\n",  # "],[" inside a record
    f"{REC}\n{REC2}\n" * 200,  # more than one chunk
    f"{REC}\n{REC2}\n" * 100 + f"{REC[:30]}\n" + f"{REC}\n{REC2}\n" * 100,  # torn in the middle
])
def test_read_records_is_read_json_lines(tmp_path: Path, text: str) -> None:
    path = tmp_path / "history.jsonl"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    assert read_records(str(path)) == read_json_lines(str(path))


def test_read_records_bad_utf8_and_missing(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    path.write_bytes(REC.encode() + b"\n{\"m\": \"\xff\xfe\"}\n" + REC2.encode() + b"\n")
    assert read_records(str(path)) == read_json_lines(str(path))
    assert len(read_records(str(path))) == 3
    assert read_records(str(tmp_path / "absent")) == []


REC3 = json.dumps({"op": "deploy", "hooks": [{"a": 1}, {"b": [1, 2]}], "v": 2}, sort_keys=True)


# bytes decoded at once, and read at once
@pytest.mark.parametrize(("chunk", "block"), [(1, 1), (60, 7), (_history._CHUNK, _history._BLOCK)])
@given(st.lists(st.sampled_from([REC, REC2, REC3, "", " ", "{", "}", "{}", "[", "]", ",", "\"",
                                 REC[:25], REC2[10:], REC3[:30], REC3[30:], "1", "{\"a\": [",
                                 "]}", "],[", "] , [", "{\"a\": [[1", "2]]}", "{}],[{}",
                                 "{\"a\": 1", "\"b\": 2}", "{}, {}", "{\"a\": [{}", "{}]}",
                                 "\t", "  {}", "{}\r", "\r{}", "\u00e9\u2603"]), max_size=8))
@example(["{", "}"])  # one object over two lines: the line reader sees none
@example([REC, "{", "}", REC2])
@example(["{\"a\": [[1", "2]]}", "{}],[{}"])  # spread over lines, and two on one line
@example(["{\"a\": 1", "\"b\": 2}", "{}, {}"])
def test_read_records_any_lines(tmp_path_factory: pytest.TempPathFactory, chunk: int,
                                block: int, lines: list[str]) -> None:
    path = tmp_path_factory.mktemp("h") / "history.jsonl"
    path.write_text("\n".join(lines))
    saved = _history._CHUNK, _history._BLOCK
    _history._CHUNK, _history._BLOCK = chunk, block
    try:
        assert read_records(str(path)) == read_json_lines(str(path))
    finally:
        _history._CHUNK, _history._BLOCK = saved


@given(st.lists(st.one_of(
    st.text(alphabet="0123456789", min_size=1, max_size=15),
    st.sampled_from(["20250229000000", "20240229235959", "20251301000000", "20250101240000",
                     "20250101006000", "20250101000060", "00000101000000", "20250431000000",
                     "v1", "release", "٣٣"]))))
def test_all_generated_is_looks_generated(names: list[str]) -> None:
    assert all_generated(names) == all(map(looks_generated, names))


def test_states_and_created_folded_together() -> None:
    records = [
        {"v": 2, "op": "prepare", "release": "a", "states": {"a": "complete"}},
        {"v": 2, "op": "activate", "release": "a", "states": {"a": "served"}},
        {"op": "deploy", "release": "b", "outcome": "ok"},  # schema 1
        {"op": "rollback", "release": "a", "previous": "b", "outcome": "ok"},
        {"v": 2, "op": "recover", "interrupted": "adopt", "release": "c",
         "states": {"c": "served"}},
        {"v": 2, "op": "deploy", "release": "d", "outcome": "failed"},
    ]
    h = History(records)
    assert h.states() == {"a": "served", "b": "bad", "c": "served"}
    assert h.created() == {"a": 0, "b": 2, "c": 4}
    h.records.append({"v": 2, "op": "deploy", "release": "e", "states": {"e": "served"}})
    assert h.created()["e"] == 6 and h.states()["e"] == "served"

"""The manifest's record stays compact: a 200,000-file build's manifest must not cost more memory
than its copy (issue 14: 74 MB for such a deploy while every line was kept as a Python str).

The lines are kept in sorted, compressed runs (_manifest.Lines); these tests pin that they come
out exactly as one sort of plain strings would give them, across runs, and that the memory per
entry stays a small fraction of the lines' own size.
"""

from __future__ import annotations

import os
import random
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atomic_deploy import _manifest
from atomic_deploy._layout import Layout
from atomic_deploy._manifest import CopyRecord, Lines

# Path text the JSON encoding treats differently: quotes, backslashes, control characters,
# non-ASCII (escaped), and the characters that sort around '"', ',' and '/'.
_NAME = st.text(alphabet=st.sampled_from(list('ab !"#,-./\\\n\t~é\U0001f600')), min_size=1,
                max_size=6)


def _line(path: str, kind: int) -> str:
    st_ = os.stat_result((0o100644 if kind else 0o40755, 1, 1, 1, 0, 0, kind * 7, 0, 0, 0))
    return _manifest.line(path, st_, None, None)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_NAME, st.integers(0, 2)), unique_by=lambda t: t[0], max_size=40),
       st.integers(1, 9), st.sampled_from([1, 7, 64, 1 << 16]))
def test_lines_come_out_as_one_sort_would_give_them(entries: list[tuple[str, int]],
                                                   run: int, block: int) -> None:
    lines = [_line(p, k) for p, k in entries]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_manifest, "_RUN", run)  # many runs, merged
        mp.setattr(_manifest, "_BLOCK", block)  # decompressed a few bytes at a time
        kept = Lines(lines)
        assert list(kept) == sorted(lines) and len(kept) == len(lines)
        assert [x for piece in kept.pieces() for x in piece] == sorted(lines)
        assert sorted(kept.unsorted()) == sorted(lines)
        assert list(kept.copy()) == sorted(lines)
        # keep(): only lines with one of the prefixes are asked about
        prefixes = tuple({x[:4] for x in lines[::3]})
        asked: list[str] = []

        def wanted(x: str) -> bool:
            asked.append(x)
            return len(x) % 2 == 0

        left = kept.keep(prefixes, wanted)
        assert sorted(asked) == sorted(x for x in lines if x.startswith(prefixes))
        assert list(left) == sorted(x for x in lines if not x.startswith(prefixes) or wanted(x))


@pytest.mark.parametrize("run", [1, 3, 16384])
def test_has_digest_is_any_file_line_with_a_digest(run: int, monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    monkeypatch.setattr(_manifest, "_RUN", run)
    (tmp_path / "f").write_text("x")
    os.symlink("f", tmp_path / "l")
    f, link = os.lstat(tmp_path / "f"), os.lstat(tmp_path / "l")
    plain = [_manifest.line(f"p{i}", f, None, None) for i in range(5)]
    plain += [_manifest.line('s"]\n,"file",', link, '"]', None), _line("d", 0)]
    assert not Lines(plain).has_digest
    with_one = [*plain, _manifest.line("q", f, None, "ab" * 32)]
    assert Lines(with_one).has_digest
    assert not Lines(with_one).keep(('["q",',), lambda x: False).has_digest


def _synthetic_record(n: int, tmp_path: Path, with_digests: bool = False) -> CopyRecord:
    """A record of ``n`` entries with node_modules-like paths (about 80 characters)."""
    (tmp_path / "f").write_bytes(b"x" * 1234)
    f, d = os.lstat(tmp_path / "f"), os.lstat(tmp_path)
    rng = random.Random(14)
    record = CopyRecord(with_digests)
    for i in range(n):
        pkg = f"node_modules/pkg{rng.randrange(n // 10):06d}/node_modules/dep{i % 97:03d}"
        if i % 4 == 0:
            record.add(pkg, d, None)
        else:
            record.add(f"{pkg}/lib/src/module-{i:07d}.{('js', 'json', 'md')[i % 3]}", f, None)
    return record


def _write_peak(record: CopyRecord, tmp_path: Path) -> tuple[int, int, str]:
    """(bytes held by the record, peak bytes while the manifest is written, its digest)."""
    layout = Layout(str(tmp_path / "root"))
    tracemalloc.start()
    try:
        held = tracemalloc.get_traced_memory()[0]
        digest = _manifest.write(layout, "r1", _manifest.refresh(
            _manifest.from_record(record), str(tmp_path), ["REVISION"], False), durable=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return held, peak, digest


def test_the_records_memory_per_entry_stays_small(tmp_path: Path) -> None:
    """100,000 entries: about 10 MB of manifest text, 15 MB as one str per line (what the
    record held before). Kept compressed, the record itself must stay under 25 bytes an entry,
    and adding, merging and writing under 80 (the run being filled, a block of each run)."""
    n = 100_000
    tracemalloc.start()
    try:
        record = _synthetic_record(n, tmp_path)
        held, peak_adding = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    _, peak_writing, digest = _write_peak(record, tmp_path)
    written = (tmp_path / "root" / ".atomic-deploy" / "manifests" / "r1.jsonl").read_bytes()
    assert written.count(b"\n") == n + 1 and len(written) > 100 * n
    assert held < 25 * n, f"the record holds {held / n:.0f} bytes an entry"
    assert peak_adding < 80 * n, f"recording peaked at {peak_adding / n:.0f} bytes an entry"
    assert peak_writing < 80 * n, f"writing peaked at {peak_writing / n:.0f} bytes an entry"
    # the very file one sort of every line gives
    lines = sorted(written.decode().splitlines()[1:])
    assert written.decode().splitlines()[1:] == lines
    import hashlib
    assert hashlib.blake2b(written, digest_size=32).hexdigest() == digest


def test_digests_records_stay_small_too(tmp_path: Path) -> None:
    n = 100_000
    record = _synthetic_record(n, tmp_path, with_digests=True)
    # a digest for every other file, as --link-unchanged leaves when half the files are new
    for i, head in enumerate(record.files.unsorted()):
        if i % 2:
            record.digests[_manifest._json_string()(head, 2)[0]] = f"{i:064x}"
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        lines = _manifest.from_record(record)
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 25 * n and peak - before < 80 * n
    assert lines.has_digest and len(lines) == n
    done = [x for x in lines if x.endswith('"]')]
    assert len(done) == len(record.digests) and all(
        x.endswith(f',"{record.digests[_manifest._json_string()(x, 2)[0]]}"]') for x in done)


@pytest.mark.parametrize("run", [1, 2, 16384])
def test_scan_takes_the_copys_digest_only_for_files_as_copied(
        run: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After --check hooks the release is walked again; a file keeps the copy's digest while
    its size and mtime are those it was copied with (merged by path, across runs)."""
    monkeypatch.setattr(_manifest, "_RUN", run)
    top = tmp_path / "rel"
    (top / "d").mkdir(parents=True)
    for name in ("a", "b", "c", "d/e", "d/f"):
        (top / name).write_text(name)
    record = CopyRecord(with_digests=True)
    for rel, st_, target in _manifest.walk(str(top)):
        record.add(rel, st_, target)
    record.digests.update({"a": "aa" * 32, "c": "cc" * 32, "d/e": "ee" * 32})  # not the real ones
    (top / "c").write_text("changed")  # another size: read again
    (top / "new").write_text("n")
    walked = {x.split(",")[0]: x for x in _manifest.scan(str(top), False, record)}
    assert walked['["a"'].endswith(f',"{"aa" * 32}"]')
    assert walked['["d/e"'].endswith(f',"{"ee" * 32}"]')
    assert walked['["c"'].endswith(",null]") and walked['["b"'].endswith(",null]")
    with_digest = {x.split(",")[0]: x for x in _manifest.scan(str(top), True, record)}
    assert with_digest['["a"'] == walked['["a"']  # the copy's, not read again
    assert with_digest['["c"'].endswith(f',"{_manifest.digest_file(str(top / "c"))}"]')
    assert with_digest['["new"'].endswith(f',"{_manifest.digest_file(str(top / "new"))}"]')
    assert list(_manifest.scan(str(top), True, record)) == sorted(with_digest.values())


@pytest.mark.parametrize("run", [1, 3, 16384])
def test_refresh_replaces_the_paths_the_deploy_changed(
        run: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_manifest, "_RUN", run)
    top = tmp_path / "rel"
    for name in ("app/x", "app/y/z", "logs/old", "logsa", "conf/keep"):
        (top / name).parent.mkdir(parents=True, exist_ok=True)
        (top / name).write_text(name)
    record = CopyRecord()
    for rel, st_, target in _manifest.walk(str(top)):
        record.add(rel, st_, target)
    # what link_shared and REVISION do after the copy
    for p in sorted((top / "logs").rglob("*"), reverse=True):
        p.unlink()
    (top / "logs").rmdir()
    os.symlink("../../shared/logs", top / "logs")
    (top / "var" / "run").mkdir(parents=True)
    os.symlink("../../../shared/var/run/sock", top / "var" / "run" / "sock")
    os.symlink("../../shared/conf/env", top / "conf" / "env")
    (top / "REVISION").write_text("abc\n")
    rels = ["logs", "var/run/sock", "conf/env", "REVISION"]
    got = list(_manifest.refresh(_manifest.from_record(record), str(top), rels, False))
    assert got == sorted(_manifest.scan(str(top), False))  # as a fresh walk sees it
    assert len(_manifest.refresh(_manifest.from_record(record), str(top), rels, False)) == len(got)

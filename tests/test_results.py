"""The results file: written under .partial, locked, renamed into place only when complete."""

from __future__ import annotations

import pytest

from llmbatch.errors import UsageError
from llmbatch.results import Result, ResultWriter


def result(n: int) -> Result:
    return Result(line=n, id=n, key=f"v1:{n}", status="ok", cached=False, model="openai:m", metadata=None)


def test_lines_go_to_a_partial_file_until_the_run_is_complete(tmp_path):
    out = tmp_path / "r.jsonl"
    writer = ResultWriter(out).open()
    writer.write(result(1))
    writer.flush()
    assert not out.exists() and (tmp_path / "r.jsonl.partial").read_text().count("\n") == 1
    assert writer.finish(complete=True) == out
    assert out.read_text().count("\n") == 1 and not (tmp_path / "r.jsonl.partial").exists()


def test_an_incomplete_run_keeps_the_partial_name_and_the_previous_complete_file(tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_text("previous complete results\n")
    writer = ResultWriter(out).open()
    writer.write(result(1))
    assert writer.finish(complete=False) == tmp_path / "r.jsonl.partial"
    assert out.read_text() == "previous complete results\n"


def test_a_second_writer_on_the_same_file_is_refused(tmp_path):
    out = tmp_path / "r.jsonl"
    first = ResultWriter(out).open()
    first.write(result(1))
    with pytest.raises(UsageError, match="another llmbatch run is writing"):
        ResultWriter(out).open()
    first.write(result(2))
    first.finish(complete=True)
    assert out.read_text().count("\n") == 2
    ResultWriter(out).open().finish(complete=True)  # free again once the first has finished


def test_an_unwritable_output_is_a_usage_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UsageError, match="cannot write results"):
        ResultWriter(blocker / "r.jsonl").open()

"""The input: JSONL lines to validated requests (:mod:`~llmbatch.input.shapes`), files read and
checked whole before anything is sent (:mod:`~llmbatch.input.reader`), duplicate ids found in flat
memory (:mod:`~llmbatch.input.ids`)."""

from llmbatch.input.ids import IdHashes
from llmbatch.input.reader import (
    PartReport,
    ValidationReport,
    check_lines,
    combine_parts,
    count_lines_before,
    iter_raw_lines,
    line_start_near,
    read_requests,
    validate_file,
)
from llmbatch.input.shapes import MAX_DEPTH, MAX_LINE_BYTES, MAX_MESSAGES, PARAMS, Defaults, InvalidLine, parse_line
from llmbatch.model.request import Request, output_cap

__all__ = [
    "MAX_DEPTH",
    "MAX_LINE_BYTES",
    "MAX_MESSAGES",
    "PARAMS",
    "Defaults",
    "IdHashes",
    "InvalidLine",
    "PartReport",
    "Request",
    "ValidationReport",
    "check_lines",
    "combine_parts",
    "count_lines_before",
    "iter_raw_lines",
    "line_start_near",
    "output_cap",
    "parse_line",
    "read_requests",
    "validate_file",
]

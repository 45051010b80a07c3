"""The ledger of a data-scale study: one JSON line per finished run, so that a study of many hours continues on
any machine from a small file kept in the repository, not from run directories that are lost with the machine.

A line is {"key": ..., "result": ..., "evaluations": [...], "vitkit": {"version", "commit", "compile"}}:
- `key` is everything that decides the run's result (run_key): dataset, model, size, seed, the budget rule and
  the images it gives this run, the resolved recipe, the held-out fraction, evaluations, patience, precision,
  the transfer set and the few-shot protocol;
- `result` is the run's record in study.json, `evaluations` the metrics it logged at each evaluation;
- `vitkit` is the version and commit it ran on, and whether its step was compiled: recorded, never compared (a
  ledger outlives commits and machines).

Lines are appended whole, flushed and fsynced. A study reads its ledger first and trains only the runs it does
not hold; a line of the same run (dataset, model, size, seed) whose key disagrees with the study's arguments is
a one-line error naming the field, never mixed in. A torn last line (a kill during the append) is dropped with
a warning, so that run trains again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import warnings
from pathlib import Path
from typing import Any, Iterator

from .study_plan import FEWSHOT_POOL, FEWSHOT_SEEDS, SHOTS, Plan
from .version import __version__

RunId = tuple[str, str, int, int]  # (dataset, model, size, seed)
IDENTITY = ("data", "model", "size", "seed")


def run_key(plan: Plan, model: str, size: int, seed: int, train_images: int) -> dict[str, Any]:
    """What decides the result of the run of `model` at `size` and `seed` ( `train_images` of its subset are
    trained on, the rest held out): compared field by field with a ledger's line for the same run."""
    return json.loads(json.dumps({
        "data": plan.data, "model": model, "size": size, "seed": seed,
        "budget": {**plan.budget_rule(), "images": plan.images(train_images)},
        "recipe": {"name": plan.recipe_name(model), **dataclasses.asdict(plan.recipe(model, train_images))},
        "holdout": plan.holdout, "evaluations": plan.evaluations, "patience": plan.patience,
        "precision": plan.precision, "transfer": plan.transfer,
        "fewshot": {"shots": SHOTS, "pool": FEWSHOT_POOL, "seeds": FEWSHOT_SEEDS},
    }))  # fmt: skip


def run_id(key: dict[str, Any]) -> RunId:
    return key["data"], key["model"], key["size"], key["seed"]


def commit() -> str | None:
    """The git commit of the checkout vitkit runs from (None outside one)."""
    try:
        found = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                               text=True, timeout=10)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return found.stdout.strip() or None if found.returncode == 0 else None


def _differences(held: Any, wanted: Any, prefix: str) -> Iterator[str]:
    """The dotted names of the fields where two keys differ."""
    if isinstance(held, dict) and isinstance(wanted, dict):
        for name in dict.fromkeys([*wanted, *held]):
            yield from _differences(held.get(name), wanted.get(name), f"{prefix}.{name}" if prefix else name)
    elif held != wanted:
        yield prefix


def _lookup(doc: dict[str, Any], dotted: str) -> Any:
    for name in dotted.split("."):
        doc = doc.get(name) if isinstance(doc, dict) else None  # type: ignore[assignment]
    return doc


class Ledger:
    """A study's ledger file: its lines by run (`lines`), checked against a study (`check`), appended to."""

    def __init__(self, path: str | os.PathLike, data: str | None = None) -> None:
        """Read `path` (a missing file is an empty ledger); with `data`, every line must be of that dataset."""
        self.path = Path(path)
        self.lines: dict[RunId, dict[str, Any]] = {}
        self.numbers: dict[RunId, int] = {}  # the line each run was read from, for the errors
        if self.path.is_file():
            self._read(data)

    def _read(self, data: str | None) -> None:
        text = self.path.read_bytes().decode("utf-8", errors="replace")
        rows = text.split("\n")
        complete = rows[:-1]  # the last element follows the last newline: empty, or a line torn mid-append
        if rows[-1].strip():
            try:
                json.loads(rows[-1])
                complete = rows  # a whole line that only lacks its newline
            except json.JSONDecodeError:
                warnings.warn(f"ledger {self.path}: its last line is torn (a kill during the append?); dropping it, "
                              f"so that run trains again", stacklevel=3)  # fmt: skip
                self._truncate(len(text.encode()) - len(rows[-1].encode()))
        for number, row in enumerate(complete, 1):
            if row.strip():
                self._add(number, row, data)

    def _add(self, number: int, row: str, data: str | None) -> None:
        where = f"ledger {self.path} line {number}"
        try:
            line = json.loads(row)
            key = line["key"]
            rid = run_id(key)
            if not isinstance(line["result"], dict):
                raise TypeError("'result' is not an object")
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{where} is not a ledger line ({type(e).__name__}: {e}); expected one JSON object "
                             f"per line with 'key' and 'result'") from None  # fmt: skip
        if data is not None and key["data"] != data:
            raise ValueError(f"{where} is a run on {key['data']}, this study is on {data}: give another --ledger")
        if rid not in self.lines:  # a run appended twice (two processes): the first line stands
            self.lines[rid], self.numbers[rid] = line, number

    def _truncate(self, length: int) -> None:
        with open(self.path, "r+b") as f:
            f.truncate(length)
            f.flush()
            os.fsync(f.fileno())

    def check(self, key: dict[str, Any]) -> dict[str, Any] | None:
        """The line of the run `key` names, if the ledger has it; a one-line ValueError naming the first field
        where the line's key disagrees with `key`."""
        rid = run_id(key)
        line = self.lines.get(rid)
        if line is None:
            return None
        for field in _differences(line["key"], key, ""):
            raise ValueError(
                f"ledger {self.path} line {self.numbers[rid]}: {rid[1]} at size {rid[2]} seed {rid[3]} was trained with "
                f"{field} = {_lookup(line['key'], field)!r}, this study asks for {_lookup(key, field)!r}: give the "
                f"same arguments, or another --ledger"
            )  # fmt: skip
        return line

    def append(
        self, key: dict[str, Any], result: dict[str, Any], evaluations: list[dict[str, Any]],
        execution: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        """Add a finished run: one line, written whole with one write, flushed and fsynced. `execution`: how it
        ran (e.g. compiled), recorded beside the vitkit version and commit, never compared."""
        line = {"key": key, "result": result, "evaluations": evaluations,
                "vitkit": {"version": __version__, "commit": commit(), **(execution or {})}}  # fmt: skip
        text = json.dumps(line, separators=(",", ":")) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        rid = run_id(key)
        self.lines.setdefault(rid, line)
        self.numbers.setdefault(rid, len(self.numbers) + 1)  # the line's number where no line was torn or blank

    def results(self) -> list[dict[str, Any]]:
        """Every run's record, in the ledger's order."""
        return [line["result"] for line in self.lines.values()]

"""mirrorq's error hierarchy (tasks/errors.py): every error declares its code, HTTP status and
exit status in one place, and the API and the CLI answer with those. Pure: no Redis."""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
import re
from collections.abc import Callable, Iterator

import httpx
import pytest
from fastapi import FastAPI

import mirrorq
import tasks
import worker
from mirrorq.api.errors import from_mirrorq, install
from mirrorq.cli.base import fail
from tasks import errors
from tasks.errors import (
    EXIT_FAILED,
    EXIT_USAGE,
    AlreadyMirroredError,
    BatchFileError,
    BatchNotFoundError,
    IdempotencyConflictError,
    InvalidJobError,
    JobExpiredError,
    JobNotFoundError,
    JobRevokedError,
    LeaseLostError,
    MirrorqError,
    NotAnEventError,
    NotReplicatedError,
    PolicyError,
    QueueError,
    SupersededError,
    UnknownResourceError,
    WrongScopeError,
)

# One of each, as the code raises them: a class added to the hierarchy needs one here.
EXAMPLES: dict[type[MirrorqError], Callable[[], MirrorqError]] = {
    InvalidJobError: lambda: InvalidJobError([{"field": "SessionNumber", "message": "too big"}]),
    BatchFileError: lambda: BatchFileError(
        [{"field": "SessionNumber", "message": "too big", "line": 3}], total=250
    ),
    IdempotencyConflictError: lambda: IdempotencyConflictError("key k was used for another job"),
    JobNotFoundError: lambda: JobNotFoundError("j-1"),
    BatchNotFoundError: lambda: BatchNotFoundError("b-1"),
    PolicyError: lambda: PolicyError("p.toml", [{"field": "rules[0].target", "message": "bad"}]),
    NotAnEventError: lambda: NotAnEventError("not a JSON object"),
    UnknownResourceError: lambda: UnknownResourceError("target", ["tmt-0123456789abcdef0"]),
    QueueError: lambda: QueueError("https://sqs/q", "NonExistentQueue", "gone", at_start=False),
    NotReplicatedError: lambda: NotReplicatedError("job j-1's acceptance", 0, 1, 1.0),
    JobExpiredError: lambda: JobExpiredError("the message expired"),
    JobRevokedError: lambda: JobRevokedError("the job's id was revoked"),
    WrongScopeError: lambda: WrongScopeError("another account's job"),
    AlreadyMirroredError: lambda: AlreadyMirroredError("eni-1 is mirrored already"),
    LeaseLostError: lambda: LeaseLostError("the ENI's lease lapsed"),
    SupersededError: lambda: SupersededError("another worker owns job j-1"),
}


def _subclasses(cls: type[MirrorqError]) -> Iterator[type[MirrorqError]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


@pytest.fixture(scope="module")
def hierarchy() -> list[type[MirrorqError]]:
    """Every MirrorqError there is: each module of tasks/, worker/ and mirrorq/ loaded first,
    so a class defined anywhere else is found too."""
    for package in (tasks, worker, mirrorq):
        for module in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if not module.name.endswith("__main__"):
                importlib.import_module(module.name)
    return list(_subclasses(MirrorqError))


def test_every_error_is_declared_in_tasks_errors(hierarchy: list[type[MirrorqError]]) -> None:
    assert {cls.__module__ for cls in hierarchy} == {"tasks.errors"}
    assert set(hierarchy) == set(EXAMPLES)


def test_every_error_declares_its_code_http_status_and_exit_status(
    hierarchy: list[type[MirrorqError]],
) -> None:
    for cls in hierarchy:
        assert isinstance(cls.code, str), cls
        assert re.fullmatch(r"[A-Z][A-Za-z]+", cls.code), cls
        assert 400 <= cls.http_status <= 599, cls
        assert cls.exit_status in {EXIT_FAILED, EXIT_USAGE}, cls
        assert isinstance(cls.retryable, bool), cls
    for name in ("code", "http_status", "exit_status"):  # nothing to inherit by mistake
        assert not hasattr(MirrorqError, name), name
    # A code names one error (a subclass, a kind of its parent, may share its parent's).
    by_code: dict[str, type[MirrorqError]] = {}
    for cls in hierarchy:
        first = by_code.setdefault(cls.code, cls)
        assert issubclass(cls, first) or issubclass(first, cls), (cls, first)


def test_the_tree_in_the_docstring_is_the_hierarchy(hierarchy: list[type[MirrorqError]]) -> None:
    drawn = {
        name: (code, int(status), int(exit_status))
        for name, code, status, exit_status in re.findall(
            r"── (\w+)\s+(\w+)\s+(\d{3})\s+(\d)\b", errors.__doc__ or ""
        )
    }
    assert drawn == {
        cls.__name__: (cls.code, cls.http_status, cls.exit_status) for cls in hierarchy
    }


def test_the_api_answers_each_error_with_its_class_status_and_code() -> None:
    app = FastAPI()
    install(app)

    @app.get("/raise/{name}")
    async def _raise(name: str) -> None:
        raise next(make() for cls, make in EXAMPLES.items() if cls.__name__ == name)

    async def served(name: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return await client.get(f"/raise/{name}")

    for cls, make in EXAMPLES.items():
        error = make()
        answer = from_mirrorq(error)
        assert (answer.status, answer.code, answer.message) == (
            cls.http_status,
            cls.code,
            str(error),
        )
        assert answer.fields == error.fields
        raised = asyncio.run(served(cls.__name__))
        assert raised.status_code == cls.http_status, cls
        assert raised.json() == {
            "error": {"code": cls.code, "message": str(error), "fields": error.fields}
        }


def test_the_cli_exits_with_each_errors_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    for cls, make in EXAMPLES.items():
        error = make()
        with pytest.raises(SystemExit) as ended:
            fail(error)
        assert ended.value.code == cls.exit_status, cls
        said = capsys.readouterr().err
        assert said, cls
        for field in error.fields:
            assert field["field"] in said


def test_an_error_may_answer_otherwise_than_its_class() -> None:
    """What one error knows better than its class: a body that is not JSON is 400 (not 422);
    a queue refused at start was the command's input (2), one lost later is not (1)."""
    for field, message in [
        ("(body)", "not UTF-8: ..."),
        ("(job)", "not JSON: Expecting value"),
        ("(job)", "JSON nested too deeply"),
    ]:
        error = InvalidJobError([{"field": field, "message": message}])
        assert from_mirrorq(error).status == InvalidJobError.not_json_status == 400
    assert from_mirrorq(InvalidJobError([{"field": "(job)", "message": "too deep"}])).status == 422
    queue = QueueError("https://sqs/q", "AccessDenied", "no", at_start=False)
    assert queue.exit_code == EXIT_FAILED
    queue.at_start = True
    assert queue.exit_code == QueueError.at_start_exit_status == EXIT_USAGE


def test_the_cli_prints_an_errors_fields_one_a_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        fail(EXAMPLES[BatchFileError](), "jobs.jsonl")
    assert capsys.readouterr().err.splitlines() == [
        "jobs.jsonl: line 3: SessionNumber: too big",
        "jobs.jsonl: ... and 249 more",
    ]
    with pytest.raises(SystemExit):
        fail(EXAMPLES[UnknownResourceError](), "--target")
    assert (
        capsys.readouterr().err
        == "mirrorq: --target: no traffic mirror target tmt-0123456789abcdef0\n"
    )

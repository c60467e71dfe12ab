"""schemathesis (property-based requests generated from the server's own OpenAPI schema) against a real
`medannot serve` on SQLite and PostgreSQL: every API operation, as an admin, an annotator holding a lease, a
reviewer holding a review lease and with no login, must never answer a server error (5xx), and what it answers
with a documented status must match the documented schema.

The lab behind it has one final case (two reads, a consensus, signatures), one case in review and one being read,
and schemathesis is told the ids and lease tokens that exist, so that about half of its requests reach the code
behind the checks for a real object instead of stopping at 404. Bounded by the examples per operation (a few
minutes for the file on 2 cores); ``MEDANNOT_FUZZ_EXAMPLES`` and ``MEDANNOT_FUZZ_SEED`` explore further.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pytest
import requests
from harness import (PASSWORD, Lab, ServerProcess, fresh_database, login, make_final, make_lab, read_case,
                     reader)
from sqlalchemy import create_engine, text

from medannot_testing import CLI_ENV, require_tool

SEED = int(os.environ.get("MEDANNOT_FUZZ_SEED", "20261203"))  # fixed: CI reruns the same requests
EXAMPLES = int(os.environ.get("MEDANNOT_FUZZ_EXAMPLES", "6"))  # random requests per operation
LOGOUT = "/api/v1/auth/logout"  # would end the session the run is authenticated with: fuzzed without a login
# the server's deliberate back-pressure (a password check waits at most 2 s for a free slot, then 503 + Retry-After)
# is not a server error; every other 5xx is
PASSWORD_CHECKING = ["/api/v1/auth/login", "/api/v1/submissions/{submission_id}/sign",
                     "/api/v1/reviews/{review_id}/{which}/sign"]
# The coverage phase sends ~25 boundary requests to an operation whatever --max-examples says; where a login's role
# cannot get past the role check (403 before any other code), it is skipped for that login. Random requests
# (fuzzing) still go to every operation as everyone.
ANNOTATOR_ONLY = r"/api/v1/(projects/\{project_id\}/claim|tasks/.*)"
REVIEWER_ONLY = r"/api/v1/(projects/\{project_id\}/reviews/claim|reviews/\{review_id\}/(heartbeat|decide.*))"
REVIEWER_OR_ADMIN = r"/api/v1/(projects/\{project_id\}/reviews|reviews/.*)"
ADMIN_ONLY = r"/api/v1/(projects/\{project_id\}/(archive|package)|reviews/\{review_id\}/retry|audit)"
NOT_REACHED = {"admin": [ANNOTATOR_ONLY, REVIEWER_ONLY], "r1": [REVIEWER_OR_ADMIN, ADMIN_ONLY],
               "rev": [ANNOTATOR_ONLY, ADMIN_ONLY], None: [r"/api/v1/(?!auth/login$).*"]}
# nor for the package: each call builds the whole package (about a second), and its inputs are a project id (the
# same path parameter the coverage phase tries on every other project operation) and a boolean
SLOW = [r"/api/v1/projects/\{project_id\}/package"]


def schemathesis_problem() -> str | None:
    if importlib.util.find_spec("schemathesis") is None:
        return "schemathesis is not installed: pip install -e '.[dev]'"
    return None


@dataclass
class FuzzedLab:
    lab: Lab
    server: ServerProcess
    tokens: dict[str, str]  # user -> bearer token, taken before any run (the fuzzer's wrong passwords lock accounts)
    lease: str              # r1's lease on case-003
    review_lease: str       # rev's lease on case-002's review


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One fresh database per backend for the whole module (its lab takes a while to build)."""
    with fresh_database(request.param, tmp_path_factory.mktemp(request.param)) as url:
        yield url


@pytest.fixture(scope="module")
def fuzzed(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzedLab]:
    require_tool(schemathesis_problem())
    root = tmp_path_factory.mktemp("fuzzed")
    lab = make_lab(db_url, root / "lab", extra_users={"rev": "reviewer"})
    server = ServerProcess(db_url, root / "data").start()
    try:
        read_case(lab, server, "r1", root)
        read_case(lab, server, "r2", root)
        make_final(lab, server)  # case-001: submissions 1 and 2, review 1, signatures 1 and 2
        read_case(lab, server, "r1", root)
        read_case(lab, server, "r2", root)
        in_review = reader(server, "rev").claim_review(lab.project_id)  # case-002's review, leased to rev
        reading = reader(server, "r1").claim(lab.project_id)  # case-003, leased to r1
        assert in_review is not None and reading is not None
        tokens = {user: login(server.url, user)["Authorization"].split(" ", 1)[1] for user in ("admin", "r1", "rev")}
        yield FuzzedLab(lab, server, tokens, reading.lease_token, in_review["lease_token"])
    finally:
        server.stop()


def _toml(value: object) -> str:
    return json.dumps(value)  # a JSON string, number or list of them is TOML too


def config_text(fuzzed: FuzzedLab, user: str | None) -> str:
    """schemathesis.toml: the values that exist in the lab, each used for about half of the generated requests;
    no coverage phase where ``user`` is refused for their role."""
    dictionaries = {
        "ids": [1, 2, 3, 4, 5, 6],
        "leases": [fuzzed.lease, fuzzed.review_lease],
        "which": ["consensus", "edited"],
        "kinds": ["seg", "sr"],
        "passwords": [PASSWORD],
        "meanings": ["authored", "reviewed", "approved"],
        "actions": ["accept", "consensus", "return"],
        "users": ["admin", "r1", "rev"],
    }
    bindings = {
        **{f"path.{name}": "ids" for name in ("project_id", "task_id", "review_id", "submission_id", "signature_id")},
        "path.which": "which", "path.kind": "kinds", "header.X-Lease-Token": "leases",
        "body.password": "passwords", "body.meaning": "meanings", "body.action": "actions",
        "body.submission_id": "ids", "body.username": "users",
    }
    lines = ["[dictionaries]"]
    lines += [f"{name} = {{ values = {_toml(values)} }}" for name, values in dictionaries.items()]
    lines += ["", "[parameters]"]
    lines += [f"{_toml(key)} = {{ dictionary = {_toml(name)}, probability = 0.5 }}" for key, name in bindings.items()]
    for path in PASSWORD_CHECKING:
        lines += ["", "[[operations]]", f"include-path = {_toml(path)}",
                  'checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "503"]']
    for pattern in NOT_REACHED[user] + SLOW:
        lines += ["", "[[operations]]", f"include-path-regex = {_toml('^' + pattern + '$')}",
                  "phases.coverage.enabled = false"]
    return "\n".join(lines) + "\n"


def run_schemathesis(fuzzed: FuzzedLab, user: str | None, out: Path, examples: int) -> subprocess.CompletedProcess[str]:
    """`st run` over every operation of the server's schema, as ``user`` (None: no login)."""
    out.mkdir(parents=True, exist_ok=True)
    config = out / "schemathesis.toml"
    config.write_text(config_text(fuzzed, user))
    auth = ["--header", f"Authorization: Bearer {fuzzed.tokens[user]}", "--exclude-path", LOGOUT] if user else []
    command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
               f"{fuzzed.server.url}/openapi.json", *auth,
               "--checks", "not_a_server_error,response_schema_conformance",
               "--phases", "coverage,fuzzing,stateful", "--max-examples", str(examples), "--seed", str(SEED),
               "--workers", "1", "--request-timeout", "120", "--generation-database", "none", "--no-color",
               "--report", "ndjson", "--report-ndjson-path", str(out / "events.ndjson")]
    # one worker: with two, hypothesis (describing its strategies with ast.parse in both threads) failed a run with
    # CPython 3.11's "SystemError: AST constructor recursion depth mismatch"
    return subprocess.run(command, capture_output=True, text=True, cwd=out, env=CLI_ENV, timeout=900, check=False)


def failures(output: str) -> str:
    """The FAILURES / ERRORS sections of schemathesis' report (each with a curl line that reproduces it)."""
    found = re.search(r"^=+ (FAILURES|ERRORS) =+$.*?(?=^=+ (WARNINGS|SUMMARY) =+$)", output, re.M | re.S)
    return found.group(0) if found else output[-6000:]


def bearer(fuzzed: FuzzedLab, user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {fuzzed.tokens[user]}"}


def signatures(fuzzed: FuzzedLab) -> int:
    engine = create_engine(fuzzed.lab.db_url)
    with engine.connect() as connection:
        count = int(connection.execute(text("SELECT count(*) FROM signatures")).scalar_one())
    engine.dispose()
    return count


# The two regression tests run before the runs below (which lock accounts with wrong passwords and sign things).

def test_a_refusal_with_a_one_line_reason_matches_the_documented_422(fuzzed):
    """The server's own 422s (an upload that is not the files asked for, a refused result or decision, a value the
    database refuses) carry ``detail`` as one line of text; the schema documented only FastAPI's list of field
    errors, so a client generated from it failed to read them (schemathesis: "is not of type 'array'")."""
    url = fuzzed.server.url
    response = requests.post(f"{url}/api/v1/signatures/1/verify", headers=bearer(fuzzed, "admin"), timeout=30)
    assert response.status_code == 422 and "multipart/form-data" in response.json()["detail"], response.text
    schema = requests.get(f"{url}/openapi.json", timeout=30).json()
    documented = schema["paths"]["/api/v1/signatures/{signature_id}/verify"]["post"]["responses"]["422"]
    jsonschema.validate(response.json(), {**documented["content"]["application/json"]["schema"],
                                          "components": schema["components"]})
    fields = requests.post(f"{url}/api/v1/submissions/1/sign", json={}, headers=bearer(fuzzed, "admin"), timeout=30)
    assert fields.status_code == 422 and isinstance(fields.json()["detail"], list), fields.text
    jsonschema.validate(fields.json(), {**documented["content"]["application/json"]["schema"],
                                        "components": schema["components"]})


@pytest.mark.parametrize("printed_name", ["Ada\x00Admin", "Ada\nAdmin", "Ada\x1b[31mAdmin"])
def test_a_printed_name_with_control_characters_is_refused_and_nothing_is_signed(fuzzed, printed_name):
    """The printed name goes into the signature record and, for "approved", the reissued SR's VerifyingObserverName:
    SQLite stored a NUL (or a newline, an escape) there and signed (201) where PostgreSQL refused the NUL (422)."""
    before = signatures(fuzzed)
    response = requests.post(f"{fuzzed.server.url}/api/v1/reviews/1/consensus/sign", headers=bearer(fuzzed, "admin"),
                             json={"password": PASSWORD, "meaning": "approved", "printed_name": printed_name},
                             timeout=60)
    assert response.status_code == 422, response.text
    assert "printed_name" in json.dumps(response.json()["detail"])
    assert signatures(fuzzed) == before


@pytest.mark.parametrize("user", ["admin", "r1", "rev", None], ids=["admin", "annotator", "reviewer", "no-login"])
def test_no_operation_answers_a_server_error_or_breaks_its_schema(fuzzed, user, tmp_path):
    run = run_schemathesis(fuzzed, user, tmp_path, EXAMPLES if user else max(1, EXAMPLES // 2))
    assert run.returncode == 0, f"schemathesis as {user or 'nobody'} (seed {SEED}; server log " \
                                f"{fuzzed.server.log}):\n{failures(run.stdout)}\n{run.stderr[-2000:]}"
    tested = re.search(r"^\s*Tested: (\d+)$", run.stdout, re.M)
    schema = requests.get(f"{fuzzed.server.url}/openapi.json", timeout=30).json()
    operations = sum(len(methods) for methods in schema["paths"].values()) - (1 if user else 0)
    assert tested is not None and int(tested.group(1)) == operations, run.stdout[-3000:]

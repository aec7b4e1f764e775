"""What an administrator meets at the command line, run as they would run it: the
installed ``mailsift`` command in a subprocess (on a pseudo-terminal where a terminal is
the point): a taken port, bad settings, ``--help``, progress, the Makefile's output and
the files the README's quick start leaves behind."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailsift.cli_help import TASKS
from tests.service.server import Service, free_port
from tests.test_docs import _fenced_lines, _readme, _section

MAILSIFT = Path(sys.executable).parent / "mailsift"
ROOT = Path(__file__).resolve().parent.parent
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
COMMANDS = [c for commands in TASKS.values() for c in commands if c != "token"]
SUBCOMMANDS = [
    "token create",
    "token list",
    "token revoke",
    "alias create",
    "alias list",
    "alias delete",
]
PYTHON_TYPES = ("<bool>", "<int", "<float", "<str>", "<list[", "<path>", "x>=", "x<=")


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the developer's own MAILSIFT_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSIFT_")}
    return {**env, "NO_COLOR": "1", **extra}


def mailsift(*args: str | Path, env: dict[str, str] | None = None) -> Run:
    done = subprocess.run(
        [str(MAILSIFT), *map(str, args)],
        capture_output=True,
        text=True,
        env=env if env is not None else clean_env(),
        timeout=120,
    )
    return Run(done.returncode, done.stdout, done.stderr)


def on_a_terminal(*args: str | Path, env: dict[str, str]) -> Run:
    """``mailsift`` with stderr on a pseudo-terminal (what an operator sees) and stdout
    on a pipe (what a script reads); ``err`` is all the terminal received, without the
    escape sequences that drew and erased it."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [str(MAILSIFT), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=slave,
        env={**env, "TERM": "xterm", "COLUMNS": "200"},
    )
    os.close(slave)
    received = bytearray()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the terminal closed: the command has ended
                break
            if not chunk:
                break
            received += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    proc.wait(timeout=30)
    return Run(proc.returncode, out, ANSI.sub("", received.decode(errors="replace")))


def one_json_object(text: str) -> dict[str, object]:
    lines = text.splitlines()
    assert len(lines) == 1, text
    found = json.loads(lines[0])
    assert isinstance(found, dict)
    return found


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    for label, count in (("ham", 12), ("spam", 8)):
        (root / label).mkdir()
        for i in range(count):
            body = (
                f"notes of meeting {i}" if label == "ham" else f"cheap pills http://p{i}.example/"
            )
            (root / label / f"{i:02d}.eml").write_text(
                f"From: x{i}@{label}.example\r\nSubject: {label} {i}\r\n\r\n{body}\r\n"
            )
    return root


# -- a listener that cannot listen -----------------------------------------------------------


@contextmanager
def held_port() -> Iterator[int]:
    """A loopback port another program listens on."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield int(other.getsockname()[1])


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_taken_gateway_port_is_one_line_naming_the_listener_and_the_option(
    tmp_path: Path, workers: str
) -> None:
    with held_port() as port:
        done = mailsift(
            "serve", "--port", str(port), "--admin-port", str(free_port()),
            "--workers", workers, env=clean_env(MAILSIFT_DATA_DIR=str(tmp_path)),
        )  # fmt: skip
    assert done.code == 2
    assert done.err_lines == [
        f"error: the gateway listener cannot listen on 127.0.0.1:{port}: address already "
        "in use (another mailsift serve, or another service, listens there); choose "
        "another port with --port"
    ]


def test_a_taken_admin_port_names_the_admin_options(tmp_path: Path) -> None:
    with held_port() as admin_port:
        done = mailsift(
            "serve", "--port", str(free_port()), "--admin-port", str(admin_port),
            env=clean_env(MAILSIFT_DATA_DIR=str(tmp_path)),
        )  # fmt: skip
    assert done.code == 2
    [line] = done.err_lines
    assert f"the admin listener cannot listen on 127.0.0.1:{admin_port}" in line
    assert "--admin-port" in line


def test_an_address_of_another_machine_names_the_host_option(tmp_path: Path) -> None:
    done = mailsift(
        "serve", "--host", "192.0.2.1", "--port", str(free_port()), "--admin-port", "0",
        env=clean_env(MAILSIFT_DATA_DIR=str(tmp_path), MAILSIFT_ALLOW_PLAIN_HTTP="true"),
    )  # fmt: skip
    assert done.code == 2
    [line] = done.err_lines
    assert "the gateway and admin listener cannot listen on 192.0.2.1:" in line
    assert "--host" in line


def test_the_same_port_for_both_listeners_is_refused(tmp_path: Path) -> None:
    port = str(free_port())
    done = mailsift(
        "serve", "--port", port, "--admin-port", port,
        env=clean_env(MAILSIFT_DATA_DIR=str(tmp_path)),
    )  # fmt: skip
    assert done.code == 2
    assert done.err_lines == [
        f"error: --port and --admin-port are both {port}: give the admin listener a port "
        "of its own, or --admin-port 0 for one listener that serves everything"
    ]


def test_serve_twice_logs_where_the_first_listens_and_stops_the_second(tmp_path: Path) -> None:
    with Service(tmp_path / "data", split_listeners=True) as first:
        log = first.log_path.read_text()
        assert f"gateway listener on http://127.0.0.1:{first.port} (TLS off)" in log
        assert f"admin listener on http://127.0.0.1:{first.admin_port} (TLS off)" in log

        second = mailsift(
            "serve", "--port", str(first.port), "--admin-port", str(first.admin_port),
            env=clean_env(MAILSIFT_DATA_DIR=str(tmp_path / "data")),
        )  # fmt: skip
        assert second.code == 2
        [line] = second.err_lines
        assert line.startswith(
            f"error: the gateway listener cannot listen on 127.0.0.1:{first.port}"
        )
        assert line.endswith("choose another port with --port")
        assert first.client().get("/healthz").status_code == 200  # the first serves on


def test_serve_logs_that_tls_is_on(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    env = {"MAILSIFT_TLS_CERTFILE": str(cert), "MAILSIFT_TLS_KEYFILE": str(key)}
    with Service(tmp_path / "data", env=env) as service:
        log = service.log_path.read_text()
    assert f"gateway and admin listener on https://127.0.0.1:{service.port} (TLS on)" in log


# -- invalid settings: the variable (or option), the value, the form expected ---------------

BAD_SERVICE_SETTINGS = {"MAILSIFT_LOG_POLL_SECONDS": "abc", "MAILSIFT_SPAM_ACTION": "drop"}
EXPECTED_LINES = [
    "error: MAILSIFT_SPAM_ACTION=drop: expected one of accept, tag, quarantine, reject, "
    "defer (default quarantine)",
    "error: MAILSIFT_LOG_POLL_SECONDS=abc: expected a number greater than 0 and at most 60 "
    "(default 0.25)",
]


@pytest.mark.parametrize(
    "command",
    [
        ["serve", "--port", "0", "--admin-port", "0"],
        ["rebuild"],
        ["diagnose"],
        ["token", "list"],
        ["token", "create", "--role", "admin"],
        ["bench", "no-such-corpus"],
        ["train", "no-such-corpus"],  # its body builds the settings itself: the app catches it
    ],
    ids=" ".join,
)
def test_bad_service_settings_are_one_line_each(command: list[str], tmp_path: Path) -> None:
    done = mailsift(
        *command, env=clean_env(MAILSIFT_DATA_DIR=str(tmp_path), **BAD_SERVICE_SETTINGS)
    )
    assert done.code == 2
    assert done.err_lines == EXPECTED_LINES
    assert "pydantic" not in done.err and "log_poll_seconds" not in done.err
    assert not (tmp_path / "state.db").exists()  # stopped before anything was opened


def test_a_value_that_is_not_json_is_named_with_what_json_is_wanted(tmp_path: Path) -> None:
    done = mailsift(
        "token", "list",
        env=clean_env(MAILSIFT_DATA_DIR=str(tmp_path), MAILSIFT_LIMIT_OVERRIDES="{bad"),
    )  # fmt: skip
    assert done.code == 2
    [line] = done.err_lines
    assert line.startswith("error: MAILSIFT_LIMIT_OVERRIDES='{bad': not valid JSON (")
    assert "expected a JSON object" in line


def test_a_rule_across_settings_names_their_variables_and_hides_secrets(tmp_path: Path) -> None:
    done = mailsift(
        "serve", "--port", "0", "--admin-port", "0",
        env=clean_env(
            MAILSIFT_DATA_DIR=str(tmp_path),
            MAILSIFT_INBOUND_SPAM_THRESHOLD="0.2",
            MAILSIFT_ADMIN_TOKEN="short-secret",
        ),
    )  # fmt: skip
    assert done.code == 2
    assert done.err_lines == [
        "error: inbound thresholds out of order: needs MAILSIFT_INBOUND_SUSPECT_THRESHOLD "
        "(0.3) <= MAILSIFT_INBOUND_SPAM_THRESHOLD (0.2) <= MAILSIFT_INBOUND_REJECT_THRESHOLD "
        "(0.999)"
    ]
    token = mailsift(
        "token", "list",
        env=clean_env(MAILSIFT_DATA_DIR=str(tmp_path), MAILSIFT_ADMIN_TOKEN="short-secret"),
    )  # fmt: skip
    assert token.err_lines == ["error: MAILSIFT_ADMIN_TOKEN must be at least 16 characters"]


@pytest.mark.parametrize("command", ["milter", "policy"])
def test_bad_gateway_settings_name_the_variable(command: str) -> None:
    done = mailsift(command, env=clean_env(MAILSIFT_GATEWAY_TIMEOUT_SECONDS="soon"))
    assert done.code == 2
    assert done.err_lines == [
        "error: MAILSIFT_GATEWAY_TIMEOUT_SECONDS=soon: expected a number greater than 0 and "
        "at most 300 (default 5)"
    ]


def test_bad_gateway_options_name_the_option() -> None:
    done = mailsift("milter", "--internal-networks", "10.0.0.0/33", "--port", str(free_port()))
    assert done.code == 2
    assert done.err_lines == [
        "error: --internal-networks: '10.0.0.0/33' does not appear to be an IPv4 or IPv6 network"
    ]
    both = mailsift(
        "policy", "--token-file", "/nonexistent/token", "--port", str(free_port()),
        env=clean_env(MAILSIFT_GATEWAY_TOKEN="msk_secret-value"),
    )  # fmt: skip
    assert both.code == 2
    assert both.err_lines == [
        "error: give MAILSIFT_GATEWAY_TOKEN or --token-file=/nonexistent/token, not both"
    ]


# -- --help ------------------------------------------------------------------------------------


def test_help_says_what_mailsift_is_and_lists_the_commands_by_task() -> None:
    done = mailsift("--help", env=clean_env(COLUMNS="200"))
    assert done.code == 0
    assert "spam and data-leak filter" in done.out
    assert "thin layer" not in done.out
    panels = re.findall(r"╭─ (.+?) ─", done.out)
    assert panels == ["Options", *TASKS]  # no command left in a "Commands" panel
    listed = re.findall(r"^│ (\w+) ", done.out, re.M)
    assert listed == [c for commands in TASKS.values() for c in commands]


@pytest.mark.parametrize("command", [*COMMANDS, *SUBCOMMANDS, ""])
def test_help_shows_values_in_words_not_python_types(command: str) -> None:
    done = mailsift(*command.split(), "--help", env=clean_env(COLUMNS="200"))
    assert done.code == 0
    assert not [t for t in PYTHON_TYPES if t in done.out], done.out
    assert "{" not in done.out.splitlines()[1]  # usage: CORPUS, not {corpus}


def test_help_words_for_values_flags_ranges_and_choices() -> None:
    rows = {
        line.split()[1]: " ".join(line.split()[2:])
        for line in mailsift("bench", "--help", env=clean_env(COLUMNS="200")).out.splitlines()
        if line.startswith("│ --")
    }
    assert rows["--workers"].startswith("INTEGER [at least 1] Server worker processes.")
    assert rows["--direction"].startswith("inbound|outbound ")
    assert rows["--model"].startswith("PATH ")
    assert rows["--json"].startswith("Print one JSON object.")  # a flag: no type


def test_train_help_names_the_training_log_it_writes_by_default() -> None:
    done = mailsift("train", "--help", env=clean_env(COLUMNS="300"))
    assert "./data/mailsift.db" in done.out
    assert "MAILSIFT_DATABASE_URL" in done.out


# -- progress: on a terminal, on stderr; nothing when stderr is not a terminal --------------


def test_speed_shows_its_phases_on_a_terminal_and_keeps_stdout_json(corpus: Path) -> None:
    done = on_a_terminal("speed", corpus, env=clean_env())
    assert done.code == 0, done.err
    assert one_json_object(done.out)["messages"] == 20
    for phase in (
        f"speed: reading {corpus}",
        "speed: learning every message (pass 1 of 2)",
        "speed: timing each stage (pass 2 of 2)",
    ):
        assert phase in done.err


@pytest.mark.slow
def test_bench_shows_its_phases_on_a_terminal_and_keeps_stdout_json(corpus: Path) -> None:
    done = on_a_terminal(
        "bench", corpus, "--workers", "1", "--concurrency", "2", "--warmup", "5", "--json",
        env=clean_env(),
    )  # fmt: skip
    assert done.code == 0, done.err
    assert one_json_object(done.out)["requests"] == 20
    for phase in (
        f"bench: reading {corpus}",
        "bench: appending 20 messages to the training log",
        "bench: rebuilding the model, then starting the service (1 worker)",
        "bench: warm-up (5 messages), then the measured run (20 messages, 2 connections)",
    ):
        assert phase in done.err


@pytest.mark.parametrize(
    "command",
    [
        ["speed"],
        ["eval", "--json"],
        pytest.param(
            ["bench", "--workers", "1", "--concurrency", "2", "--warmup", "0", "--json"],
            marks=pytest.mark.slow,
        ),
    ],
    ids=lambda c: c[0],
)
def test_progress_is_quiet_when_stderr_is_not_a_terminal(command: list[str], corpus: Path) -> None:
    done = mailsift(command[0], corpus, *command[1:])
    assert done.code == 0, done.err
    assert done.err == ""
    one_json_object(done.out)


# -- make: the targets documented as printing JSON print only JSON ---------------------------


def test_make_targets_that_print_a_result_do_not_echo_their_commands() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = re.findall(r"^([a-z-]+):.*## .*(?:JSON on stdout)", makefile, re.M)
    assert {"bench", "eval", "bench-report"} <= set(targets)
    for target in targets:
        recipe = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", makefile, re.M)
        assert recipe, target
        for line in recipe.group(1).splitlines():
            assert line.startswith("\t@"), f"make {target} echoes {line.strip()!r} onto stdout"
    dry = subprocess.run(
        ["make", "-s", "-C", str(ROOT), "--no-print-directory", "-n", "eval", "CORPUS=x"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "mailsift eval x --mode online --json" in dry.stdout  # the recipe itself is intact


# -- the README's quick start leaves nothing in the checkout ---------------------------------


def test_quick_start_and_evaluation_write_files_outside_the_checkout() -> None:
    text = _readme()
    commands = _fenced_lines(_section(text, "Quick start").splitlines())
    commands += _fenced_lines(_section(text, "Evaluation and benchmark").splitlines())
    written = [
        path
        for line in commands
        if not line.startswith("#")
        for path in re.findall(r"(?:>|--plot|--scores|-o)\s+([^\s'\"|;&]+)", line)
    ]
    assert written, "the quick start writes a message file somewhere"
    assert all(path.startswith("/tmp/") for path in written), written
    read = [p for line in commands for p in re.findall(r"--data-binary @(\S+)", line)]
    assert read and all(path.startswith("/tmp/") for path in read), read

"""``mailsift token create``, run as an administrator runs it: it names the database it
wrote to, warns when it had to create that database, and the README's recipe for
keeping a gateway token in a file works from a clean machine."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

from tests.test_docs import README, _section

MAILSIFT = Path(sys.executable).with_name("mailsift")
TOKEN = re.compile(r"^msk_[0-9a-f]{12}_[A-Za-z0-9_-]{20,100}$")


def mailsift(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The installed command with only ``env``'s MAILSIFT_* settings."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MAILSIFT_")}
    return subprocess.run(
        [str(MAILSIFT), *args],
        cwd=cwd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_token_create_names_its_database_and_warns_when_it_created_it(tmp_path: Path) -> None:
    # Run where no service ever ran: ./data of this directory is made, and it says so.
    first = mailsift("token", "create", "--role", "gateway", "--name", "mx1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    state = tmp_path / "data" / "state.db"
    assert first.stdout.startswith("created gateway token ")
    assert f"(mx1) in {state}; shown only now: " in first.stdout
    assert TOKEN.match(first.stdout.split()[-1])  # still the last word, for `awk '{print $NF}'`
    assert first.stderr.startswith(f"warning: {state} was not a state database before")
    assert "MAILSIFT_DATA_DIR" in first.stderr and "msk_" not in first.stderr
    # The same database again: it exists now, no warning; the first token is listed.
    again = mailsift("token", "create", "--role", "admin", cwd=tmp_path)
    assert again.returncode == 0 and again.stderr == ""
    assert f"in {state}; shown only now: " in again.stdout
    listed = mailsift("token", "list", cwd=tmp_path).stdout
    assert "mx1" in listed and "admin" in listed


def test_the_data_dir_setting_names_the_database(tmp_path: Path) -> None:
    data = tmp_path / "srv" / "data"
    done = mailsift(
        "token", "create", "--role", "gateway", cwd=tmp_path, env={"MAILSIFT_DATA_DIR": str(data)}
    )
    assert done.returncode == 0, done.stderr
    assert f"in {data / 'state.db'}; shown only now: " in done.stdout
    assert str(data / "state.db") in done.stderr


def test_a_refused_token_creates_no_database(tmp_path: Path) -> None:
    done = mailsift("token", "create", "--role", "root", cwd=tmp_path)
    assert done.returncode == 2 and "role must be one of" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_unreachable_database_is_an_error_without_its_password(tmp_path: Path) -> None:
    url = "postgresql://mailsift:s3cret-pw@127.0.0.1:1/mailsift"
    done = mailsift(
        "token", "create", "--role", "gateway", cwd=tmp_path, env={"MAILSIFT_DATABASE_URL": url}
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: cannot write to postgresql+psycopg://mailsift:***@")
    assert "s3cret-pw" not in done.stdout + done.stderr and "Traceback" not in done.stderr


def test_list_and_revoke_say_the_same_in_one_line(tmp_path: Path) -> None:
    url = "postgresql://mailsift:s3cret-pw@127.0.0.1:1/mailsift"
    for args in (("token", "list"), ("token", "revoke", "0123456789ab")):
        done = mailsift(*args, cwd=tmp_path, env={"MAILSIFT_DATABASE_URL": url})
        assert done.returncode == 2, args
        assert done.stderr.startswith(
            "error: cannot use the state database postgresql+psycopg://mailsift:***@"
        ), done.stderr
        assert done.stderr.count("\n") == 1
        assert "s3cret-pw" not in done.stdout + done.stderr and "Traceback" not in done.stderr


def _step_one() -> str:
    """The shell lines of "Postfix, step by step", step 1, as the README gives them."""
    steps = _section(README.read_text(encoding="utf-8"), "Wiring into a mail server")
    block = re.search(r"^1\. .*?```sh\n(?P<sh>.*?)```", steps, re.M | re.S)
    assert block, "the README's Postfix step 1 has no sh block"
    return "\n".join(line.strip() for line in block.group("sh").splitlines())


def test_the_readmes_token_file_recipe_works_on_a_clean_machine(tmp_path: Path) -> None:
    """/etc/mailsift does not exist yet: the recipe makes it, and the file holds the token,
    readable by its owner alone from the moment it exists."""
    script = _step_one()
    assert "mkdir -p" in script and "umask 077" in script
    etc = tmp_path / "etc" / "mailsift"
    script = script.replace("/etc/mailsift", str(etc)).replace(".venv/bin/mailsift", str(MAILSIFT))
    data = tmp_path / "data"  # the service's, where its tokens are already
    service = {"MAILSIFT_DATA_DIR": str(data)}
    assert mailsift("token", "create", "--role", "admin", cwd=tmp_path, env=service).returncode == 0
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MAILSIFT_")}
    done = subprocess.run(
        ["bash", "-e", "-c", script],
        cwd=tmp_path,
        env={**clean, "MAILSIFT_DATA_DIR": str(data)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "token saved" and done.stderr == ""  # the service's database
    token_file = etc / "gateway.token"
    assert TOKEN.match(token_file.read_text().strip())
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(etc.stat().st_mode) == 0o711
    token_id = token_file.read_text().split("_")[1]
    listed = mailsift("token", "list", cwd=tmp_path, env={"MAILSIFT_DATA_DIR": str(data)}).stdout
    assert f"{token_id}  gateway" in listed

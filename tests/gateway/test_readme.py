"""The README's first command works as written.

It is run as a subprocess in a working folder of its own that looks like a
checkout (the Makefile, scripts, pyproject.toml and the set-up .venv, linked),
so that the embedded default store, ``taskpoint-data/checkpoints.db``, lands
there. Then, as the README's walk-through does: a token, ``examples/``
submitted, watched to the end, and SIGTERM.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
LINKED = ("Makefile", "scripts", "pyproject.toml", ".venv")
SERVING = re.compile(r"taskpoint serving on (http://\S+) .*pid (\d+)\)")


def first_command(readme: str) -> str:
    """Return the first command of the README's first shell block."""
    block = re.search(r"```(?:sh|bash|shell)\n(.*?)```", readme, flags=re.S)
    assert block, "the README has no shell block"
    for line in block.group(1).splitlines():
        command = line.split(" #")[0].strip()
        if command and not command.startswith("#"):
            return command
    raise AssertionError("the README's first shell block holds no command")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_line(log: Path, process: subprocess.Popen[bytes]) -> re.Match[str]:
    deadline = time.monotonic() + 120  # set-up may install on a fresh machine
    while time.monotonic() < deadline:
        found = SERVING.search(log.read_text(errors="replace"))
        if found:
            return found
        assert process.poll() is None, log.read_text()
        time.sleep(0.1)
    raise AssertionError(f"nothing served within 120 s:\n{log.read_text()}")


def cli(folder: Path, env: dict[str, str], *argv: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "taskpoint"), *argv],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, (argv, done.stdout, done.stderr)
    return done


def test_the_first_command_serves_and_runs_the_examples(tmp_path):
    command = first_command(README.read_text())
    assert "taskpoint run" in command or command == "make run", command
    # Set up in the checkout itself first: should pyproject.toml have changed,
    # the editable install must point at the checkout, not at a link to it.
    subprocess.run([str(ROOT / "scripts" / "setup.sh")], check=True, timeout=600)
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for name in LINKED:
        (checkout / name).symlink_to(ROOT / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKPOINT_")}
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["bash", "-c", command],
            cwd=checkout,
            env={**env, "TASKPOINT_GATEWAY_PORT": str(free_port())},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        serving = wait_for_line(log, process)
        url, pid = serving.group(1), int(serving.group(2))
        token = cli(checkout, env, "token", "create", "--tenant", "default").stdout
        client_env = {**env, "TASKPOINT_URL": url, "TASKPOINT_TOKEN": token.strip()}

        submitted = cli(checkout, client_env, "submit", str(ROOT / "examples"))
        task_id = submitted.stdout.strip()
        cli(checkout, client_env, "watch", task_id, "--interval", "0.2")
        status = json.loads(
            cli(checkout, client_env, "status", task_id, "--json").stdout
        )
        assert status["state"] == "completed"
        assert status["completed_documents"] == status["total_documents"] >= 5
        assert (checkout / "taskpoint-data" / "checkpoints.db").exists()

        os.kill(pid, signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log.read_text()[-3000:]
        assert "taskpoint stopped" in log.read_text()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_the_operations_guide_names_every_setting():
    from gateway.settings import Settings

    guide = (ROOT / "docs" / "operations.md").read_text()
    prefix = Settings.model_config.get("env_prefix", "")
    missing = [
        name
        for name in Settings.model_fields
        if f"`{prefix}{name.upper()}`" not in guide
    ]
    assert not missing, f"docs/operations.md does not describe {missing}"


def test_the_readme_names_every_command_and_exit_code():
    from gateway import cli

    readme = README.read_text()
    parser = cli.build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a.choices, dict)]
    for command in commands.choices:
        assert f"`{command}" in readme, command
    codes = {
        v for k, v in vars(cli).items() if k.startswith("EXIT_") and isinstance(v, int)
    }
    for code in codes:
        assert re.search(rf"^\| {code}\b|\b{code} / |/ {code} \|", readme, re.M), code

"""`seqmem sweep --address` against a real Ray cluster that the module starts with `ray start --head` and stops.

The cluster asks for a token, as `ray start --head` does on a machine that has one: the sweep must join it by
host:port and by `auto` with that token, without Ray's token warnings; an address where nothing answers is one line
within the stated timeout.
"""

import csv
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
from ray._common.utils import get_ray_address_file
from test_sweep import write_config

from seqmem.cli import main
from seqmem.sweep.run import CONNECT_TIMEOUT_S, answers

RAY = str(Path(sys.executable).with_name("ray"))
SEQMEM = str(Path(sys.executable).with_name("seqmem"))
#: What Ray prints where a cluster's token authentication is left to its defaults (on or off).
TOKEN_WARNING = "Token authentication is"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (the OS's pick, closed again)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def family(pid: int) -> set[int]:
    """``pid`` and every process under it, from ``ps``."""
    table = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True, timeout=30).stdout
    children: dict[int, list[int]] = {}
    for line in table.splitlines():
        child, parent = map(int, line.split())
        children.setdefault(parent, []).append(child)
    found, todo = set(), [pid]
    while todo:
        found.add(todo[-1])
        todo.extend(children.get(todo.pop(), []))
    return found


def alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if Path(f"/proc/{pid}").exists() and "(Z)" not in stat(pid)}


def stat(pid: int) -> str:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "(Z)"  # gone between the two reads
    return f"({text.rsplit(')', 1)[1].split()[0]})"


def session_processes(session: str) -> list[str]:
    """The command lines of the processes of a Ray session (its folder under /tmp/ray is in them)."""
    table = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, timeout=30).stdout
    return [line for line in table.splitlines() if session in line and "ps -eo" not in line]


@dataclass
class Cluster:
    address: str  # host:port of its head, as the tests give it to --address
    token: Path  # the file holding its token


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A Ray head started with `ray start --head --block`, on 127.0.0.1, with a token of its own; stopped after the
    module, with every process it started (checked with ps).

    Stopped by SIGTERM to the `ray start --block` process, which stops this cluster's processes: `ray stop` would
    stop every Ray on the machine, other test runs' included.
    """
    folder = tmp_path_factory.mktemp("ray-head")
    token = folder / "auth_token"
    token.write_text(secrets.token_hex(32))
    port = free_port()
    command = [RAY, "start", "--head", "--block", "--port", str(port), "--node-ip-address", "127.0.0.1"]
    command += ["--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats"]
    # Ports of their own, so that another Ray on this machine (a local sweep's) never collides with this one.
    command += ["--ray-client-server-port", str(free_port()), "--dashboard-port", str(free_port())]
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    env.pop("RAY_ADDRESS", None)
    log = folder / "head.log"
    with open(log, "w") as out:
        head = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    session = ""
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text():
            assert head.poll() is None, f"ray start --head failed:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"ray start --head did not start within 120 s:\n{log.read_text()}"
            time.sleep(0.5)
        session = next(w for w in log.read_text().split() if "/session_" in w).split("/logs")[0]
        yield Cluster(f"127.0.0.1:{port}", token)
    finally:
        pids = family(head.pid)
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
        deadline = time.monotonic() + 30
        while alive(pids) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = alive(pids)
        for pid in left:  # the test fails below; the machine is left clean all the same
            os.kill(pid, signal.SIGKILL)
        # `ray start` recorded this head as the one `auto` finds; a stopped head must not stay there.
        current = Path(get_ray_address_file(None))
        if current.is_file() and current.read_text().strip().endswith(f":{port}"):
            current.unlink(missing_ok=True)
        assert not left, f"processes of the Ray head still running after it stopped: {sorted(left)}"
        assert not session or not session_processes(session), session_processes(session)


@pytest.fixture
def joining(ray_head: Cluster, monkeypatch: pytest.MonkeyPatch) -> Cluster:
    """This process as a user's shell on the head's machine: its token where Ray looks for it, and
    RAY_AUTH_MODE (which the sweep may set) restored after the test."""
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(ray_head.token))
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return ray_head


def one_trial(folder: Path) -> Path:
    """A sweep of one tiny adding trial (4 steps)."""
    return write_config(folder, grid={"seed_everything": [0]}, record={}, curves={})


def trials(out: Path) -> list[tuple[str, str, str]]:
    with open(out / "trials.csv", newline="") as file:
        return [(t["name"], t["status"], t["steps"]) for t in csv.DictReader(file)]


@pytest.fixture
def ray_warnings() -> Iterator[list[str]]:
    """What Ray logs at WARNING or above while the test runs in this process (Ray's loggers print on a handler of
    their own, which pytest does not capture)."""
    messages: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("ray")
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


@pytest.mark.parametrize("how", ["host:port", "auto"])
def test_a_sweep_joins_a_cluster_started_with_ray_start_by_its_address_or_auto(joining, how, tmp_path, ray_warnings):
    address = joining.address if how == "host:port" else "auto"
    main(["sweep", str(one_trial(tmp_path)), "--out", str(tmp_path / "out"), "--address", address])  # no SystemExit
    assert trials(tmp_path / "out") == [("seed=0", "not solved", "4")]
    assert not [m for m in ray_warnings if TOKEN_WARNING in m]


def test_an_address_where_nothing_listens_is_one_line_within_the_timeout(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    command = [SEQMEM, "sweep", str(one_trial(tmp_path)), "--out", str(tmp_path / "out"), "--address", address]
    start = time.monotonic()
    # A subprocess, so that a sweep that hangs (as it did, for minutes) fails this test instead of holding the suite.
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    seconds = time.monotonic() - start
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"seqmem: error: --address {address}: no Ray cluster answers at "), lines[0]
    assert "Connection refused" in lines[0] and "ray start --head" in lines[0]
    assert seconds < CONNECT_TIMEOUT_S + 20  # the start-up of the seqmem command included
    assert not (tmp_path / "out").exists()


def test_auto_without_a_cluster_from_ray_start_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # where `ray start` records its cluster: nothing there
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", str(one_trial(tmp_path)), "--out", str(tmp_path / "out"), "--address", "auto"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        "seqmem: error: --address auto: no Ray cluster was started on this machine with `ray start`: start one with "
        "`ray start --head`, or give the address of one as host:port\n"
    )
    # A cluster `ray start` recorded that has stopped since: nothing answers there.
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")
    with pytest.raises(SystemExit):
        main(["sweep", str(one_trial(tmp_path)), "--out", str(tmp_path / "out"), "--address", "auto"])
    line = capsys.readouterr().err
    assert "no Ray cluster answers at" in line and "(the last `ray start` on this machine): Connection refused" in line
    assert not (tmp_path / "out").exists()


def test_a_cluster_that_refuses_the_token_is_one_line(joining, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-token")  # over RAY_AUTH_TOKEN_PATH, as Ray reads them
    monkeypatch.setenv("RAY_gcs_server_port_wait_time_s", "1")  # Ray gives up after one try, not twenty
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", str(one_trial(tmp_path)), "--out", str(tmp_path / "out"), "--address", joining.address])
    assert exit_info.value.code == 2
    err = capfd.readouterr().err  # Ray's own lines about each try included: none
    assert err.startswith(f"seqmem: error: --address {joining.address}: the Ray cluster at ") and err.count("\n") == 1
    assert "asks for a token that this process does not have: set RAY_AUTH_MODE=token" in err
    assert not (tmp_path / "out").exists()


def test_a_server_that_accepts_a_connection_but_never_replies_does_not_answer():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        accepted: list = []  # held open: a connection closed at once would be an answer
        threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
        start = time.monotonic()
        assert answers("127.0.0.1", server.getsockname()[1], timeout=0.5) == "no reply within 0.5 s"
        assert time.monotonic() - start < 5
    assert answers("127.0.0.1", free_port(), timeout=0.5) == "Connection refused"


def test_a_joined_cluster_answers(ray_head):
    host, port = ray_head.address.rsplit(":", 1)
    assert answers(host, int(port), timeout=CONNECT_TIMEOUT_S) is None


def test_a_local_sweep_starts_its_own_ray_beside_a_cluster_and_logs_no_token_warning(
    ray_head, tmp_path, monkeypatch, ray_warnings
):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)  # left to Ray's default, which it warns about
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    # Without --address: a Ray of its own, although the head runs (ray.init() alone would join the head).
    main(["sweep", str(one_trial(tmp_path)), "--out", str(tmp_path / "out")])
    assert not [m for m in ray_warnings if TOKEN_WARNING in m]
    assert trials(tmp_path / "out") == [("seed=0", "not solved", "4")]

"""The worker's command line as a user meets it: `--help`, mistakes and stops.

Each user error is one line on stderr that names what to change, exit code 2, no traceback;
SIGINT and SIGTERM before serving stop the worker cleanly (exit 0, no traceback).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.broker import free_port
from tools.launcher import ROOT
from worker.app import _run_until_complete
from worker import lifecycle
from worker.lifecycle import StartupSignals, StartupStop, stop_on_signals

# Few shapes: the start-up tests need a worker that reaches the broker wait soon.
SMALL = ("--batch-buckets", "1", "--max-candidates", "8", "--checkpoint",
         str(ROOT / "checkpoints" / "demo.npz"))


def run_worker(*argv: str, env: dict[str, str] | None = None,
               timeout_s: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "worker.app", *argv], cwd=ROOT,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout_s)


def assert_one_line_user_error(run: subprocess.CompletedProcess, *expected: str) -> str:
    """Exit 2, no traceback, and the last stderr line is the error naming `expected`."""
    assert run.returncode == 2, run.stderr[-3000:]
    assert "Traceback" not in run.stderr + run.stdout, run.stderr[-3000:]
    line = run.stderr.strip().splitlines()[-1]
    assert line.startswith("worker: error: "), run.stderr[-3000:]
    for text in expected:
        assert text in line, line
    return line


@pytest.mark.slow  # a worker process per case
def test_help_lists_settings_and_exits_0_before_anything_starts():
    unreachable = f"kafka://127.0.0.1:{free_port()}"
    run = run_worker("--help", "--broker", unreachable)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "--max-batch-size INT" in run.stdout and "RANKER_MAX_BATCH_SIZE" in run.stdout
    assert "settings:" not in run.stderr  # the worker itself never started
    assert "not reachable" not in run.stderr


@pytest.mark.parametrize("argv, env, expected", [
    (("--max-batchsize", "32"), {}, ("--max-batchsize", "did you mean --max-batch-size")),
    ((), {"RANKER_LOG_LEVEL": "verbose"}, ("RANKER_LOG_LEVEL", "--log-level", "'verbose'")),
    ((), {"RANKER_MAX_BATCH_SIZE": "lots"}, ("RANKER_MAX_BATCH_SIZE", "expected an integer")),
], ids=["unknown_flag", "log_level", "bad_value"])
@pytest.mark.slow  # a worker process per case
def test_settings_errors_are_one_line_and_exit_2(argv, env, expected):
    assert_one_line_user_error(run_worker(*argv, env=env), *expected)


@pytest.mark.parametrize("content", [b"\x00garb", b"PK\x03\x04 and then nothing"],
                         ids=["five_garbage_bytes", "truncated"])
@pytest.mark.slow  # a worker process per case
def test_a_damaged_checkpoint_is_one_line_naming_the_path(tmp_path, content):
    path = tmp_path / "model.npz"
    path.write_bytes(content)
    line = assert_one_line_user_error(
        run_worker("--checkpoint", str(path), "--metrics-port", "0"),
        str(path), "RANKER_CHECKPOINT / --checkpoint")
    assert "pickle" not in line


@pytest.mark.slow  # a worker process per case
def test_a_metrics_port_in_use_is_one_line_naming_the_port_and_the_setting():
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = run_worker("--metrics-port", str(port))
    assert_one_line_user_error(run, f"port {port}", "already in use",
                               "RANKER_METRICS_PORT / --metrics-port")


@contextlib.contextmanager
def _sigint_not_ignored() -> Iterator[None]:
    """Children start with SIGINT at its default, as from a terminal. A shell starts
    background jobs with SIGINT ignored and an ignored signal stays ignored across exec, so
    under such a parent the worker would drop a Ctrl-C sent before its own handler is set
    (and wait for the broker until the test times out). A handled signal is reset on exec."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _start_waiting_for_broker(log_path: Path) -> subprocess.Popen:
    with log_path.open("wb") as log, _sigint_not_ignored():
        return subprocess.Popen(
            [sys.executable, "-m", "worker.app", *SMALL, "--metrics-port", "0",
             "--broker", f"kafka://127.0.0.1:{free_port()}"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "RANKER_JAX_CACHE_DIR": str(ROOT / ".cache" / "jax")})


def _wait_for_line(proc: subprocess.Popen, log_path: Path, text: str) -> None:
    while text not in log_path.read_text(errors="replace"):
        assert proc.poll() is None, log_path.read_text(errors="replace")[-3000:]
        try:
            proc.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            pass


def _stop(tmp_path: Path, signum: int, after_line: str | None) -> tuple[int, str]:
    """Starts a worker with no broker, signals it once `after_line` is logged (None: at
    once), returns (exit code, output)."""
    log_path = tmp_path / "worker.log"
    proc = _start_waiting_for_broker(log_path)
    try:
        if after_line is not None:
            _wait_for_line(proc, log_path, after_line)
        proc.send_signal(signum)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, log_path.read_text(errors="replace")


@pytest.mark.timeout(180)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("stage, line", [("starting", "settings:"),
                                         ("waiting_for_broker", "not reachable")])
@pytest.mark.slow  # a worker process per case
def test_a_stop_before_serving_is_clean(tmp_path, signum, stage, line):
    """Ctrl-C (or SIGTERM) while the model loads and compiles, or while the worker waits for
    a broker that is not there: exit 0, one log line saying so, no traceback."""
    code, output = _stop(tmp_path, signum, line)
    assert code == 0, output[-3000:]
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output[-3000:]
    assert f"stopped by {signal.Signals(signum).name} before serving" in output
    assert "was destroyed but it is pending" not in output  # the broker wait was cancelled


@pytest.fixture
def watchdogs(monkeypatch) -> list[int]:
    """The signals start-up armed its watchdog for; none armed in this process (its
    `os._exit` would end the test run)."""
    armed: list[int] = []
    monkeypatch.setattr(lifecycle, "_start_watchdog", lambda _exit, signum: armed.append(signum))
    return armed


def test_a_start_up_signal_is_recorded_and_raised_at_the_next_check(watchdogs):
    """The handler itself never raises: raised inside a library, a stop was once swallowed
    (JAX's gc callback) and once left a JAX timer thread running for a minute."""
    reached_after_the_signal = False
    with pytest.raises(StartupStop, match="SIGTERM"):
        with stop_on_signals() as signals:
            os.kill(os.getpid(), signal.SIGTERM)
            reached_after_the_signal = True
            signals.check()
    assert reached_after_the_signal
    assert watchdogs == [signal.SIGTERM]


def test_a_signal_after_the_last_check_still_stops_on_leaving_the_block(watchdogs):
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(StartupStop, match="SIGINT"):
        with stop_on_signals():
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_a_start_up_step_that_never_checks_is_ended_by_the_watchdog():
    """A long compile: exit 0 with the stop line, `STOP_DEADLINE_S` after the signal."""
    script = ("import logging, os, signal, time\n"
              "from worker import lifecycle\n"
              "logging.basicConfig(level='INFO')\n"
              "lifecycle.STOP_DEADLINE_S = 0.5\n"
              "with lifecycle.stop_on_signals():\n"
              "    os.kill(os.getpid(), signal.SIGTERM)\n"
              "    time.sleep(60)\n")
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                         text=True, timeout=30)  # well before the step's 60 s
    assert run.returncode == 0, run.stderr
    assert "stopped by SIGTERM (start-up did not reach a stop point within 0.5 s) before " \
           "serving" in run.stderr, run.stderr


def test_the_broker_wait_ends_within_moments_of_a_start_up_signal():
    signals = StartupSignals()
    cancelled = []

    async def wait_for_a_broker() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    loop = asyncio.new_event_loop()
    try:
        loop.call_later(0.1, setattr, signals, "received", signal.SIGTERM)
        with pytest.raises(StartupStop, match="SIGTERM"):
            _run_until_complete(loop, wait_for_a_broker(), signals)
        assert cancelled == [True]
        assert not asyncio.all_tasks(loop)  # nothing left pending to warn about
    finally:
        loop.close()


@pytest.mark.timeout(60)
@pytest.mark.slow  # a worker process per case
def test_ctrl_c_while_importing_ends_the_process_without_a_traceback(tmp_path):
    """Before start-up installs its handlers, Ctrl-C ends the process as SIGTERM would (killed
    by the signal) or, if start-up got that far, stops it (exit 0); never a traceback."""
    code, output = _stop(tmp_path, signal.SIGINT, None)
    assert code in (0, -signal.SIGINT), output[-3000:]
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output[-3000:]


@pytest.mark.timeout(180)
def test_ctrl_c_while_serving_drains_and_exits_0_without_a_traceback(kafka):
    from tests.worker_harness import WorkerProcess, WorkerTopics
    from tools.producer import generate_events

    topics = WorkerTopics.create(kafka)
    worker = WorkerProcess(kafka.bootstrap, topics).start()
    try:
        worker.wait_ready()
        # Serving: one request answered (ready can come a moment before Faust has resumed the
        # stream partitions after its table recovery).
        event = next(generate_events(seed=3, count=1))
        kafka.produce(topics.requests, [(event.key, event.encode())])
        assert len(kafka.consume(topics.results, 1, timeout_s=60)) == 1, worker.log()
        worker.proc.send_signal(signal.SIGINT)
        code = worker.wait(timeout_s=30)
        output = worker.log(chars=200_000)
    finally:
        worker.close()
    assert code == 0, output[-3000:]
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output[-3000:]


def _taken_port() -> socket.socket:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    return taken


@pytest.mark.parametrize("how", ["flag", "variable"])
def test_demo_refuses_a_taken_metrics_port_in_one_line_before_starting_anything(how):
    with _taken_port() as taken:
        port = taken.getsockname()[1]
        argv = ["--metrics-port", str(port)] if how == "flag" else []
        env = {**os.environ, "RANKER_METRICS_PORT": str(port)} if how == "variable" else None
        run = subprocess.run([sys.executable, "-m", "tools.demo", *argv], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run.stdout + run.stderr
    assert run.stderr.startswith(f"demo: error: port {port} is already in use; pick another "
                                 "with --metrics-port (make demo METRICS_PORT=")
    assert run.stderr.count("\n") == 1 and "embedded Kafka broker" not in run.stdout


def test_broker_refuses_a_taken_port_in_one_line():
    with _taken_port() as taken:
        port = taken.getsockname()[1]
        run = subprocess.run([sys.executable, "-m", "tools.broker", "--port", str(port)],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run.stdout + run.stderr
    assert run.stderr == (f"broker: error: port {port} on 127.0.0.1 is already in use; pick "
                          "another with --port (make broker BROKER_PORT=...)\n")


@pytest.mark.slow  # a worker process per case
def test_buckets_the_model_cannot_run_with_name_the_settings():
    assert_one_line_user_error(
        run_worker("--batch-buckets", "8,1", "--metrics-port", "0"),
        "batch_sizes must be distinct ascending", "RANKER_BATCH_BUCKETS / --batch-buckets")


@pytest.mark.slow  # a worker process per case
def test_help_and_setting_errors_never_show_a_secret(tmp_path):
    """A password in the environment or in a secret file appears neither in --help nor in
    the one-line error of a bad setting."""
    secret = "pa55-" + os.urandom(6).hex()
    (tmp_path / "password").write_text(secret)
    shown = run_worker("--help", env={"RANKER_SASL_PASSWORD": secret})
    assert shown.returncode == 0 and "--sasl-password-file" in shown.stdout
    refused = run_worker("--max-batch-size", "0",
                         env={"RANKER_SASL_PASSWORD_FILE": str(tmp_path / "password")})
    assert_one_line_user_error(refused, "max_batch_size must be >= 1")
    assert secret not in shown.stdout + shown.stderr + refused.stdout + refused.stderr

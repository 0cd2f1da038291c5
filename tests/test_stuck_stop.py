"""A stop that arrives while one native operation runs for minutes (``benchmark.signals.StuckWatch``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

from tests.test_cli import ROOT

# The trainer, stuck: one attention over 100,000 tokens runs for minutes in one native call, during which Python
# runs no signal handler. A child forked inside stands for a loader worker: it receives every Ctrl-C too.
STUCK = textwrap.dedent("""
    import os, sys, time
    import torch, torch.nn.functional as F
    from benchmark.signals import stop_on_signals
    q = torch.randn(1, 1, 100_000, 64)
    with stop_on_signals():
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        print("ready", flush=True)
        while True:
            F.scaled_dot_product_attention(q, q, q)
""")

# A main thread that is not stuck: it runs the handler of every Ctrl-C at once (held, to raise at the end).
RESPONSIVE = textwrap.dedent("""
    import time
    from benchmark.signals import hold_signals, stop_on_signals
    try:
        with stop_on_signals(), hold_signals():
            print("ready", flush=True)
            end = time.monotonic() + 4
            while time.monotonic() < end:
                time.sleep(0.01)
    except KeyboardInterrupt:
        print("stopped")
""")

# A block holding stops that a second stop may break (a checkpoint being written), alone or around one that may not.
SECOND_BREAKS = textwrap.dedent("""
    import contextlib, os, signal, sys, time
    from benchmark.signals import hold_signals, stop_on_signals
    try:
        with stop_on_signals(), hold_signals(second_stop_breaks=True):
            with hold_signals() if sys.argv[1] == "nested" else contextlib.nullcontext():
                for press in ("first", "second"):
                    os.kill(os.getpid(), signal.SIGINT)
                    time.sleep(0.1)
                    print(f"after the {press}", flush=True)
    except KeyboardInterrupt:
        print("stopped")
""")


def _started(code: str, tmp_path) -> tuple[subprocess.Popen, object]:
    err = (tmp_path / "stderr").open("w+")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True,
                            start_new_session=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc, err


def _lines(err) -> list[str]:
    err.seek(0)
    return [ln for ln in err.read().splitlines() if ln.strip()]


def test_a_second_ctrl_c_ends_a_command_stuck_in_one_native_operation(tmp_path):
    """The first Ctrl-C (to the whole process group, worker included) cannot be handled until the operation
    returns: after a moment it is said, and that a second one stops at once; the second ends the process with
    130 and one line, without a traceback."""
    proc, err = _started(STUCK, tmp_path)
    try:
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)
        deadline = time.monotonic() + 30  # the notice is due 2 s after the stop: waited for, on a loaded machine too
        while not _lines(err) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # and nothing else is said, nor does the process end
        assert proc.poll() is None, _lines(err)  # one Ctrl-C (the worker's own included) does not end it
        (notice,) = _lines(err)
        assert notice.startswith("interrupted: waiting for an operation that cannot be interrupted to return (")
        assert notice.endswith("press Ctrl-C again to stop at once, keeping every file already written")
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=20) == 130
        assert _lines(err) == [notice, "stopped (interrupted) inside an operation that could not be interrupted; "
                               "every file already written is kept: rerun the same command to resume from the last "
                               "checkpoint"]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the stand-in worker
        proc.wait()


def test_sigterm_twice_ends_a_stuck_command_with_143(tmp_path):
    proc, err = _started(STUCK, tmp_path)
    try:
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        time.sleep(1.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 143
        assert _lines(err)[-1].startswith("stopped (terminated) inside an operation that could not be interrupted")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_ctrl_c_twice_in_quick_succession_is_left_to_a_main_thread_that_handles_it(tmp_path):
    """Two presses a moment apart reach a command that is not stuck: its handlers run, nothing is said for it
    and it is not ended behind their back."""
    proc, err = _started(RESPONSIVE, tmp_path)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, _lines(err)
    assert out.split() == ["stopped"]
    assert _lines(err) == []


def test_a_second_stop_breaks_a_hold_that_allows_it_and_no_other():
    """A checkpoint being written holds a stop until it is on disk, but a second Ctrl-C breaks off the write (an
    atomic one: the previous checkpoint stays); a hold that may not be broken, inside it, holds both."""
    def run(how: str) -> list[str]:
        r = subprocess.run([sys.executable, "-c", SECOND_BREAKS, how], capture_output=True, text=True, cwd=ROOT,
                           timeout=60)
        assert r.returncode == 0 and r.stderr == "", r.stderr
        return r.stdout.split("\n")[:-1]

    assert run("alone") == ["after the first", "stopped"]
    assert run("nested") == ["after the first", "after the second", "stopped"]


def test_leaving_stop_on_signals_puts_the_wakeup_fd_back_and_ends_the_watch():
    from benchmark.signals import stop_on_signals

    previous = signal.set_wakeup_fd(-1)
    assert previous == -1, "another wakeup fd was set before this test"
    with stop_on_signals():
        watched = signal.set_wakeup_fd(-1)
        assert watched != -1
        signal.set_wakeup_fd(watched)
    assert signal.set_wakeup_fd(-1) == -1
    assert not [t for t in threading.enumerate() if t.name == "stuck-stop-watch"]


def test_a_forked_child_does_not_feed_the_watch_of_its_parent():
    """Loader workers are forked with the trainer's handlers: their wakeup fd is taken away in the child, so a
    Ctrl-C they receive is not counted as a second one to the trainer."""
    from benchmark.signals import stop_on_signals

    with stop_on_signals():
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.write(write, b"%d" % signal.set_wakeup_fd(-1))
            os._exit(0)
        os.waitpid(pid, 0)
        assert os.read(read, 16) == b"-1"
        os.close(read)
        os.close(write)

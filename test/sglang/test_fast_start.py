"""Fork-server starts on a CPU machine (``sglang_dcp.sglang.fast_start``): the launcher switches
to ``forkserver`` right after SGLang forces ``spawn``, a child forked by that server (the DP
controller) has its own children (the schedulers) forked by the same server, not by a second
one that would import SGLang again, and a child's SIGQUIT to its parent reaches the launcher."""

import subprocess
import sys
import textwrap

import pytest

from sglang_dcp.sglang import fast_start

# Run as a file (a forked child imports the main module by path). A stand-in engine module
# forces spawn as SGLang's does; the preload is a cheap module instead of SGLang.
SCRIPT = textwrap.dedent("""
    import multiprocessing as mp, os, sys, types

    from sglang_dcp.sglang import fast_start

    def grandchild(q):
        q.put(("scheduler", os.getpid(), os.getppid(), "json" in sys.modules))
        # a failing scheduler signals its parent, as SGLang's do; it must reach the launcher
        import psutil, signal
        psutil.Process().parent().send_signal(signal.SIGQUIT)

    def child(q):  # the "DP controller"
        fast_start.enable_in_child()
        from multiprocessing import forkserver
        p = mp.Process(target=grandchild, args=(q,))
        p.start()
        p.join(60)
        q.put(("controller", os.getpid(), os.getppid(), forkserver._forkserver._forkserver_pid))

    if __name__ == "__main__":
        engine = types.ModuleType("fake_engine")
        engine._set_envs_and_config = lambda args: mp.set_start_method("spawn", force=True)
        sys.modules["fake_engine"] = engine
        fast_start._ENGINE = "fake_engine"
        fast_start.PRELOAD = ["sglang_dcp.sglang.preload", "json"]
        import signal, threading
        quit_seen = threading.Event()
        signal.signal(signal.SIGQUIT, lambda *a: quit_seen.set())
        fast_start.enable_in_launcher(cuda=False)
        fast_start.enable_in_launcher(cuda=False)  # idempotent: wrapped once
        engine._set_envs_and_config(None)
        assert mp.get_start_method() == "forkserver", mp.get_start_method()
        q = mp.get_context().Queue()
        p = mp.Process(target=child, args=(q,))
        p.start()
        got = dict((k, v) for k, *v in (q.get(timeout=60), q.get(timeout=60)))
        p.join(60)
        from multiprocessing import forkserver
        server = forkserver._forkserver._forkserver_pid
        ctl_pid, ctl_parent, ctl_own_server = got["controller"]
        sch_pid, sch_parent, preloaded = got["scheduler"]
        assert ctl_parent == server and sch_parent == server, (server, got)
        assert ctl_own_server is None and preloaded, got
        assert quit_seen.wait(30), "the scheduler's SIGQUIT did not reach the launcher"
        assert os.kill(server, 0) is None  # the fork server is still there
        print("ok")
""")


def test_the_controllers_children_come_from_the_launchers_fork_server(tmp_path):
    script = tmp_path / "tree.py"
    script.write_text(SCRIPT)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr


def test_spawn_stays_with_cuda_or_when_asked(monkeypatch):
    monkeypatch.delenv(fast_start.ENV_VAR, raising=False)
    assert fast_start.wanted(cuda=False) and not fast_start.wanted(cuda=True)
    monkeypatch.setenv(fast_start.ENV_VAR, "spawn")
    assert not fast_start.wanted(cuda=False)
    monkeypatch.setenv(fast_start.ENV_VAR, "fork")
    with pytest.raises(ValueError, match="SGLANG_DCP_START_METHOD='fork': use forkserver or spawn"):
        fast_start.wanted(cuda=False)


def test_a_bad_start_method_is_a_one_line_launch_error(monkeypatch, capsys):
    """Checked before SGLang starts anything; named as the user typed it."""
    from sglang_dcp.sglang import launch

    monkeypatch.setenv(fast_start.ENV_VAR, "threads")
    monkeypatch.setattr(launch, "_has_cuda", lambda: False)
    assert launch.main(["--model-path", "/nonexistent-model", "--tp-size", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["python -m sglang_dcp.launch_server: error: "
                   "SGLANG_DCP_START_METHOD='threads': use forkserver or spawn"], err


def test_the_ranks_preload_names_modules_of_the_pinned_sglang():
    """``exchange.spawn.RANK_PRELOAD``: the fork server skips a name that does not import, which
    would silently bring back a ~12 s import in every rank of every self-check."""
    import importlib.util

    from sglang_dcp.exchange.spawn import RANK_PRELOAD

    assert all(importlib.util.find_spec(name) is not None for name in RANK_PRELOAD)

"""Tests of the Python package, over loopback UDP (pytest core/python/tests)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading
import time
from pathlib import Path

import pytest

import rgtp

ZERO_KEY = "00" * 31 + "01"


@pytest.fixture(autouse=True)
def private_config(tmp_path, monkeypatch):
    """Keys, known exposers and sealed chunks stay in the test's directory."""
    monkeypatch.setenv("RGTP_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("RGTP_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def data_file(tmp_path) -> Path:
    p = tmp_path / "data.bin"
    # Several chunks of 16 KiB and a partial one.
    p.write_bytes(os.urandom(5 * 1024 * 1024 + 1234))
    return p


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


JSON_FIELDS = {
    "exit_code",
    "bytes",
    "seconds",
    "throughput",
    "datagrams_received",
    "bytes_received",
    "datagrams_sent",
    "requests",
    "rerequested_fragments",
    "duplicate_fragments",
    "spurious_losses",
    "bad_chunks",
    "handshakes",
    "resumed",
    "missing_bytes_at_start",
    "cipher",
    "output",
    "repair_fragments",
    "chunks_repaired",
    "surplus_repair_fragments",
    "sources_dropped",
    "sources",
    "share_port",
    "share_bytes_sent",
    "share_handshakes",
    "share_missing_sent",
    "live",
    "live_start",
}


def test_pull_is_byte_exact_and_reports_the_json_fields(data_file, tmp_path):
    with rgtp.expose(data_file) as ex:
        assert ex.url.startswith(f"rgtp://127.0.0.1:{ex.port}/data.bin?key={ex.key}")
        assert len(ex.root) == 64 and len(ex.key) == 64
        assert ex.size == data_file.stat().st_size
        assert ex.path == data_file
        out = tmp_path / "copy.bin"
        stats = rgtp.pull(ex.url, out)
    assert digest(out) == digest(data_file)
    assert set(stats) == JSON_FIELDS
    assert stats["exit_code"] == 0
    assert stats["bytes"] == data_file.stat().st_size
    assert stats["missing_bytes_at_start"] == stats["bytes"]
    assert stats["resumed"] is False
    assert stats["output"] == str(out)
    assert stats["datagrams_received"] > 0 and stats["handshakes"] >= 1
    assert stats["cipher"] in ("aes-256-gcm", "chacha20-poly1305")
    # No part or state file left behind.
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("copy")) == ["copy.bin"]


def test_two_sources_forced_repair_and_sharing(data_file, tmp_path):
    # rgtp-pull URL --from B --fec 4:2 --share: both sources serve, repair fragments
    # arrive, and the pull shares on a port it reports.
    seen = []
    out = tmp_path / "copy.bin"
    with rgtp.expose(data_file) as a, rgtp.expose(data_file) as b:
        stats = rgtp.pull(
            a.url, out, seen.append, sources=[f"127.0.0.1:{b.port}"], fec="4:2", share=True
        )
        with pytest.raises(rgtp.UsageError):
            rgtp.pull(a.url, tmp_path / "o", fec="4")
    assert digest(out) == digest(data_file)
    assert set(stats) == JSON_FIELDS
    assert [s["addr"] for s in stats["sources"]] == [
        f"127.0.0.1:{a.port}",
        f"127.0.0.1:{b.port}",
    ]
    assert sum(s["bytes"] for s in stats["sources"]) == stats["bytes"]
    assert stats["sources_dropped"] == 0
    assert stats["repair_fragments"] + stats["surplus_repair_fragments"] > 0
    port = stats["share_port"]
    assert port and any(
        e["kind"] == "sharing" and e["addr"].endswith(f":{port}") for e in seen
    )


def test_root_is_the_b3sum_of_the_file_when_b3sum_is_present(data_file):
    import shutil
    import subprocess

    if shutil.which("b3sum") is None:
        pytest.skip("b3sum not installed")
    want = subprocess.run(["b3sum", "--no-names", str(data_file)], capture_output=True, text=True)
    with rgtp.expose(data_file) as ex:
        assert ex.root == want.stdout.strip()


def test_progress_is_called_while_waiting_then_the_pull_finishes(data_file, tmp_path):
    # The exposer starts 0.8 s after the pull, on the port and with the key the URL
    # names: the pull reports "waiting" meanwhile, then completes.
    port = free_udp_port()
    key = tmp_path / "exposer.key"
    with rgtp.expose(data_file, port=port, key_path=key) as ex:
        url = ex.url
    updates = []
    result = {}

    def run():
        try:
            result["stats"] = rgtp.pull(url, tmp_path / "copy.bin", progress=updates.append)
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            result["error"] = e

    t = threading.Thread(target=run)
    t.start()
    time.sleep(0.8)
    with rgtp.expose(data_file, port=port, key_path=key) as ex2:
        assert ex2.url == url
        t.join(20)
    assert not t.is_alive()
    assert "error" not in result, result.get("error")
    assert digest(tmp_path / "copy.bin") == digest(data_file)
    waiting = [u for u in updates if u["kind"] == "waiting"]
    assert len(waiting) >= 2, updates
    assert all(isinstance(u["elapsed"], float) for u in waiting)
    assert waiting == sorted(waiting, key=lambda u: u["elapsed"])
    for u in updates:
        if u["kind"] == "progress":
            assert 0 <= u["stored"] <= u["total"] == data_file.stat().st_size


def test_a_raising_progress_callback_cancels_the_pull(tmp_path):
    class Stop(Exception):
        pass

    calls = []

    def progress(u):
        calls.append(u)
        raise Stop("enough")

    t0 = time.monotonic()
    url = f"rgtp://127.0.0.1:{free_udp_port()}/x?key={ZERO_KEY}"
    with pytest.raises(Stop):
        rgtp.pull(url, tmp_path / "x", progress=progress, connect_timeout=10)
    assert len(calls) == 1
    # Cancelled at the first update (~0.25 s), not after the 10 s connect timeout.
    assert time.monotonic() - t0 < 3


def test_cancel_token_from_another_thread(tmp_path):
    token = rgtp.CancelToken()
    url = f"rgtp://127.0.0.1:{free_udp_port()}/x?key={ZERO_KEY}"
    threading.Timer(0.3, token.cancel).start()
    t0 = time.monotonic()
    with pytest.raises(rgtp.Cancelled) as e:
        rgtp.pull(url, tmp_path / "x", cancel=token, connect_timeout=10)
    assert e.value.exit_code == 130
    assert token.cancelled
    assert time.monotonic() - t0 < 3


def test_wrong_key_raises_key_mismatch(data_file, tmp_path):
    with rgtp.expose(data_file) as ex:
        with pytest.raises(rgtp.KeyMismatch) as e:
            rgtp.pull(ex.url, tmp_path / "copy.bin", key=ZERO_KEY)
        # The same through the URL.
        bad = ex.url.replace(f"key={ex.key}", f"key={ZERO_KEY}")
        with pytest.raises(rgtp.KeyMismatch):
            rgtp.pull(bad, tmp_path / "copy.bin")
    assert e.value.exit_code == 6
    assert isinstance(e.value, rgtp.RgtpError)
    assert ex.key in str(e.value)


def test_unreachable_exposer_raises_within_the_connect_timeout(tmp_path):
    url = f"rgtp://127.0.0.1:{free_udp_port()}/x?key={ZERO_KEY}"
    t0 = time.monotonic()
    with pytest.raises(rgtp.Unreachable) as e:
        rgtp.pull(url, tmp_path / "x", connect_timeout=1.0)
    assert e.value.exit_code == 5
    assert time.monotonic() - t0 < 5


def test_unknown_name_raises_not_found(data_file, tmp_path):
    with rgtp.expose(data_file) as ex:
        url = f"rgtp://127.0.0.1:{ex.port}/other.bin?key={ex.key}"
        with pytest.raises(rgtp.NotFound) as e:
            rgtp.pull(url, tmp_path / "o")
    assert e.value.exit_code == 7


def test_bad_input_raises_usage_error(tmp_path):
    with pytest.raises(rgtp.UsageError) as e:
        rgtp.pull("http://example.org/x", tmp_path / "o")
    assert e.value.exit_code == 2 and "rgtp://" in str(e.value)
    assert isinstance(e.value, ValueError)
    with pytest.raises(rgtp.UsageError):
        rgtp.pull("rgtp://127.0.0.1:1/x", tmp_path / "o", key="not hex")
    with pytest.raises(rgtp.UsageError):
        rgtp.expose(tmp_path, bind="not an address")


def test_expose_of_a_missing_file_raises_file_error(tmp_path):
    with pytest.raises(rgtp.FileError) as e:
        rgtp.expose(tmp_path / "missing.bin")
    assert e.value.exit_code == 3
    assert "missing.bin" in str(e.value)


def test_a_busy_port_raises_bind_error(data_file):
    with rgtp.expose(data_file) as ex:
        with pytest.raises(rgtp.BindError) as e:
            rgtp.expose(data_file, port=ex.port)
    assert e.value.exit_code == 10


def test_context_manager_closes_and_close_is_idempotent(data_file, tmp_path):
    with rgtp.expose(data_file) as ex:
        assert ex.serving
        assert "rgtp://" in repr(ex)
    assert not ex.serving
    ex.close()
    assert "closed" in repr(ex)
    with pytest.raises(rgtp.Unreachable):
        rgtp.pull(ex.url, tmp_path / "o", connect_timeout=1.0)
    # An exception inside the block propagates, and the exposure is closed.
    with pytest.raises(KeyError):
        with rgtp.expose(data_file) as ex2:
            raise KeyError("boom")
    assert not ex2.serving


def test_pull_async(data_file, tmp_path):
    async def main():
        with rgtp.expose(data_file) as ex:
            outs = [tmp_path / f"a{i}.bin" for i in range(2)]
            # Two pulls at once, and the loop stays responsive meanwhile.
            ticks = 0

            async def ticker():
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0.001)

            tick = asyncio.ensure_future(ticker())
            stats = await asyncio.gather(*(rgtp.pull_async(ex.url, o) for o in outs))
            tick.cancel()
            return outs, stats, ticks

    outs, stats, ticks = asyncio.run(main())
    for o, s in zip(outs, stats):
        assert digest(o) == digest(data_file)
        assert s["bytes"] == data_file.stat().st_size
    assert ticks >= 1


def test_cancelling_an_async_pull_stops_it(tmp_path):
    url = f"rgtp://127.0.0.1:{free_udp_port()}/x?key={ZERO_KEY}"

    async def main():
        task = asyncio.ensure_future(rgtp.pull_async(url, tmp_path / "x", connect_timeout=10))
        await asyncio.sleep(0.3)
        task.cancel()
        t0 = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - t0

    assert asyncio.run(main()) < 2


def test_the_gil_is_released_during_a_pull(tmp_path):
    # Another Python thread keeps running while a pull blocks: it never waits long
    # for the GIL (the pull takes it back only ~4 times a second, briefly).
    stamps = []
    stop = threading.Event()

    def busy():
        while not stop.is_set():
            stamps.append(time.monotonic())
            time.sleep(0.001)

    t = threading.Thread(target=busy)
    t.start()
    url = f"rgtp://127.0.0.1:{free_udp_port()}/x?key={ZERO_KEY}"
    t0 = time.monotonic()
    with pytest.raises(rgtp.Unreachable):
        rgtp.pull(url, tmp_path / "x", connect_timeout=1.5)
    t1 = time.monotonic()
    stop.set()
    t.join()
    during = [s for s in stamps if t0 <= s <= t1]
    assert len(during) > 100, len(during)
    gaps = [b - a for a, b in zip(during, during[1:])]
    # Held through the pull, the GIL would stop this thread for the whole 1.5 s;
    # released, its longest wait is a scheduling hiccup (0.5 s: room for a loaded CI).
    assert max(gaps) < 0.5, max(gaps)


def test_exceptions_have_one_class_per_exit_code():
    from rgtp._errors import error_for

    seen = {}
    for code in [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15, 16, 130]:
        e = error_for(code, "m")
        assert e.exit_code == code and str(e) == "m"
        assert type(e) is not rgtp.RgtpError
        seen[type(e)] = code
    assert len(seen) == 16
    odd = error_for(99, "x")
    assert type(odd) is rgtp.RgtpError and odd.exit_code == 99
    assert rgtp.__version__


def test_ctrl_c_stops_a_pull_on_the_main_thread(tmp_path):
    import signal

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach only the main thread")
    url = f"rgtp://127.0.0.1:{free_udp_port()}/x?key={ZERO_KEY}"
    # Python's own Ctrl-C handler, whatever was inherited: a test run started as a
    # background job inherits SIGINT ignored, and Python then installs none.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            rgtp.pull(url, tmp_path / "x", connect_timeout=10)
        assert time.monotonic() - t0 < 3
    finally:
        signal.signal(signal.SIGINT, previous)

#!/usr/bin/env python3
"""Socket patterns real programs use, run under librgtp_shim.so by shim_programs.rs.

server MODE PORT / client MODE PORT, MODE one of: blocking, select, poll, asyncio,
threads, daemon, refused. Each client sends a payload derived from its index, the server echoes
it back reversed, the client checks the answer and prints OK. Every wait is bounded.

daemon: the server listens, forks two children and exits at once (as daemonizing
servers do, but with two heirs of one listener); each child writes its pid to
daemon-PID.pid in the working directory and serves until idle for 60 s. The client
makes DAEMON_CLIENTS connections one after the other.

refused (client only; nothing listens): a non-blocking connect says EINPROGRESS, then
polls writable with SO_ERROR ECONNREFUSED, as TCP does.
"""
import asyncio, errno, hashlib, os, select, socket, sys, threading

HOST = "127.0.0.1"
N_THREADS = 8
DAEMON_CLIENTS = 8


def payload(i, n=256 * 1024):
    seed = hashlib.sha256(str(i).encode()).digest()
    out = bytearray()
    while len(out) < n:
        seed = hashlib.sha256(seed).digest()
        out += seed
    return bytes(out[:n])


def recv_all(sock):
    chunks = []
    while True:
        b = sock.recv(65536)
        if not b:
            return b"".join(chunks)
        chunks.append(b)


def handle(conn):
    conn.settimeout(60)
    data = recv_all(conn)  # client half-closes after sending
    conn.sendall(data[::-1])
    conn.close()


def serve(port, count):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((HOST, port))
    s.listen(64)
    s.settimeout(90)
    threads = []
    for _ in range(count):
        conn, peer = s.accept()
        assert peer[0] == HOST, peer
        t = threading.Thread(target=handle, args=(conn,))
        t.start()
        threads.append(t)
    for t in threads:
        t.join(60)
    print("SERVED", count, flush=True)


def serve_daemon(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((HOST, port))
    s.listen(64)
    for _ in range(2):
        if os.fork() == 0:
            with open(f"daemon-{os.getpid()}.pid", "w") as f:
                f.write(str(os.getpid()))
            s.settimeout(60)
            try:
                while True:
                    conn, _ = s.accept()
                    handle(conn)
            except socket.timeout:
                os._exit(0)
    os._exit(0)  # at once: the heirs must take the listener over


def check(i, got):
    want = payload(i)[::-1]
    if got != want:
        raise AssertionError(f"client {i}: got {len(got)} bytes, wrong content")


def client_blocking(port, i=0):
    s = socket.create_connection((HOST, port), timeout=60)
    assert s.getpeername() == (HOST, port), s.getpeername()
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(payload(i))
    s.shutdown(socket.SHUT_WR)
    check(i, recv_all(s))
    s.close()


def nonblocking_connect(port, use_poll):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    err = s.connect_ex((HOST, port))
    assert err == errno.EINPROGRESS, os.strerror(err)
    if use_poll:
        p = select.poll()
        p.register(s, select.POLLOUT)
        assert p.poll(60000), "connect did not complete"
    else:
        _, w, _ = select.select([], [s], [], 60)
        assert w, "connect did not complete"
    assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    return s


def client_refused(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    err = s.connect_ex((HOST, port))
    assert err == errno.EINPROGRESS, os.strerror(err)
    p = select.poll()
    p.register(s, select.POLLOUT)
    assert p.poll(30000), "the failed connect never became writable"
    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    assert err == errno.ECONNREFUSED, os.strerror(err)
    assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0, "SO_ERROR reads once"
    s.close()


def client_nonblocking(port, use_poll):
    s = nonblocking_connect(port, use_poll)
    data = payload(0)
    sent = 0
    got = []
    shut = False
    while True:
        want_w = [s] if not shut else []
        r, w, _ = select.select([s], want_w, [], 60)
        assert r or w, "stalled"
        if w and not shut:
            try:
                sent += s.send(data[sent:sent + 65536])
            except BlockingIOError:
                pass
            if sent == len(data):
                s.shutdown(socket.SHUT_WR)
                shut = True
        if r:
            try:
                b = s.recv(65536)
            except BlockingIOError:
                continue
            if not b:
                break
            got.append(b)
    check(0, b"".join(got))


async def client_asyncio(port):
    r, w = await asyncio.wait_for(asyncio.open_connection(HOST, port), 60)
    w.write(payload(0))
    await w.drain()
    w.write_eof()
    got = await asyncio.wait_for(r.read(), 60)
    check(0, got)
    w.close()


def main():
    role, mode, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    count = N_THREADS if mode == "threads" else 1
    if role == "server" and mode == "daemon":
        serve_daemon(port)
    if role == "server":
        serve(port, count)
        return
    if mode == "blocking":
        client_blocking(port)
    elif mode in ("select", "poll"):
        client_nonblocking(port, mode == "poll")
    elif mode == "asyncio":
        asyncio.run(client_asyncio(port))
    elif mode == "refused":
        client_refused(port)
    elif mode == "daemon":
        for i in range(DAEMON_CLIENTS):
            client_blocking(port, i)
    elif mode == "threads":
        errors = []

        def run(i):
            try:
                client_blocking(port, i)
            except Exception as e:  # reported below; a thread cannot exit the process
                errors.append(f"{i}: {e!r}")

        ts = [threading.Thread(target=run, args=(i,)) for i in range(count)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(90)
        if errors or any(t.is_alive() for t in ts):
            sys.exit("threads failed: " + "; ".join(errors or ["timeout"]))
    print("OK", flush=True)


if __name__ == "__main__":
    main()

//! Unmodified TCP programs over RGTP through librgtp_shim.so: curl, wget, nginx,
//! python, nc and socat, both ends under the shim.
//!
//! Proof that bytes crossed UDP and not TCP: in strict mode (RGTP_FALLBACK=0) the
//! server has no TCP listener on the port at all (checked in /proc/net/tcp*), a plain
//! client without the shim is refused, and the shim-run client still gets every byte
//! (checked with b3sum). The fallback tests check the opposite mixes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use rgtp_e2e::{
    b3sum, free_port, last_lines, need, shim, shim_log, shim_settings, shimmed, tcp_listening,
    udp_bound, wait_until, write_random_file, Proc, TestDir,
};

fn plain(program: &str) -> Command {
    Command::new(program)
}

/// Runs a client to completion (bounded) and asserts it succeeded.
fn run_ok(t: &TestDir, cmd: Command, what: &str) -> String {
    let f = Proc::spawn(cmd, what, t.path(), false).finish(Duration::from_secs(120));
    assert!(
        f.status.success(),
        "{what} failed: {}\n--- shim log ---\n{}",
        f.describe(),
        last_lines(&shim_log(t), 40)
    );
    f.stdout
}

/// A `www` directory in the test's directory holding `name`: `size` random bytes (from
/// `seed`). Returns the directory.
fn www_with(t: &TestDir, name: &str, size: u64, seed: &str) -> PathBuf {
    let www = t.join("www");
    fs::create_dir_all(&www).unwrap();
    write_random_file(&www.join(name), size, seed);
    www
}

/// `curl` (`c`: under the shim or not) set to GET http://127.0.0.1:`port`/`name` into
/// `out`, giving up after `max_time` seconds.
fn curl_get(mut c: Command, max_time: u32, port: u16, name: &str, out: &Path) -> Command {
    c.args(["-sS", "--max-time", &max_time.to_string(), "-o"])
        .arg(out)
        .arg(format!("http://127.0.0.1:{port}/{name}"));
    c
}

/// Runs a client (bounded) that writes `out`, and checks it succeeded and that `out`
/// holds exactly the bytes of `want`.
fn fetch_ok(t: &TestDir, c: Command, what: &str, out: &Path, want: &Path) {
    run_ok(t, c, what);
    assert_eq!(b3sum(out), b3sum(want), "{what}");
}

/// A strict server on `port` must be reachable over UDP only.
fn assert_udp_only(port: u16) {
    assert!(
        !tcp_listening(port),
        "strict server has a TCP listener on {port}"
    );
    assert!(udp_bound(port), "no UDP socket on {port}");
    assert!(
        std::net::TcpStream::connect_timeout(
            &([127, 0, 0, 1], port).into(),
            Duration::from_secs(2)
        )
        .is_err(),
        "a plain TCP connect to the strict server's port succeeded"
    );
}

fn start_http_server(t: &TestDir, dir: &Path, port: u16, strict: bool, shim_on: bool) -> Proc {
    need("python3");
    let mut c = if shim_on {
        shimmed(t, "python3", port, strict)
    } else {
        plain("python3")
    };
    c.args([
        "-m",
        "http.server",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--directory",
    ])
    .arg(dir);
    let p = Proc::spawn(c, "python-http-server", t.path(), false);
    if shim_on {
        wait_until(
            "the server's RGTP listener",
            Duration::from_secs(20),
            || udp_bound(port),
        );
    } else {
        wait_until("the server's TCP listener", Duration::from_secs(20), || {
            tcp_listening(port)
        });
    }
    p
}

#[test]
fn curl_gets_from_python_http_server_over_rgtp_only() {
    need("curl");
    let t = TestDir::new("shim-curl-py");
    let www = www_with(&t, "big.bin", 24 << 20, "curl-py");
    let port = free_port();
    let _server = start_http_server(&t, &www, port, true, true);
    assert_udp_only(port);
    let out = t.join("big.out");
    let c = curl_get(shimmed(&t, "curl", port, true), 100, port, "big.bin", &out);
    fetch_ok(&t, c, "curl", &out, &www.join("big.bin"));
    assert!(
        shim_log(&t).contains("over RGTP"),
        "the shim log shows no RGTP connect"
    );
    // Without the shim the strict server cannot be reached.
    let mut c = plain("curl");
    c.args(["-sS", "--max-time", "5", "-o", "/dev/null"])
        .arg(format!("http://127.0.0.1:{port}/big.bin"));
    let f = Proc::spawn(c, "plain-curl", t.path(), false).finish(Duration::from_secs(30));
    assert!(
        !f.status.success(),
        "plain curl reached a strict RGTP-only server"
    );
}

#[test]
fn curl_posts_upload_to_python_server() {
    need("curl");
    need("python3");
    let t = TestDir::new("shim-post");
    let port = free_port();
    let sink = t.join("received.bin");
    let script = format!(
        r#"
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        n = int(self.headers['Content-Length'])
        data = b''
        while len(data) < n:
            b = self.rfile.read(n - len(data))
            if not b: break
            data += b
        open({sink:?}, 'wb').write(data)
        self.send_response(200); self.send_header('Content-Length', '2'); self.end_headers()
        self.wfile.write(b'ok')
    def log_message(self, *a): pass
http.server.HTTPServer(('127.0.0.1', {port}), H).handle_request()
"#,
        sink = sink.display().to_string()
    );
    let mut c = shimmed(&t, "python3", port, true);
    c.arg("-c").arg(script);
    let server = Proc::spawn(c, "python-post-server", t.path(), false);
    wait_until(
        "the server's RGTP listener",
        Duration::from_secs(20),
        || udp_bound(port),
    );
    assert_udp_only(port);
    let up = t.join("upload.bin");
    write_random_file(&up, 6 << 20, "post");
    let mut c = shimmed(&t, "curl", port, true);
    c.args(["-sS", "--max-time", "100", "--data-binary"])
        .arg(format!("@{}", up.display()))
        .arg(format!("http://127.0.0.1:{port}/upload"));
    let body = run_ok(&t, c, "curl-post");
    assert_eq!(body, "ok");
    server.finish(Duration::from_secs(30));
    assert_eq!(b3sum(&sink), b3sum(&up));
}

fn nginx_conf(t: &TestDir, www: &Path, port: u16, daemon: bool) -> PathBuf {
    let conf = t.join(if daemon {
        "nginx-daemon.conf"
    } else {
        "nginx-fg.conf"
    });
    let d = t.path().display();
    fs::write(
        &conf,
        format!(
            "daemon {}; master_process on; worker_processes 2; user root;\n\
             pid {d}/nginx-{port}.pid; error_log {d}/nginx-error.log info;\n\
             events {{ worker_connections 256; }}\n\
             http {{ log_format peer '$remote_addr'; access_log {d}/access.log peer; sendfile on;\n\
               client_body_temp_path {d}/tmp-body; proxy_temp_path {d}/tmp-proxy;\n\
               fastcgi_temp_path {d}/tmp-fcgi; uwsgi_temp_path {d}/tmp-uwsgi; scgi_temp_path {d}/tmp-scgi;\n\
               server {{ listen 127.0.0.1:{port}; root {}; }} }}\n",
            if daemon { "on" } else { "off" },
            www.display()
        ),
    )
    .unwrap();
    conf
}

/// Starts nginx under the shim (strict) and waits for its master's pid and its RGTP
/// listener. Returns the launching process and a guard that stops the master.
fn start_nginx(t: &TestDir, www: &Path, port: u16, daemon: bool) -> (Proc, KillOnDrop) {
    let conf = nginx_conf(t, www, port, daemon);
    let mut c = shimmed(t, "nginx", port, true);
    c.arg("-e")
        .arg(t.join("nginx-stderr.log"))
        .arg("-c")
        .arg(&conf);
    let mut launcher = Proc::spawn(c, "nginx", t.path(), false);
    if daemon {
        // The launching process exits at once; the daemon carries the listener.
        let st = launcher
            .wait_for(Duration::from_secs(30))
            .expect("nginx did not daemonize");
        assert!(st.success(), "nginx failed: {}", launcher.stderr());
    }
    let pidfile = t.join(format!("nginx-{port}.pid"));
    wait_until("nginx's pid file", Duration::from_secs(20), || {
        pidfile.is_file()
    });
    let master: i32 = fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let guard = KillOnDrop(master);
    wait_until("nginx's RGTP listener", Duration::from_secs(20), || {
        udp_bound(port)
    });
    (launcher, guard)
}

fn nginx_case(daemon: bool) {
    need("nginx");
    need("curl");
    need("wget");
    let t = TestDir::new(if daemon {
        "shim-nginx-daemon"
    } else {
        "shim-nginx-fg"
    });
    let www = www_with(&t, "f.bin", 16 << 20, "nginx");
    let port = free_port();
    let (_launcher, _guard) = start_nginx(&t, &www, port, daemon);
    assert_udp_only(port);
    for client in ["curl", "wget"] {
        let out = t.join(format!("{client}.out"));
        let mut c = shimmed(&t, client, port, true);
        let c = if client == "curl" {
            curl_get(c, 100, port, "f.bin", &out)
        } else {
            c.args(["-q", "--timeout=100", "--tries=1", "-O"])
                .arg(&out)
                .arg(format!("http://127.0.0.1:{port}/f.bin"));
            c
        };
        fetch_ok(&t, c, client, &out, &www.join("f.bin"));
    }
}

/// Kills a process we started (nginx's daemon, which is not our child) by pid, and
/// waits (bounded) until it is gone: nginx's master stops its workers on SIGTERM, so a
/// SIGKILL that followed too soon would leave them running.
struct KillOnDrop(i32);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: signalling the nginx master this test started (its pid file).
        unsafe { libc::kill(self.0, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            // Gone, or a zombie waiting for its parent (the test's Proc) to reap it.
            let stat = fs::read_to_string(format!("/proc/{}/stat", self.0)).unwrap_or_default();
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next());
            if matches!(state, None | Some("Z")) {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn curl_and_wget_from_nginx_daemon_mode() {
    nginx_case(true);
}

#[test]
fn curl_and_wget_from_nginx_foreground() {
    nginx_case(false);
}

/// CPU ticks (utime + stime) of each `rgtp-engine` thread of process `pid`, summed.
fn engine_ticks(pid: i32) -> Option<u64> {
    let mut total = None;
    for task in fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let comm = fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != "rgtp-engine" {
            continue;
        }
        let stat = fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after the command name (which ends with the last ')'): utime and
        // stime are the 12th and 13th.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<u64> = rest
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|x| x.parse().ok())
            .collect();
        *total.get_or_insert(0) += f.iter().sum::<u64>();
    }
    total
}

fn children_of(pid: i32) -> Vec<i32> {
    let mut v = Vec::new();
    for task in fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let kids = fs::read_to_string(task.path().join("children")).unwrap_or_default();
        v.extend(
            kids.split_whitespace()
                .filter_map(|k| k.parse::<i32>().ok()),
        );
    }
    v
}

/// A prefork server's workers do the RGTP work of their share of the connections
/// themselves (each in the port group with its own socket and engine), instead of
/// one thread of the master doing it for every worker. Fails on a shim whose
/// connections all pass through the process that listened.
#[test]
fn nginx_workers_serve_connections_on_their_own_engines() {
    need("nginx");
    need("curl");
    let t = TestDir::new("shim-nginx-workers");
    let www = www_with(&t, "f.bin", 8 << 20, "nginx-workers");
    let want = b3sum(&www.join("f.bin"));
    let port = free_port();
    let (_nginx, guard) = start_nginx(&t, &www, port, false);
    let master = guard.0;
    let curl = |i: usize| {
        let out = t.join(format!("c{i}.out"));
        let c = curl_get(shimmed(&t, "curl", port, true), 100, port, "f.bin", &out);
        (Proc::spawn(c, &format!("curl {i}"), t.path(), false), out)
    };
    // Workers join the port when they first accept; then clients are spread.
    for i in 0..4 {
        let (p, out) = curl(i);
        let f = p.finish(Duration::from_secs(120));
        assert!(f.status.success(), "{}", f.describe());
        assert_eq!(b3sum(&out), want);
    }
    let batch: Vec<_> = (10..18).map(curl).collect();
    for (p, out) in batch {
        let f = p.finish(Duration::from_secs(120));
        assert!(
            f.status.success(),
            "{}\n{}",
            f.describe(),
            last_lines(&shim_log(&t), 40)
        );
        assert_eq!(b3sum(&out), want);
    }
    // Every request was logged with the client's address, also those a worker
    // accepted from another process's engine (it used to see the unix socket's).
    let peers = fs::read_to_string(t.join("access.log")).unwrap_or_default();
    assert_eq!(peers.lines().count(), 12, "access log:\n{peers}");
    assert!(
        peers.lines().all(|l| l == "127.0.0.1"),
        "nginx logged other peer addresses than the client's:\n{peers}"
    );
    let workers = children_of(master);
    assert!(!workers.is_empty(), "nginx has no workers");
    let busy: Vec<(i32, u64)> = workers
        .iter()
        .filter_map(|&w| engine_ticks(w).map(|t| (w, t)))
        .filter(|&(_, t)| t > 0)
        .collect();
    assert!(
        !busy.is_empty(),
        "no nginx worker ran an RGTP engine (master's engine: {:?} ticks; workers {workers:?})",
        engine_ticks(master)
    );
}

fn nc_listen(t: &TestDir, port: u16, stdin: Option<&Path>, out: Option<&Path>) -> Proc {
    need("nc");
    let mut c = shimmed(t, "nc", port, true);
    c.args(["-N", "-l", "127.0.0.1", &port.to_string()]);
    let mut cmd = c;
    // Proc::spawn wires stdin to /dev/null; use a shell for redirections.
    if stdin.is_some() || out.is_some() {
        let mut sh = shimmed(t, "sh", port, true);
        sh.env_remove("LD_PRELOAD");
        let redirect = format!(
            "exec env LD_PRELOAD={} nc -N -l 127.0.0.1 {port} {} {}",
            shim().display(),
            stdin.map_or(String::from("</dev/null"), |p| format!("<{}", p.display())),
            out.map_or(String::new(), |p| format!(">{}", p.display())),
        );
        sh.arg("-c").arg(redirect);
        cmd = sh;
    }
    let p = Proc::spawn(cmd, "nc-listen", t.path(), false);
    wait_until("nc's RGTP listener", Duration::from_secs(20), || {
        udp_bound(port)
    });
    p
}

fn nc_client(t: &TestDir, port: u16, extra: &str, stdin: &str, out: &str) -> Command {
    let mut sh = Command::new("sh");
    sh.envs(shim_settings(t, port, true)).arg("-c").arg(format!(
        "exec env LD_PRELOAD={} nc {extra} 127.0.0.1 {port} {stdin} {out}",
        shim().display()
    ));
    sh
}

/// `size` random bytes (from `seed`) from an nc client run with `flags` to an nc
/// server, both under the shim, strict: the server must get them all, within `limit`.
fn nc_upload(t: &TestDir, size: u64, seed: &str, flags: &str, limit: Duration) {
    let data = t.join(format!("{seed}.bin"));
    write_random_file(&data, size, seed);
    let port = free_port();
    let got = t.join(format!("{seed}.got"));
    let server = nc_listen(t, port, None, Some(&got));
    assert_udp_only(port);
    let stdin = format!("<{}", data.display());
    run_ok(
        t,
        nc_client(t, port, flags, &stdin, ">/dev/null"),
        &format!("nc-client {flags}"),
    );
    server.finish(limit);
    assert_eq!(b3sum(&got), b3sum(&data), "client to server ({flags})");
}

#[test]
fn netcat_both_directions() {
    let t = TestDir::new("shim-nc");
    nc_upload(&t, 8 << 20, "nc-up", "-N", Duration::from_secs(60));
    // server -> client
    let data2 = t.join("down.bin");
    write_random_file(&data2, 8 << 20, "nc-down");
    let port = free_port();
    let server = nc_listen(&t, port, Some(&data2), None);
    let got2 = t.join("down.got");
    run_ok(
        &t,
        nc_client(&t, port, "-d", "", &format!(">{}", got2.display())),
        "nc-client-down",
    );
    server.finish(Duration::from_secs(60));
    assert_eq!(b3sum(&got2), b3sum(&data2), "server to client");
}

#[test]
fn netcat_producer_exiting_at_once_loses_nothing() {
    let t = TestDir::new("shim-nc-q0");
    nc_upload(&t, 50 << 20, "nc-q0", "-N -q 0", Duration::from_secs(120));
}

#[test]
fn socat_client_and_forking_server() {
    need("socat");
    let t = TestDir::new("shim-socat");
    let port = free_port();
    let mut c = shimmed(&t, "socat", port, true);
    c.args([
        format!("TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr").as_str(),
        "EXEC:cat",
    ]);
    let _server = Proc::spawn(c, "socat-server", t.path(), false);
    wait_until("socat's RGTP listener", Duration::from_secs(20), || {
        udp_bound(port)
    });
    assert_udp_only(port);
    // Three clients one after another: each is served by a forked child.
    for i in 0..3 {
        let data = t.join(format!("in{i}.bin"));
        write_random_file(&data, 2 << 20, &format!("socat{i}"));
        let got = t.join(format!("out{i}.bin"));
        let mut sh = Command::new("sh");
        // The client closes with the shim's default linger.
        sh.envs(shim_settings(&t, port, true))
            .env_remove("RGTP_LINGER_MS")
            .arg("-c")
            .arg(format!(
                "exec env LD_PRELOAD={} socat -t 30 - TCP:127.0.0.1:{port} <{} >{}",
                shim().display(),
                data.display(),
                got.display()
            ));
        run_ok(&t, sh, "socat-client");
        assert_eq!(b3sum(&got), b3sum(&data), "socat echo {i}");
    }
}

/// `python3 tests/scripts/sockets.py ROLE MODE PORT` under the shim, strict, run in
/// the test's directory.
fn sockets_py(t: &TestDir, port: u16, role: &str, mode: &str) -> Command {
    let script = rgtp_e2e::workspace_root().join("tests/scripts/sockets.py");
    let mut c = shimmed(t, "python3", port, true);
    c.current_dir(t.path())
        .arg(script)
        .args([role, mode, &port.to_string()]);
    c
}

fn python_case(mode: &str) {
    need("python3");
    let t = TestDir::new(&format!("shim-py-{mode}"));
    let port = free_port();
    let c = sockets_py(&t, port, "server", mode);
    let server = Proc::spawn(c, "py-server", t.path(), false);
    wait_until(
        "the python server's RGTP listener",
        Duration::from_secs(20),
        || udp_bound(port),
    );
    assert_udp_only(port);
    let c = sockets_py(&t, port, "client", mode);
    let out = run_ok(&t, c, "py-client");
    assert!(out.contains("OK"), "{out}");
    let f = server.finish(Duration::from_secs(60));
    assert!(
        f.status.success() && f.stdout.contains("SERVED"),
        "{}",
        f.describe()
    );
}

#[test]
fn python_blocking_sockets() {
    python_case("blocking");
}

#[test]
fn python_nonblocking_connect_select() {
    python_case("select");
}

#[test]
fn python_nonblocking_connect_poll() {
    python_case("poll");
}

#[test]
fn python_asyncio_epoll() {
    python_case("asyncio");
}

#[test]
fn python_many_threads() {
    python_case("threads");
}

/// Non-blocking connect toward a port nothing serves: EINPROGRESS, then writable
/// with SO_ERROR = ECONNREFUSED (the ICMP refusal of the RGTP datagram).
#[test]
fn python_nonblocking_connect_refused() {
    need("python3");
    let t = TestDir::new("shim-py-refused");
    let port = free_port();
    let c = sockets_py(&t, port, "client", "refused");
    let out = run_ok(&t, c, "py-client");
    assert!(out.contains("OK"), "{out}");
}

/// A server that listens, forks two heirs and exits at once: the listening UDP socket
/// stays open through the hand-over (no port gap), and exactly one heir serves it (two
/// engines reading one socket would split handshakes, and clients would fail).
#[test]
fn python_forking_daemon_heirs_take_over_the_listener() {
    need("python3");
    let t = TestDir::new("shim-py-daemon");
    let port = free_port();
    let c = sockets_py(&t, port, "server", "daemon");
    let f = Proc::spawn(c, "py-daemon", t.path(), false).finish(Duration::from_secs(30));
    assert!(f.status.success(), "{}", f.describe());
    let heirs = || -> Vec<i32> {
        fs::read_dir(t.path())
            .unwrap()
            .filter_map(|e| {
                let n = e.ok()?.file_name().into_string().ok()?;
                n.strip_prefix("daemon-")?
                    .strip_suffix(".pid")?
                    .parse()
                    .ok()
            })
            .collect()
    };
    wait_until("both heirs' pid files", Duration::from_secs(20), || {
        heirs().len() == 2
    });
    let _guards: Vec<KillOnDrop> = heirs().into_iter().map(KillOnDrop).collect();
    assert!(
        udp_bound(port),
        "the listener's UDP port closed with the parent"
    );
    assert_udp_only(port);
    let c = sockets_py(&t, port, "client", "daemon");
    let out = run_ok(&t, c, "py-client");
    assert!(out.contains("OK"), "{out}");
    let took_over = shim_log(&t).matches("took over the RGTP listener").count();
    assert_eq!(took_over, 1, "{}", shim_log(&t));
}

#[test]
fn fallback_plain_client_reaches_shim_server_and_shim_client_reaches_plain_server() {
    need("curl");
    let t = TestDir::new("shim-fallback");
    let www = www_with(&t, "f.bin", 4 << 20, "fallback");
    // A shim-run server with fallback keeps its TCP listener beside RGTP.
    let port = free_port();
    let _server = start_http_server(&t, &www, port, false, true);
    wait_until("the TCP listener", Duration::from_secs(10), || {
        tcp_listening(port)
    });
    let out = t.join("plain.out");
    let c = curl_get(plain("curl"), 60, port, "f.bin", &out);
    fetch_ok(&t, c, "plain-curl", &out, &www.join("f.bin"));
    // ... and a shim-run client with fallback uses RGTP to it.
    let out = t.join("shim.out");
    let c = curl_get(shimmed(&t, "curl", port, false), 60, port, "f.bin", &out);
    fetch_ok(&t, c, "shim-curl", &out, &www.join("f.bin"));
    // A plain server: the shim-run client falls back to TCP.
    let port2 = free_port();
    let _plain_server = start_http_server(&t, &www, port2, false, false);
    let out = t.join("fallback.out");
    let c = curl_get(shimmed(&t, "curl", port2, false), 60, port2, "f.bin", &out);
    fetch_ok(&t, c, "shim-curl-fallback", &out, &www.join("f.bin"));
    assert!(
        shim_log(&t).contains("falling back to TCP"),
        "{}",
        last_lines(&shim_log(&t), 40)
    );
}

#[test]
fn programs_on_other_ports_are_untouched() {
    need("curl");
    let t = TestDir::new("shim-untouched");
    let www = www_with(&t, "f.bin", 1 << 20, "untouched");
    let port = free_port();
    let other = free_port();
    // Server and client both preloaded, but for another port: plain TCP, no RGTP.
    let mut c = shimmed(&t, "python3", other, true);
    c.args([
        "-m",
        "http.server",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--directory",
    ])
    .arg(&www);
    let _server = Proc::spawn(c, "py", t.path(), false);
    wait_until("TCP listener", Duration::from_secs(20), || {
        tcp_listening(port)
    });
    assert!(!udp_bound(port));
    let out = t.join("o");
    let c = curl_get(shimmed(&t, "curl", other, true), 30, port, "f.bin", &out);
    fetch_ok(&t, c, "curl", &out, &www.join("f.bin"));
    assert!(!shim_log(&t).contains("over RGTP"));
}

#[test]
fn bad_configuration_is_one_line_and_runs_unintercepted() {
    need("curl");
    let t = TestDir::new("shim-badcfg");
    let mut c = Command::new("curl");
    c.env("LD_PRELOAD", shim())
        .env("RGTP_PORTS", "80-x")
        .args(["-sS", "--version"]);
    let f = Proc::spawn(c, "curl-badcfg", t.path(), false).finish(Duration::from_secs(30));
    assert!(f.status.success(), "{}", f.describe());
    let lines: Vec<&str> = f.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{:?}", f.stderr);
    assert!(lines[0].contains("RGTP_PORTS"), "{:?}", f.stderr);
}

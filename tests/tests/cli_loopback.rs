//! End-to-end tests of the real `rgtp-expose` / `rgtp-pull` binaries over loopback UDP.
//!
//! Every test has its own temp directory and config dirs, exposes on `--port 0` (the
//! port is read from the printed URL) unless it needs a fixed one, and checks content
//! byte-exactly with both `b3sum` and the `blake3` crate. Deadlines only guard against
//! hangs; nothing here asserts on timing.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket};
use std::path::Path;
use std::time::Duration;

use rgtp_e2e::*;

/// Rate of the relay used to interrupt transfers midway: slow enough that a pull lasts
/// several of the sidecar's ~1 s persist intervals.
const SLOW_LINK: u64 = 6_000_000;

fn assert_no_leftovers(output: &Path) {
    for p in [part_path(output), state_path(output)] {
        assert!(
            !p.exists(),
            "{} should be gone after a successful pull",
            p.display()
        );
    }
}

/// Asserts that a pull ended well: exit 0, OUTPUT byte-exact with `src`, and no part or
/// sidecar file left.
fn assert_pulled(done: &Finished, src: &Path, output: &Path, what: &str) {
    done.assert_success();
    assert_same_content(src, output, what);
    assert_no_leftovers(output);
}

/// Runs `cmd` to the end and checks that it pulled `src` into `output`
/// ([`assert_pulled`]).
fn pull_checked(dir: &TestDir, cmd: &PullCmd, src: &Path, output: &Path, what: &str) {
    assert_pulled(&cmd.run(dir), src, output, what);
}

/// [`assert_pulled`] for a pull run with `--json`, and its report has every field and
/// the file's size as `bytes`. Returns the report.
fn assert_pulled_json(done: &Finished, src: &Path, output: &Path, what: &str) -> Report {
    assert_pulled(done, src, output, what);
    let r = done.json();
    r.assert_fields();
    assert_eq!(r.u64("bytes"), file_len(src), "{what}: --json bytes");
    r
}

/// Runs `cmd` with `--json` to the end and checks it pulled `src` into `output`
/// ([`assert_pulled_json`]).
fn pull_json_checked(
    dir: &TestDir,
    cmd: &PullCmd,
    src: &Path,
    output: &Path,
    what: &str,
) -> Report {
    assert_pulled_json(&cmd.clone().arg("--json").run(dir), src, output, what)
}

/// Pulls `url` into `output` and checks the result against `src` (with --json stats).
fn pull_url_checked(dir: &TestDir, url: &str, src: &Path, output: &Path) -> Report {
    let cmd = PullCmd::url(dir, url, output);
    pull_json_checked(dir, &cmd, src, output, &format!("pull of {url}"))
}

#[test]
fn url_pull_is_byte_exact_and_root_matches_b3sum() {
    let dir = TestDir::new("url");
    let size = 24 * MIB;
    let src = dir.join("payload.bin");
    let hash = write_random_file(&src, size, "url-pull");

    let ex = ExposeOpts::new(&dir, &[&src]).start(&dir);
    let f = ex.single().clone();
    assert_eq!(f.name, "payload.bin");
    assert_eq!(
        f.host, "127.0.0.1",
        "advertised host defaults to the bind IP"
    );
    assert_ne!(f.port, 0);
    assert_eq!(f.root, b3sum(&src), "printed root must equal b3sum FILE");
    assert_eq!(f.root, hash.to_hex().as_str());
    assert!(
        ex.listening.contains(&f.port.to_string()),
        "`listening on {}` should show port {}",
        ex.listening,
        f.port
    );
    assert!(
        dir.exposer_cfg().join("exposer.key").is_file(),
        "default key file $RGTP_CONFIG_DIR/exposer.key should be created on first run"
    );

    let out = dir.join("got.bin");
    let r = pull_url_checked(&dir, &f.url, &src, &out);
    assert!(!r.bool("resumed"), "a fresh pull is not resumed: {:?}", r);
    assert_eq!(r.u64("missing_bytes_at_start"), size);
    assert!(
        r.u64("bytes_received") >= size,
        "bytes_received {} < file size {size}",
        r.u64("bytes_received")
    );

    // Without -o the file lands in ./NAME.
    let cwd = dir.join("cwd");
    fs::create_dir(&cwd).unwrap();
    let cmd = PullCmd::new(&dir, [f.url.as_str(), "--quiet"]).current_dir(&cwd);
    pull_checked(
        &dir,
        &cmd,
        &src,
        &cwd.join("payload.bin"),
        "pull without -o",
    );
}

/// Chunks are decrypted and verified on the receiving thread or on a thread of their
/// own (the default depends on the core count); both must give the exact file.
#[test]
fn both_verification_placements_are_byte_exact() {
    let dir = TestDir::new("verify-placement");
    let (src, ex) = expose_random_file(&dir, "v.bin", 8 * MIB, "verify-placement");
    let url = ex.single().url.clone();
    for threads in ["0", "1"] {
        let out = dir.join(format!("v{threads}.out"));
        let cmd = PullCmd::url(&dir, &url, &out)
            .arg("--verify-threads")
            .arg(threads);
        pull_checked(
            &dir,
            &cmd,
            &src,
            &out,
            &format!("--verify-threads {threads}"),
        );
    }
}

#[test]
fn several_files_and_names_needing_percent_encoding() {
    let dir = TestDir::new("names");
    let a = dir.join("a b+c%d é.txt");
    let b = dir.join("second.dat");
    write_random_file(&a, 300_000, "name-a");
    write_random_file(&b, 5 * MIB + 17, "name-b");
    let empty = dir.join("empty");
    fs::write(&empty, b"").unwrap();

    let ex = ExposeOpts::new(&dir, &[&a, &b, &empty]).start(&dir);
    let fa = ex.file("a b+c%d é.txt").clone();
    assert!(
        !fa.name_encoded.contains(' ') && fa.name_encoded.contains('%'),
        "name must be percent-encoded in {}",
        fa.url
    );
    for (exposed, src) in [
        (&fa, &a),
        (ex.file("second.dat"), &b),
        (ex.file("empty"), &empty),
    ] {
        assert_eq!(exposed.root, b3sum(src), "root of {}", src.display());
        let out = dir.join(format!("out-{}", exposed.name_encoded));
        pull_url_checked(&dir, &exposed.url, src, &out);
    }
    // By name, with the raw (decoded) name.
    let out = dir.join("by-name.txt");
    let cmd = PullCmd::by_name(&dir, &fa.host_port(), &fa.name, &out);
    pull_checked(&dir, &cmd, &a, &out, "pull by name of a name with spaces");
}

#[test]
fn pull_by_name_trusts_on_first_use_and_refuses_a_changed_key() {
    let dir = TestDir::new("tofu");
    let src = dir.join("tofu.bin");
    write_random_file(&src, 3 * MIB, "tofu");
    let key_a = dir.join("a.key");
    let key_b = dir.join("b.key");
    write_key_file(&key_a, "A");
    write_key_file(&key_b, "B");

    let ex_a = ExposeOpts::new(&dir, &[&src]).key(&key_a).start(&dir);
    let fa = ex_a.single().clone();
    let port = ex_a.port;
    let host_port = fa.host_port();

    // First pull by name: trusted on first use and remembered.
    let out1 = dir.join("first.bin");
    let by_name = |out: &Path| PullCmd::by_name(&dir, &host_port, "tofu.bin", out);
    pull_checked(&dir, &by_name(&out1), &src, &out1, "first pull by name");
    let known_path = dir.puller_cfg().join("known_exposers");
    let known = fs::read_to_string(&known_path)
        .unwrap_or_else(|e| panic!("{} not written: {e}", known_path.display()));
    assert!(
        known
            .lines()
            .any(|l| l.contains(&host_port) && l.contains(&fa.key)),
        "known_exposers should record {host_port} with key {}:\n{known}",
        fa.key
    );

    // Same key again: accepted.
    let out2 = dir.join("second.bin");
    let what = "second pull by name (known key)";
    pull_checked(&dir, &by_name(&out2), &src, &out2, what);

    // Same address, different key: refused loudly, nothing written, record unchanged.
    drop(ex_a);
    let ex_b = ExposeOpts::new(&dir, &[&src])
        .key(&key_b)
        .port(port)
        .start(&dir);
    let fb = ex_b.single().clone();
    assert_ne!(
        fb.key, fa.key,
        "different key files must give different keys"
    );
    assert_eq!(fb.root, fa.root);
    let out3 = dir.join("third.bin");
    by_name(&out3)
        .run(&dir)
        .assert_clean_error(exit::KEY_MISMATCH, &["key"]);
    assert!(!out3.exists(), "refused pull must not create its output");
    assert_eq!(
        fs::read_to_string(&known_path).unwrap(),
        known,
        "a refused key must not overwrite the known one"
    );

    // A URL pinning the wrong (old) key is refused too.
    let out4 = dir.join("fourth.bin");
    PullCmd::url(&dir, &fb.url_with_key(&fa.key), &out4)
        .run(&dir)
        .assert_clean_error(exit::KEY_MISMATCH, &["key"]);
    assert!(!out4.exists());
}

#[test]
fn twenty_concurrent_pullers_are_byte_exact() {
    let dir = TestDir::new("concurrent");
    let (src, ex) = expose_random_file(&dir, "shared.bin", 8 * MIB, "concurrent");
    let url = ex.single().url.clone();

    let pullers: Vec<_> = (0..20)
        .map(|i| {
            let out = dir.join(format!("out-{i:02}.bin"));
            let p = PullCmd::url(&dir, &url, &out).arg("--json").spawn(&dir);
            (out, p)
        })
        .collect();
    // Collect every result before asserting, so all processes are reaped first.
    let results: Vec<_> = pullers
        .into_iter()
        .map(|(out, p)| (out, p.finish(PULL_DEADLINE)))
        .collect();
    for (out, done) in &results {
        let r = assert_pulled_json(done, &src, out, &done.what);
        assert_eq!(r.u64("bytes"), 8 * MIB);
    }
}

/// Kill the puller (SIGKILL) mid-transfer, run the same command again: it resumes and
/// moves little more than the missing bytes.
#[test]
fn killed_puller_resumes_and_pulls_only_what_is_missing() {
    let dir = TestDir::new("resume");
    let size = 32 * MIB;
    let (src, ex) = expose_random_file(&dir, "big.bin", size, "resume");
    // A narrow link makes the transfer last long enough to be interrupted midway.
    let relay = Relay::start(ex.addr(), SLOW_LINK);
    let url = relay.url(&ex.single().url);

    let out = dir.join("big.out");
    let cmd = PullCmd::url(&dir, &url, &out);
    let chunks = size.div_ceil(16 * 1024);
    let mut first = cmd.spawn(&dir);
    freeze_after_progress(&relay, &mut first, &out, chunks * 7 / 20);
    first.kill9();
    assert!(!out.exists(), "a partial file must never pass for complete");
    assert!(
        part_path(&out).exists(),
        "part file should survive a kill -9"
    );
    let state = read_sidecar(&state_path(&out)).unwrap_or_else(|| {
        panic!(
            "sidecar {} missing or invalid after kill -9",
            state_path(&out).display()
        )
    });
    let missing = size - verified_bytes(&state);
    assert!(
        missing > 0 && missing <= size - size * 7 / 20,
        "expected at least 35% progress, missing {missing} of {size}"
    );
    assert_eq!(state.root.as_slice(), blake3_file(&src).as_bytes());

    relay.unthrottle();
    let r = pull_json_checked(&dir, &cmd, &src, &out, "resumed pull");
    assert!(r.bool("resumed"), "second run must report resumed: {:?}", r);
    assert_eq!(
        r.u64("missing_bytes_at_start"),
        missing,
        "missing_bytes_at_start should match the sidecar left by the killed run"
    );
    let received = r.u64("bytes_received");
    eprintln!(
        "resume: {missing} of {size} bytes missing after kill -9; second run received {received} ({})",
        r.0
    );
    let bound = missing + missing / 10 + MIB;
    assert!(
        bound < size,
        "the test must be able to tell a resume from a full pull"
    );
    assert!(
        received <= bound,
        "resume moved {received} bytes for {missing} missing (bound {bound}): {:?}",
        r
    );
    assert!(
        received >= missing,
        "resume received {received} bytes, fewer than the {missing} missing"
    );
}

/// SIGTERM and SIGINT stop a pull with exit 130 and keep it resumable.
#[test]
fn interrupted_puller_exits_130_and_resumes() {
    let dir = TestDir::new("interrupt");
    let size = 32 * MIB;
    let (src, ex) = expose_random_file(&dir, "int.bin", size, "interrupt");
    let relay = Relay::start(ex.addr(), SLOW_LINK);
    let out = dir.join("int.out");
    let cmd = PullCmd::url(&dir, &relay.url(&ex.single().url), &out);

    let chunks = size.div_ceil(16 * 1024);
    let mut last_missing = size;
    for (sig, target) in [(libc::SIGTERM, chunks / 5), (libc::SIGINT, chunks * 9 / 20)] {
        let mut p = cmd.spawn(&dir);
        freeze_after_progress(&relay, &mut p, &out, target);
        assert!(p.signal(sig));
        let done = p.finish(ERROR_DEADLINE);
        done.assert_clean_error(exit::INTERRUPTED, &[]);
        assert!(!out.exists(), "an interrupted pull must not produce OUTPUT");
        let s = read_sidecar(&state_path(&out))
            .unwrap_or_else(|| panic!("no valid sidecar after signal {sig}"));
        let missing = size - verified_bytes(&s);
        assert!(
            missing < last_missing,
            "progress should accumulate across runs ({missing} missing, before {last_missing})"
        );
        last_missing = missing;
        relay.thaw();
    }
    relay.set_rate(0);
    let r = pull_json_checked(
        &dir,
        &cmd,
        &src,
        &out,
        "pull resumed after SIGTERM and SIGINT",
    );
    assert!(r.bool("resumed"));
    assert_eq!(r.u64("missing_bytes_at_start"), last_missing);
}

/// Kill -9 the exposer mid-transfer and start it again on the same port with the same
/// (default, persisted) key: the waiting puller carries on.
#[test]
fn puller_survives_exposer_restart() {
    let dir = TestDir::new("restart");
    let size = 32 * MIB;
    let src = dir.join("restart.bin");
    write_random_file(&src, size, "restart");
    let opts = ExposeOpts::new(&dir, &[&src]);
    let mut ex = opts.start(&dir);
    let first = ex.single().clone();
    let relay = Relay::start(ex.addr(), SLOW_LINK);

    let out = dir.join("restart.out");
    let mut p = PullCmd::url(&dir, &relay.url(&first.url), &out)
        .arg("--json")
        .spawn(&dir);
    freeze_after_progress(&relay, &mut p, &out, size.div_ceil(16 * 1024) * 3 / 10);
    ex.proc.kill9();
    drop(ex);
    relay.unthrottle();
    // The puller keeps asking while nobody answers (well within its 60 s timeout).
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        p.is_running(),
        "puller gave up while the exposer was down: {}",
        p.stderr()
    );

    let ex2 = opts.clone().port(first.port).start(&dir);
    assert_eq!(
        ex2.single().url,
        first.url,
        "same file, key and port must give the same URL"
    );
    let done = p.finish(PULL_DEADLINE);
    let r = assert_pulled_json(&done, &src, &out, "pull across an exposer restart");
    assert_eq!(r.u64("bytes"), size);
}

#[test]
fn pull_over_ipv6_loopback() {
    assert!(
        ipv6_loopback_available(),
        "this test needs IPv6 loopback ([::1]); enable it (sysctl net.ipv6.conf.lo.disable_ipv6=0)"
    );
    let dir = TestDir::new("ipv6");
    let src = dir.join("six.bin");
    write_random_file(&src, 6 * MIB, "ipv6");
    let ex = ExposeOpts::new(&dir, &[&src]).bind(Some("::1")).start(&dir);
    let f = ex.single().clone();
    assert_eq!(f.host, "::1");
    assert!(f.url.starts_with("rgtp://[::1]:"), "{}", f.url);
    pull_url_checked(&dir, &f.url, &src, &dir.join("six-url.out"));

    let out = dir.join("six-name.out");
    let cmd = PullCmd::by_name(&dir, &f.host_port(), "six.bin", &out);
    pull_checked(&dir, &cmd, &src, &out, "pull by name over [::1]");
}

/// The default bind (`::`) is dual-stack: the same exposer serves 127.0.0.1 and [::1].
#[test]
fn default_bind_is_dual_stack() {
    assert!(ipv6_loopback_available(), "this test needs IPv6 loopback");
    let dir = TestDir::new("dualstack");
    let src = dir.join("dual.bin");
    write_random_file(&src, 2 * MIB, "dual");
    let ex = ExposeOpts::new(&dir, &[&src])
        .bind(None)
        .advertise("127.0.0.1")
        .start(&dir);
    let f = ex.single().clone();
    assert_eq!(f.host, "127.0.0.1", "--advertise sets the URL host");
    pull_url_checked(&dir, &f.url, &src, &dir.join("v4.out"));
    let v6 = f.url.replacen("127.0.0.1", "[::1]", 1);
    pull_url_checked(&dir, &v6, &src, &dir.join("v6.out"));
}

#[test]
fn exposer_stops_cleanly_on_sigterm_and_sigint() {
    let dir = TestDir::new("expose-signals");
    let src = dir.join("s.bin");
    write_random_file(&src, 100_000, "signals");
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let ex = ExposeOpts::new(&dir, &[&src]).start(&dir);
        let done = ex.stop_with(sig);
        assert_eq!(done.code(), Some(0), "signal {sig}: {}", done.describe());
        assert!(!done.stderr.contains("panicked"), "{}", done.describe());
    }
}

// ---------------------------------------------------------------------------------------
// Errors: each a distinct exit code and one clear line on stderr.
// ---------------------------------------------------------------------------------------

#[test]
fn bad_urls_exit_2() {
    let dir = TestDir::new("bad-url");
    let good_key = "ab".repeat(32);
    let cases = [
        "rgtp://".to_string(),
        "http://127.0.0.1:4433/file".to_string(),
        "rgtp://127.0.0.1:99999/file".to_string(),
        "rgtp://127.0.0.1:0/file".to_string(),
        "rgtp://127.0.0.1:4433/".to_string(),
        "rgtp://127.0.0.1:4433/file?key=nothex".to_string(),
        format!("rgtp://127.0.0.1:4433/file?key={good_key}&bogus=1"),
        "rgtp://[::1/file".to_string(),
    ];
    for url in cases {
        let out = dir.join("never");
        PullCmd::url(&dir, &url, &out)
            .arg("--timeout")
            .arg("2")
            .spawn(&dir)
            .finish(ERROR_DEADLINE)
            .assert_clean_error(exit::USAGE, &[]);
        assert!(!out.exists());
    }
    // Plain usage errors: exit 2 as well (clap's multi-line usage text is fine here).
    for args in [vec![], vec!["127.0.0.1:4433"], vec!["--no-such-flag", "x"]] {
        let done = PullCmd::new(&dir, args).spawn(&dir).finish(ERROR_DEADLINE);
        assert_eq!(done.code(), Some(exit::USAGE), "{}", done.describe());
        assert!(!done.stderr.contains("panicked"), "{}", done.describe());
    }
}

#[test]
fn expose_missing_file_exits_3_naming_it() {
    let dir = TestDir::new("missing-file");
    let present = dir.join("present.bin");
    write_random_file(&present, 1000, "present");
    let missing = dir.join("no-such-file.bin");
    ExposeOpts::new(&dir, &[&present, &missing])
        .run_expect_exit(&dir)
        .assert_clean_error(exit::FILE, &["no-such-file.bin"]);

    let done = Proc::spawn(
        rgtp_command("rgtp-expose", &dir.exposer_cfg()),
        "rgtp-expose without FILE",
        dir.path(),
        false,
    )
    .finish(ERROR_DEADLINE);
    assert_eq!(done.code(), Some(exit::USAGE), "{}", done.describe());
}

#[test]
fn expose_malformed_key_file_exits_11() {
    let dir = TestDir::new("bad-key");
    let src = dir.join("k.bin");
    write_random_file(&src, 1000, "k");
    let key = dir.join("broken.key");
    fs::write(&key, "this is not a key\n").unwrap();
    ExposeOpts::new(&dir, &[&src])
        .key(&key)
        .run_expect_exit(&dir)
        .assert_clean_error(exit::BAD_KEY_FILE, &["broken.key"]);
    assert_eq!(
        fs::read_to_string(&key).unwrap(),
        "this is not a key\n",
        "a malformed key file must never be replaced"
    );
}

#[test]
fn expose_port_conflict_exits_10_naming_port() {
    let dir = TestDir::new("bind-conflict");
    let src = dir.join("c.bin");
    write_random_file(&src, 1000, "conflict");
    let first = ExposeOpts::new(&dir, &[&src]).start(&dir);
    ExposeOpts::new(&dir, &[&src])
        .port(first.port)
        .run_expect_exit(&dir)
        .assert_clean_error(exit::BIND, &["--port"]);
}

#[test]
fn unreachable_exposer_times_out_with_exit_5() {
    let dir = TestDir::new("unreachable");
    let key = "cd".repeat(32);
    let root = "ef".repeat(32);
    // A closed port (ICMP port unreachable) ...
    let closed = unused_udp_port(IpAddr::V4(Ipv4Addr::LOCALHOST));
    // ... and a socket that swallows everything and never answers.
    let silent = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    for port in [closed, silent_port] {
        let out = dir.join(format!("u{port}"));
        let url = format!("rgtp://127.0.0.1:{port}/x.bin?key={key}&root={root}");
        PullCmd::url(&dir, &url, &out)
            .arg("--timeout")
            .arg("2")
            .spawn(&dir)
            .finish(ERROR_DEADLINE)
            .assert_clean_error(exit::TIMEOUT, &[]);
        assert!(!out.exists());
    }
    // By name too (nothing to trust yet), over IPv6 (as pull_over_ipv6_loopback, this
    // needs IPv6 loopback: it fails rather than passing without this part).
    assert!(ipv6_loopback_available(), "this test needs IPv6 loopback");
    let v6closed = unused_udp_port(IpAddr::V6(Ipv6Addr::LOCALHOST));
    PullCmd::by_name(&dir, &format!("[::1]:{v6closed}"), "x.bin", &dir.join("u6"))
        .arg("--timeout")
        .arg("2")
        .spawn(&dir)
        .finish(ERROR_DEADLINE)
        .assert_clean_error(exit::TIMEOUT, &[]);
    drop(silent);
}

/// A first-use exposer that offers an impossible file (2^62 bytes: 32 TiB of chunk
/// bookkeeping) gets a one-line error and exit 12 from the real rgtp-pull, not an
/// aborted process, and nothing is written.
#[test]
fn an_impossible_offer_exits_12_without_aborting() {
    use rgtp::handshake::{generate_keypair, respond};
    use rgtp::wire::{Hello, Manifest, ManifestBody, Welcome};

    let dir = TestDir::new("too-large");
    let fake = UdpSocket::bind("127.0.0.1:0").expect("bind the fake exposer");
    fake.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    let host_port = format!("127.0.0.1:{}", fake.local_addr().expect("its port").port());
    let out = dir.join("huge.out");
    let pull = PullCmd::by_name(&dir, &host_port, "huge.bin", &out)
        .arg("--timeout")
        .arg("20")
        .spawn(&dir);

    let (key, _) = generate_keypair();
    let mut buf = vec![0u8; 65536];
    let (n, from) = fake.recv_from(&mut buf).expect("a HELLO from rgtp-pull");
    let hello = Hello::decode(&buf[..n]).expect("a valid HELLO");
    let size = 1u64 << 62;
    let manifest = Manifest::Found(ManifestBody {
        exposure: [1; 16],
        size,
        chunk_size: rgtp::merkle::CHUNK_SIZE as u32,
        chunk_count: rgtp::merkle::chunk_count(size),
        root: [2; 32],
        content_key: [3; 32],
        max_datagram: hello.max_datagram,
        token: vec![7; 40],
        request_key: [4; 32],
        clock_ms: 0,
        cipher: rgtp::crypto::Cipher::ChaCha20Poly1305,
        features: None,
        group: None,
        window: None,
    });
    let msg2 = respond(
        &key,
        hello.name,
        hello.max_datagram,
        hello.noise,
        &manifest.encode(),
    )
    .expect("the exposer side of the handshake");
    fake.send_to(&Welcome { noise: &msg2 }.encode(), from)
        .expect("send the WELCOME");

    pull.finish(ERROR_DEADLINE)
        .assert_clean_error(exit::TOO_LARGE, &["too large", &size.to_string()]);
    assert!(!out.exists() && !part_path(&out).exists() && !state_path(&out).exists());
}

#[test]
fn unknown_name_exits_7_and_wrong_root_exits_8() {
    let dir = TestDir::new("not-found");
    let (_src, ex) = expose_random_file(&dir, "real.bin", 200_000, "real");
    let f = ex.single().clone();

    let out = dir.join("x.out");
    PullCmd::by_name(&dir, &f.host_port(), "nope.bin", &out)
        .run(&dir)
        .assert_clean_error(exit::NOT_FOUND, &["nope.bin"]);
    assert!(!out.exists());
    let url = f.url.replacen("/real.bin?", "/nope.bin?", 1);
    PullCmd::url(&dir, &url, &out)
        .run(&dir)
        .assert_clean_error(exit::NOT_FOUND, &["nope.bin"]);
    assert!(!out.exists());

    let other_root = blake3::hash(b"something else").to_hex().to_string();
    PullCmd::url(&dir, &f.url_with_root(&other_root), &out)
        .run(&dir)
        .assert_clean_error(exit::ROOT_MISMATCH, &[]);
    assert!(!out.exists(), "content mismatch must not produce OUTPUT");
}

#[test]
fn corrupt_sidecar_exits_9_and_keeps_the_part_file() {
    let dir = TestDir::new("corrupt-sidecar");
    let (_src, ex) = expose_random_file(&dir, "cs.bin", 2 * MIB, "corrupt");
    let out = dir.join("cs.out");
    fs::write(part_path(&out), vec![0x5a; 64 * 1024]).unwrap();
    fs::write(
        state_path(&out),
        b"definitely not a sidecar\x00\xff garbage",
    )
    .unwrap();
    PullCmd::url(&dir, &ex.single().url, &out)
        .run(&dir)
        .assert_clean_error(exit::CORRUPT_SIDECAR, &[]);
    assert!(!out.exists(), "no OUTPUT from a corrupt resume state");
    assert!(
        part_path(&out).exists() && state_path(&out).exists(),
        "the user's partial data must not be deleted silently"
    );
}

#[test]
fn unwritable_output_exits_3() {
    let dir = TestDir::new("bad-output");
    let (_src, ex) = expose_random_file(&dir, "o.bin", 100_000, "output");
    let out = dir.join("no/such/dir/o.bin");
    PullCmd::url(&dir, &ex.single().url, &out)
        .run(&dir)
        .assert_clean_error(exit::FILE, &[]);
    assert!(
        !dir.join("no").exists(),
        "must not create missing directories"
    );
}

/// A sidecar left by a pull of other content (the name now holds different bytes) is
/// not trusted: resume is keyed by the root, so the pull starts over and ends exact.
#[test]
fn resume_state_of_other_content_is_discarded() {
    let dir = TestDir::new("other-content");
    let (d1, d2) = (dir.join("v1"), dir.join("v2"));
    fs::create_dir_all(&d1).unwrap();
    fs::create_dir_all(&d2).unwrap();
    let (old, new) = (d1.join("data.bin"), d2.join("data.bin"));
    let old_size = 24 * MIB;
    let new_size = 20 * MIB + 12345;
    write_random_file(&old, old_size, "old content");
    write_random_file(&new, new_size, "new content");
    let key = dir.join("k.key");
    write_key_file(&key, "same key");

    let ex = ExposeOpts::new(&dir, &[&old]).key(&key).start(&dir);
    let relay = Relay::start(ex.addr(), SLOW_LINK);
    let out = dir.join("data.out");
    let cmd = PullCmd::by_name(&dir, &relay.addr.to_string(), "data.bin", &out);
    let mut p = cmd.spawn(&dir);
    freeze_after_progress(&relay, &mut p, &out, old_size.div_ceil(16 * 1024) / 3);
    p.kill9();
    let port = ex.port;
    drop(ex);

    let _ex2 = ExposeOpts::new(&dir, &[&new])
        .key(&key)
        .port(port)
        .start(&dir);
    relay.unthrottle();
    let r = pull_json_checked(&dir, &cmd, &new, &out, "pull after the content changed");
    assert!(!r.bool("resumed"), "other content must not resume: {:?}", r);
    assert_eq!(r.u64("missing_bytes_at_start"), new_size);
}

/// Bytes of a verified chunk in the part file are damaged between two runs (bit rot,
/// a stray write): the resumed pull must not declare a wrong file complete.
#[test]
fn damaged_part_file_never_passes_for_complete() {
    let dir = TestDir::new("damaged-part");
    let size = 24 * MIB;
    let (src, ex) = expose_random_file(&dir, "d.bin", size, "damaged");
    let relay = Relay::start(ex.addr(), SLOW_LINK);
    let out = dir.join("d.out");
    let cmd = PullCmd::url(&dir, &relay.url(&ex.single().url), &out);
    let mut p = cmd.spawn(&dir);
    let s = freeze_after_progress(&relay, &mut p, &out, size.div_ceil(16 * 1024) / 3);
    p.kill9();
    let chunk = s.have.iter().nth(1).expect("some verified chunk");
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(part_path(&out))
            .unwrap();
        let at = chunk * 16 * 1024 + 100;
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[!b[0]], at).unwrap();
    }
    relay.unthrottle();
    let done = cmd.run(&dir);
    if done.status.success() {
        assert_same_content(&src, &out, "resume over a damaged part file");
    } else {
        assert!(
            !out.exists(),
            "failed pull left OUTPUT: {}",
            done.describe()
        );
        assert_one_clear_line(&done.stderr, &[], &done.describe());
    }
}

/// `-o` to a character device (like /dev/null) discards the bytes and leaves the
/// device alone. As root a private device node is used, so a bug cannot replace the
/// machine's /dev/null.
#[test]
fn output_to_a_character_device_discards() {
    use std::os::unix::fs::FileTypeExt;
    let dir = TestDir::new("devnull");
    let (_src, ex) = expose_random_file(&dir, "n.bin", 4 * MIB, "null");
    let dev = if is_root() {
        let p = dir.join("null");
        let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        // SAFETY: valid C string; creates a char device 1:3 (like /dev/null).
        let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
        assert_eq!(rc, 0, "mknod: {}", std::io::Error::last_os_error());
        p
    } else {
        Path::new("/dev/null").to_path_buf()
    };
    let done = PullCmd::url(&dir, &ex.single().url, &dev)
        .arg("--json")
        .run(&dir);
    done.assert_success();
    assert_eq!(done.json().u64("bytes"), 4 * MIB);
    let meta = fs::metadata(&dev).unwrap();
    assert!(
        meta.file_type().is_char_device(),
        "{} is no longer a device",
        dev.display()
    );
    assert!(!part_path(&dev).exists() && !state_path(&dev).exists());
}

/// Datagram sizes: the puller's --max-datagram is honoured from the minimum (512) up to
/// the largest IPv4 payload; out-of-range values are usage errors.
#[test]
fn max_datagram_sizes() {
    let dir = TestDir::new("datagram");
    let size = 6 * MIB;
    let src = dir.join("m.bin");
    write_random_file(&src, size, "datagram");
    let mut opts = ExposeOpts::new(&dir, &[&src]);
    opts.max_datagram = Some(65507);
    let ex = opts.start(&dir);
    let url = ex.single().url.clone();
    for m in [512u64, 1200, 9000, 65507] {
        let out = dir.join(format!("m{m}.out"));
        let cmd = PullCmd::url(&dir, &url, &out)
            .arg("--max-datagram")
            .arg(m.to_string());
        let r = pull_json_checked(&dir, &cmd, &src, &out, &format!("--max-datagram {m}"));
        let (dg, bytes) = (r.u64("datagrams_received"), r.u64("bytes_received"));
        assert!(
            bytes <= dg * m,
            "--max-datagram {m}: {bytes} bytes in {dg} datagrams means some exceeded {m}"
        );
    }
    for bad in ["511", "65508"] {
        PullCmd::url(&dir, &url, &dir.join("bad.out"))
            .arg("--max-datagram")
            .arg(bad)
            .spawn(&dir)
            .finish(ERROR_DEADLINE)
            .assert_clean_error(exit::USAGE, &["--max-datagram"]);
    }
    // Not a number: clap's own (multi-line) usage error, still exit 2.
    let done = PullCmd::url(&dir, &url, &dir.join("bad.out"))
        .arg("--max-datagram")
        .arg("abc")
        .spawn(&dir)
        .finish(ERROR_DEADLINE);
    assert_eq!(done.code(), Some(exit::USAGE), "{}", done.describe());
}

/// Without `--max-datagram`, a pull between two programs on this host uses
/// loopback-sized datagrams (a sealed 16 KiB chunk in one); the flag on either side
/// still caps it.
#[test]
fn loopback_pulls_default_to_large_datagrams() {
    let dir = TestDir::new("datagram-default");
    let src = dir.join("d.bin");
    write_random_file(&src, 4 * MIB, "datagram-default");
    let bytes_per_datagram = |url: &str, out: &str, args: &[&str]| {
        let out = dir.join(out);
        let mut cmd = PullCmd::url(&dir, url, &out);
        for a in args {
            cmd = cmd.arg(*a);
        }
        let r = pull_json_checked(&dir, &cmd, &src, &out, &format!("pull {args:?}"));
        r.u64("bytes_received") / r.u64("datagrams_received").max(1)
    };
    let ex = ExposeOpts::new(&dir, &[&src]).start(&dir);
    let url = ex.single().url.clone();
    let b = bytes_per_datagram(&url, "default.out", &[]);
    assert!(b > 10_000, "defaults on loopback: {b} bytes per datagram");
    let b = bytes_per_datagram(&url, "pull-capped.out", &["--max-datagram", "1200"]);
    assert!(
        b <= 1200,
        "puller's --max-datagram 1200: {b} bytes per datagram"
    );
    drop(ex);

    let mut opts = ExposeOpts::new(&dir, &[&src]);
    opts.max_datagram = Some(1200);
    let ex = opts.start(&dir);
    let url = ex.single().url.clone();
    let b = bytes_per_datagram(&url, "expose-capped.out", &[]);
    assert!(
        b <= 1200,
        "exposer's --max-datagram 1200: {b} bytes per datagram"
    );
}

/// `--key HEX64` pins the exposer key for a pull by name.
#[test]
fn key_option_pins_the_exposer_key() {
    let dir = TestDir::new("key-pin");
    let (src, ex) = expose_random_file(&dir, "p.bin", MIB, "pin");
    let f = ex.single().clone();
    let wrong = "12".repeat(32);
    let out = dir.join("p.out");
    PullCmd::by_name(&dir, &f.host_port(), "p.bin", &out)
        .arg("--key")
        .arg(wrong.as_str())
        .run(&dir)
        .assert_clean_error(exit::KEY_MISMATCH, &[]);
    assert!(!out.exists());
    let cmd = PullCmd::by_name(&dir, &f.host_port(), "p.bin", &out)
        .arg("--key")
        .arg(f.key.as_str());
    pull_checked(&dir, &cmd, &src, &out, "pull with --key");
}

/// An exposer that serves bytes not matching its root (the file changed under
/// `--no-seal-ahead`) must make the pull fail with "content mismatch", not loop forever.
#[test]
fn exposer_serving_wrong_bytes_fails_the_pull() {
    use std::os::unix::fs::FileExt;
    let dir = TestDir::new("changed-file");
    let src = dir.join("c.bin");
    write_random_file(&src, 4 * MIB, "changed");
    // --no-seal-ahead: content is read from the file when served.
    let mut opts = ExposeOpts::new(&dir, &[&src]);
    opts.extra_args.push("--no-seal-ahead".into());
    let ex = opts.start(&dir);
    let f = fs::OpenOptions::new().write(true).open(&src).unwrap();
    f.write_all_at(b"changed!", 2 * MIB).unwrap();
    drop(f);
    let out = dir.join("c.out");
    let p = PullCmd::url(&dir, &ex.single().url, &out)
        .arg("--timeout")
        .arg("5")
        .spawn(&dir);
    let done = p.finish(Duration::from_secs(120));
    done.assert_clean_error(exit::ROOT_MISMATCH, &[]);
    assert!(!out.exists());
}

/// The exposer restarts mid-pull with different bytes under the same name (same key,
/// same port). A pull by name (no pinned root) must never stitch the two together: it
/// ends with exactly the new content, or fails without producing OUTPUT.
#[test]
fn content_replaced_mid_pull_never_mixes() {
    let dir = TestDir::new("replaced");
    let (d1, d2) = (dir.join("v1"), dir.join("v2"));
    fs::create_dir_all(&d1).unwrap();
    fs::create_dir_all(&d2).unwrap();
    let (old, new) = (d1.join("same.bin"), d2.join("same.bin"));
    let size = 24 * MIB;
    write_random_file(&old, size, "replaced old");
    write_random_file(&new, size, "replaced new");
    let key = dir.join("k.key");
    write_key_file(&key, "replaced");

    let mut ex = ExposeOpts::new(&dir, &[&old]).key(&key).start(&dir);
    let relay = Relay::start(ex.addr(), SLOW_LINK);
    let out = dir.join("same.out");
    // --key pins only the key (no root), so stderr carries no trust-on-first-use notice.
    let mut p = PullCmd::by_name(&dir, &relay.addr.to_string(), "same.bin", &out)
        .arg("--key")
        .arg(ex.single().key.as_str())
        .spawn(&dir);
    freeze_after_progress(&relay, &mut p, &out, size.div_ceil(16 * 1024) / 3);
    let port = ex.port;
    ex.proc.kill9();
    drop(ex);
    let _ex2 = ExposeOpts::new(&dir, &[&new])
        .key(&key)
        .port(port)
        .start(&dir);
    relay.unthrottle();
    let done = p.finish(PULL_DEADLINE);
    if done.status.success() {
        assert_same_content(&new, &out, "pull whose content was replaced midway");
    } else {
        done.assert_clean_error(exit::ROOT_MISMATCH, &["root"]);
        assert!(
            !out.exists(),
            "failed pull left OUTPUT: {}",
            done.describe()
        );
    }
}

/// A full disk stops the pull with exit 4 and a clear line; after space is freed the
/// same command resumes and ends byte-exact. Needs root (mounts a small tmpfs).
#[test]
fn disk_full_exits_4_and_resumes_after_space_is_freed() {
    require_root!("it mounts a small tmpfs");
    let dir = TestDir::new("disk-full");
    let size = 12 * MIB;
    let (src, ex) = expose_random_file(&dir, "full.bin", size, "disk full");
    let disk = SmallDisk::mount(&dir.join("small"), 6 * MIB);
    let out = disk.path.join("full.out");
    let cmd = PullCmd::url(&dir, &ex.single().url, &out);
    cmd.run(&dir).assert_clean_error(exit::DISK_FULL, &[]);
    assert!(!out.exists(), "a full disk must not produce OUTPUT");
    let sidecar = read_sidecar(&state_path(&out));
    let saved = sidecar.as_ref().map_or(0, verified_bytes);
    eprintln!(
        "disk full: sidecar {}, {saved} bytes saved of {size}",
        if sidecar.is_some() {
            "present"
        } else {
            "absent"
        }
    );

    disk.resize(64 * MIB);
    let r = pull_json_checked(
        &dir,
        &cmd,
        &src,
        &out,
        "pull resumed after the disk was enlarged",
    );
    assert_eq!(r.u64("missing_bytes_at_start"), size - saved);
    assert_eq!(r.bool("resumed"), sidecar.is_some());
    drop(disk);
}

/// `--fec K:R` asks repair fragments with every chunk whatever the loss: over loopback
/// (one 65000-byte datagram per chunk, so each repair fragment is a copy of 16 KiB and
/// two go in one GSO send) and at 1200-byte datagrams (14 data fragments, 5 repair),
/// the pull is byte-exact; a malformed `--fec` is a usage error.
#[test]
fn fixed_repair_ratio_pulls_are_byte_exact() {
    let dir = TestDir::new("fec-fixed");
    let (src, ex) = expose_random_file(&dir, "f.bin", 4 * MIB, "fec-fixed");
    let url = ex.single().url.clone();
    for (i, args) in [
        vec!["--fec", "1:2"],
        vec!["--fec", "3:1", "--max-datagram", "1200"],
    ]
    .into_iter()
    .enumerate()
    {
        let out = dir.join(format!("f{i}.out"));
        let mut cmd = PullCmd::url(&dir, &url, &out);
        for a in &args {
            cmd = cmd.arg(*a);
        }
        pull_json_checked(&dir, &cmd, &src, &out, &format!("{args:?}"));
    }
    for bad in ["on", "0:3", "14:65", "14"] {
        let out = dir.join("never");
        let done = PullCmd::url(&dir, &url, &out)
            .arg("--fec")
            .arg(bad)
            .spawn(&dir)
            .finish(ERROR_DEADLINE);
        assert_eq!(
            done.code(),
            Some(exit::USAGE),
            "--fec {bad}: {}",
            done.describe()
        );
        assert!(!out.exists());
    }
}

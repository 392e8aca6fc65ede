//! Multi-source pulls with the real binaries on loopback: `rgtp-pull URL --from SRC`
//! from two exposers of the same file (each with its own key), one of them killed
//! mid-pull, a lying source (tests/src/bin/rgtp-lying-expose.rs), a resume from
//! another source, and the usage errors.

use std::process::Command;
use std::time::{Duration, Instant};

use rgtp_e2e::*;

/// A second exposer of `src` with a key of its own.
fn second_exposer(dir: &TestDir, src: &std::path::Path, label: &str) -> ExposerProc {
    let mut o = ExposeOpts::new(dir, &[src]).key(&dir.join(format!("{label}.key")));
    o.cache_dir = dir.join(format!("{label}-cache"));
    o.start(dir)
}

/// A lying exposer of `src` (`mode`: corrupt or reseal): its process and its URL.
fn start_liar(dir: &TestDir, src: &std::path::Path, mode: &str) -> (Proc, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rgtp-lying-expose"));
    cmd.args(["--mode", mode, "--seconds", "300"]).arg(src);
    let mut p = Proc::spawn(cmd, "rgtp-lying-expose", dir.path(), false);
    let deadline = Instant::now() + EXPOSE_DEADLINE;
    loop {
        let out = p.stdout();
        if out.contains("listening on") {
            let url = out.lines().next().unwrap_or_default().to_string();
            assert!(url.starts_with("rgtp://"), "{out}");
            return (p, url);
        }
        assert!(p.is_running(), "the liar ended: {}", p.stderr());
        assert!(Instant::now() < deadline, "the liar printed no URL");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn two_exposers_both_carry_bytes_and_the_copy_is_exact() {
    let dir = TestDir::new("swarm-two");
    let size = 48 * MIB;
    let (src, a) = expose_random_file(&dir, "two.bin", size, "swarm-two");
    let b = second_exposer(&dir, &src, "b");
    assert_ne!(a.single().key, b.single().key);
    assert_eq!(a.single().root, b.single().root);
    let out = dir.join("two.out");
    // The second source by URL (the same root, its own key).
    let done = PullCmd::url(&dir, &a.single().url, &out)
        .arg("--from")
        .arg(b.single().url.as_str())
        .arg("--json")
        .run(&dir);
    done.assert_success();
    assert_same_content(&src, &out, "pull from two exposers");
    let r = done.json();
    r.assert_fields();
    let s = r.sources();
    assert_eq!(s.len(), 2, "{}", r.0);
    assert_eq!(s[0].addr, a.single().host_port());
    assert_eq!(s[1].addr, b.single().host_port());
    assert_eq!(
        s[0].bytes + s[1].bytes,
        size,
        "each chunk stored once: {}",
        r.0
    );
    for SourceRow {
        addr,
        bytes,
        bad_chunks: bad,
        dropped,
        answered,
    } in &s
    {
        assert!(*bytes > 0 && *answered, "{addr} carried nothing: {}", r.0);
        assert_eq!((*bad, dropped), (0, &None), "{addr}: {}", r.0);
    }
    assert_eq!(r.u64("sources_dropped"), 0);
}

#[test]
fn a_source_that_never_answers_is_reported_as_such() {
    // A small pull ends before a silent source is given up on: the report must not
    // show it as a source that served nothing while it was alive.
    let dir = TestDir::new("swarm-silent");
    let (src, a) = expose_random_file(&dir, "small.bin", 3 * MIB, "swarm-silent");
    let silent = format!(
        "127.0.0.1:{}",
        unused_udp_port("127.0.0.1".parse().unwrap())
    );
    let out = dir.join("small.out");
    let done = PullCmd::url(&dir, &a.single().url, &out)
        .arg("--from")
        .arg(silent.as_str())
        .arg("--json")
        .run(&dir);
    done.assert_success();
    assert_same_content(&src, &out, "pull with a silent --from");
    let s = done.json().sources();
    assert_eq!((s[0].bytes, s[0].answered), (3 * MIB, true), "{s:?}");
    assert_eq!(s[1].addr, silent);
    assert_eq!((s[1].bytes, s[1].answered), (0, false), "{s:?}");
    let out2 = dir.join("small2.out");
    let text = PullCmd::new(
        &dir,
        [
            a.single().url.as_str(),
            "-o",
            out2.to_str().expect("UTF-8 path"),
            "--from",
            silent.as_str(),
        ],
    )
    .run(&dir);
    text.assert_success();
    assert!(
        text.stderr.contains(&format!(
            "from {silent}: 0 bytes (no answer before the pull finished)"
        )),
        "{}",
        text.stderr
    );
}

#[test]
fn an_exposer_killed_mid_pull_is_dropped_and_the_other_finishes() {
    let dir = TestDir::new("swarm-kill");
    let size = 24 * MIB;
    let (src, a) = expose_random_file(&dir, "kill.bin", size, "swarm-kill");
    let mut b = second_exposer(&dir, &src, "b");
    // Both through slow relays, so the pull is still going when b dies.
    let ra = Relay::start(a.addr(), 3_000_000);
    let rb = Relay::start(b.addr(), 3_000_000);
    let out = dir.join("kill.out");
    let mut p = PullCmd::url(&dir, &ra.url(&a.single().url), &out)
        .arg("--from")
        .arg(rb.addr.to_string())
        .arg("--json")
        .spawn(&dir);
    // About a fifth verified: kill b (by pid), and let a go at loopback speed.
    let state = state_path(&out);
    let deadline = Instant::now() + Duration::from_secs(120);
    while read_sidecar(&state).is_none_or(|s| s.have.count() < (size / 16384) / 5) {
        assert!(Instant::now() < deadline, "no progress: {}", p.stderr());
        assert!(p.is_running(), "the pull ended early: {}", p.stderr());
        std::thread::sleep(Duration::from_millis(5));
    }
    // a stays slow, so b's silence outlasts a stall (3 s) and b is dropped.
    b.proc.kill9();
    let done = p.finish(PULL_DEADLINE);
    done.assert_success();
    assert_same_content(&src, &out, "pull with one source killed");
    let r = done.json();
    let s = r.sources();
    assert_eq!(r.u64("sources_dropped"), 1, "{}", r.0);
    assert!(
        s[1].dropped.is_some(),
        "the killed source was not dropped: {}",
        r.0
    );
    assert!(s[1].bytes > 0, "b carried nothing before it died: {}", r.0);
    assert!(s[0].dropped.is_none());
    assert_eq!(s[0].bytes + s[1].bytes, size);
}

#[test]
fn a_lying_source_is_dropped_and_counted_and_the_copy_is_exact() {
    let dir = TestDir::new("swarm-liar");
    let size = 16 * MIB;
    let (src, honest) = expose_random_file(&dir, "liar.bin", size, "swarm-liar");
    let (_liar, liar_url) = start_liar(&dir, &src, "corrupt");
    // The liar's URL carries the true root: it is the main source here.
    assert!(liar_url.contains(&honest.single().root), "{liar_url}");
    let out = dir.join("liar.out");
    let done = PullCmd::url(&dir, &liar_url, &out)
        .arg("--from")
        .arg(honest.single().host_port())
        .arg("--json")
        .run(&dir);
    done.assert_success();
    assert_same_content(&src, &out, "pull beside a lying source");
    let r = done.json();
    let s = r.sources();
    assert_eq!(r.u64("sources_dropped"), 1, "{}", r.0);
    let SourceRow {
        bytes: liar_bytes,
        bad_chunks: liar_bad,
        dropped: liar_dropped,
        ..
    } = &s[0];
    assert_eq!(*liar_bytes, 0, "a lie was stored: {}", r.0);
    assert!(*liar_bad >= 1, "{}", r.0);
    assert!(
        liar_dropped
            .as_deref()
            .is_some_and(|d| d.contains("fail verification")),
        "{}",
        r.0
    );
    assert_eq!(s[1].bytes, size);
    assert!(r.u64("bad_chunks") >= 1);
}

#[test]
fn the_pull_fails_clearly_when_every_source_lies() {
    let dir = TestDir::new("swarm-all-liars");
    let src = dir.join("lies.bin");
    write_random_file(&src, 2 * MIB, "swarm-all-liars");
    let (_l1, url1) = start_liar(&dir, &src, "corrupt");
    let (_l2, url2) = start_liar(&dir, &src, "reseal");
    let out = dir.join("lies.out");
    let done = PullCmd::url(&dir, &url1, &out)
        .arg("--from")
        .arg(url2.as_str())
        .run(&dir);
    done.assert_clean_error(8, &["no source left", "fail verification"]);
}

#[test]
fn a_pull_from_two_sources_resumes_from_a_third() {
    let dir = TestDir::new("swarm-resume");
    let size = 24 * MIB;
    let (src, a) = expose_random_file(&dir, "res.bin", size, "swarm-resume");
    let b = second_exposer(&dir, &src, "b");
    let c = second_exposer(&dir, &src, "c");
    let ra = Relay::start(a.addr(), 2_000_000);
    let rb = Relay::start(b.addr(), 2_000_000);
    let out = dir.join("res.out");
    let mut p = PullCmd::url(&dir, &ra.url(&a.single().url), &out)
        .arg("--from")
        .arg(rb.addr.to_string())
        .spawn(&dir);
    let seen = freeze_after_progress(&ra, &mut p, &out, (size / 16384) / 4);
    rb.freeze();
    // Interrupted (as Ctrl-C would): the progress is saved.
    assert!(p.signal(libc::SIGINT));
    let status = p
        .wait_for(Duration::from_secs(30))
        .expect("pull exits on SIGINT");
    assert_eq!(status.code(), Some(130), "{}", p.stderr());
    // Resumed from c alone, by its URL.
    let done = PullCmd::url(&dir, &c.single().url, &out)
        .arg("--json")
        .run(&dir);
    done.assert_success();
    assert_same_content(&src, &out, "resume from a third source");
    let r = done.json();
    assert!(r.bool("resumed"), "{}", r.0);
    let left = r.u64("missing_bytes_at_start");
    assert!(
        left <= size - seen.have.count() * 16384,
        "pulled {left} again, {} were verified",
        seen.have.count()
    );
}

#[test]
fn from_needs_the_root_and_the_same_root() {
    let dir = TestDir::new("swarm-usage");
    let (src, a) = expose_random_file(&dir, "u.bin", 64 * 1024, "swarm-usage");
    let other = dir.join("other.bin");
    write_random_file(&other, 64 * 1024, "swarm-usage-other");
    let b = ExposeOpts::new(&dir, &[&other]).start(&dir);
    let out = dir.join("u.out");
    // A URL of another root.
    PullCmd::url(&dir, &a.single().url, &out)
        .arg("--from")
        .arg(b.single().url.as_str())
        .run(&dir)
        .assert_clean_error(2, &["another root"]);
    // No root to check the sources against (the by-name form).
    PullCmd::by_name(&dir, &a.single().host_port(), "u.bin", &out)
        .arg("--from")
        .arg(b.single().host_port())
        .run(&dir)
        .assert_clean_error(2, &["--from", "root"]);
    assert!(!out.exists());
    drop(src);
}

/// The main source's key is trusted on first use when its URL pins none (the root
/// is what checks the chunks); a --from source's key is never remembered.
#[test]
fn only_the_main_sources_key_is_trusted_on_first_use() {
    let dir = TestDir::new("swarm-tofu");
    let (src, a) = expose_random_file(&dir, "tofu.bin", 2 * MIB, "swarm-tofu");
    let b = second_exposer(&dir, &src, "b");
    let unpinned = format!(
        "rgtp://{}/tofu.bin?root={}",
        a.single().host_port(),
        a.single().root
    );
    let out = dir.join("tofu.out");
    let done = PullCmd::url(&dir, &unpinned, &out)
        .arg("--from")
        .arg(b.single().host_port())
        .run(&dir);
    done.assert_success();
    assert_same_content(&src, &out, "pull with an unpinned main source");
    let known = std::fs::read_to_string(dir.puller_cfg().join("known_exposers"))
        .expect("known_exposers written");
    assert!(known.contains(&a.single().key), "{known}");
    assert!(!known.contains(&b.single().key), "{known}");
}

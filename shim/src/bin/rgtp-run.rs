//! rgtp-run: run an unmodified TCP program with its connections on the given ports
//! carried over RGTP (sets LD_PRELOAD to librgtp_shim.so and RGTP_* for it).

use std::collections::HashMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// The shim's own settings parser, so that rgtp-run refuses exactly what the shim
/// would (the shim is a cdylib: its code cannot be linked into this program, and must
/// not be, or its hooks would be too).
#[path = "../config.rs"]
#[allow(dead_code)]
mod config;

const USAGE: &str = "\
usage: rgtp-run --ports LIST [--strict] [--linger-ms N] [--log LEVEL] [--log-file PATH] [--] COMMAND [ARGS...]
       rgtp-run --show-key | --version | --help

Runs COMMAND with librgtp_shim.so preloaded, so that its TCP connections and
listeners on the ports in LIST (e.g. 8080 or 80,443,9000-9010) go over RGTP.
  --strict        RGTP only (RGTP_FALLBACK=0); default falls back to TCP. The shim
                  must load: rgtp-run checks it does before running COMMAND.
  --linger-ms N   how long close/exit wait for the peer to have every byte
  --log LEVEL     off|error|warn|info|debug;  --log-file PATH  where to write it
  --show-key      print this machine's shim server key (created if missing), for
                  clients' RGTP_PINS=HOST:PORT=KEY; RGTP_CONFIG_DIR says where it is
  --version       print the version
The shim is looked up in $RGTP_SHIM, next to this program, then ../lib/.
RGTP_* settings already in the environment are checked the same way.
Exit codes: COMMAND's own; 2 on bad usage or a bad setting; 11 if the server key is
malformed or unreadable (--show-key); 15 if it cannot be created (--show-key); 127
if the shim is missing or does not load, or COMMAND is missing.";

/// Where the shim is: `$RGTP_SHIM` as given (checked later), else next to this
/// program or in ../lib/.
fn find_shim() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RGTP_SHIM") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [
        dir.join("librgtp_shim.so"),
        dir.join("../lib/librgtp_shim.so"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

/// Whether the dynamic loader can load `shim`, asked in a child process so that its
/// constructor runs there and not here: `None` if it can, else why not. Without this,
/// a wrong RGTP_SHIM or a broken library only makes ld.so print a line and run the
/// program unintercepted, over plain TCP.
fn shim_load_error(shim: &Path) -> Option<String> {
    if !shim.is_file() {
        return Some(format!("{}: no such file", shim.display()));
    }
    let Ok(path) = CString::new(shim.as_os_str().as_bytes()) else {
        return Some(format!("{}: a path with a NUL byte", shim.display()));
    };
    let mut fds = [0; 2];
    // SAFETY: pipe writes two descriptors into the array.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Some(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    let (rd, wr) = (fds[0], fds[1]);
    // SAFETY: this process has one thread (nothing here spawns any), so the child may
    // call anything; it only dlopens, writes to the pipe and _exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: in the child; `path` is a valid C string; dlerror's text is copied
        // out before _exit.
        unsafe {
            libc::close(rd);
            let h = libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
            if h.is_null() {
                let e = libc::dlerror();
                if !e.is_null() {
                    let msg = std::ffi::CStr::from_ptr(e).to_bytes();
                    libc::write(wr, msg.as_ptr().cast(), msg.len());
                }
                libc::_exit(1);
            }
            libc::_exit(0);
        }
    }
    // SAFETY: closing our copy of the write end, which we own.
    unsafe { libc::close(wr) };
    if pid < 0 {
        // SAFETY: closing the read end, which we own.
        unsafe { libc::close(rd) };
        return Some(format!("fork: {}", std::io::Error::last_os_error()));
    }
    let mut msg = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        // SAFETY: reading into our own buffer from our own pipe end.
        let n = unsafe { libc::read(rd, buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            msg.extend_from_slice(&buf[..n as usize]);
        } else if n == 0
            || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
        {
            break;
        }
    }
    // SAFETY: closing the read end, which we own.
    unsafe { libc::close(rd) };
    let mut status = 0;
    // SAFETY: waiting for our own child.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return Some(format!("waitpid: {}", std::io::Error::last_os_error()));
        }
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        None
    } else if msg.is_empty() {
        Some(format!("{}: the library does not load", shim.display()))
    } else {
        Some(String::from_utf8_lossy(&msg).trim().to_string())
    }
}

/// `--show-key`: the shim server key, as the shim loads it (creating it if missing).
fn show_key() -> ExitCode {
    let path = rgtp::keys::config_dir().join("shim.key");
    match rgtp::keys::StaticKey::load_or_create(&path) {
        Ok(k) => {
            println!("{}", rgtp::url::hex(&k.public));
            eprintln!(
                "rgtp-run: the public key of {} (clients: RGTP_PINS=HOST:PORT=<this key>)",
                path.display()
            );
            ExitCode::SUCCESS
        }
        Err(e @ rgtp::keys::KeyError::Create(..)) => {
            eprintln!("rgtp-run: {e} (set RGTP_CONFIG_DIR)");
            ExitCode::from(15)
        }
        Err(e) => {
            eprintln!("rgtp-run: server key {e}");
            ExitCode::from(11)
        }
    }
}

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("rgtp-run: {msg} (rgtp-run --help for usage)");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut env: Vec<(&str, String)> = Vec::new();
    let mut cmd: Vec<String> = Vec::new();
    while let Some(a) = args.next() {
        let mut val = |name: &str| match args.next() {
            Some(v) => Ok(v),
            None => Err(format!("{name} needs a value")),
        };
        let r = match a.as_str() {
            "--ports" => val("--ports").map(|v| env.push(("RGTP_PORTS", v))),
            "--strict" => {
                env.push(("RGTP_FALLBACK", "0".into()));
                Ok(())
            }
            "--linger-ms" => val("--linger-ms").map(|v| env.push(("RGTP_LINGER_MS", v))),
            "--log" => val("--log").map(|v| env.push(("RGTP_LOG", v))),
            "--log-file" => val("--log-file").map(|v| env.push(("RGTP_LOG_FILE", v))),
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "-V" | "--version" => {
                println!("rgtp-run {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            "--show-key" if cmd.is_empty() => return show_key(),
            "--" => {
                cmd.extend(args.by_ref());
                Ok(())
            }
            s if s.starts_with('-') && cmd.is_empty() => Err(format!("unknown option {s}")),
            _ => {
                cmd.push(a);
                cmd.extend(args.by_ref());
                Ok(())
            }
        };
        if let Err(e) = r {
            return usage_error(&e);
        }
    }
    if cmd.is_empty() || !env.iter().any(|(k, _)| *k == "RGTP_PORTS") {
        return usage_error("need --ports and a COMMAND");
    }
    // Check every setting the shim will read (ours over the environment's), as the
    // shim would: a bad one would otherwise only show once COMMAND runs, or not at all.
    let ours: HashMap<&str, &String> = env.iter().map(|(k, v)| (*k, v)).collect();
    let get = |k: &str| {
        ours.get(k)
            .map(|v| v.to_string())
            .or_else(|| std::env::var(k).ok())
    };
    let strict = match config::parse(get) {
        Ok(Some(c)) => !c.fallback,
        Ok(None) => return usage_error("need --ports"),
        Err(e) => return usage_error(&e),
    };
    let Some(shim) = find_shim() else {
        eprintln!(
            "rgtp-run: librgtp_shim.so not found (set RGTP_SHIM or install it next to rgtp-run)"
        );
        return ExitCode::from(127);
    };
    if let Some(why) = shim_load_error(&shim) {
        let what = if strict {
            "refusing to run it without RGTP (--strict)"
        } else {
            "refusing to run it unintercepted"
        };
        eprintln!(
            "rgtp-run: the shim does not load ({why}); {what}: {}",
            cmd[0]
        );
        return ExitCode::from(127);
    }
    let preload = match std::env::var("LD_PRELOAD") {
        Ok(p) if !p.is_empty() => format!("{}:{p}", shim.display()),
        _ => shim.display().to_string(),
    };
    let err = Command::new(&cmd[0])
        .args(&cmd[1..])
        .envs(env)
        .env("LD_PRELOAD", preload)
        .exec();
    eprintln!("rgtp-run: cannot run {}: {err}", cmd[0]);
    ExitCode::from(127)
}

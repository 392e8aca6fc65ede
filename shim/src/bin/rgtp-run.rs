//! rgtp-run: run an unmodified TCP program with its connections on the given ports
//! carried over RGTP (sets LD_PRELOAD to librgtp_shim.so and RGTP_* for it).

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

const USAGE: &str = "\
usage: rgtp-run --ports LIST [--strict] [--linger-ms N] [--log LEVEL] [--log-file PATH] [--] COMMAND [ARGS...]

Runs COMMAND with librgtp_shim.so preloaded, so that its TCP connections and
listeners on the ports in LIST (e.g. 8080 or 80,443,9000-9010) go over RGTP.
  --strict        RGTP only (RGTP_FALLBACK=0); default falls back to TCP
  --linger-ms N   how long close/exit wait for the peer to have every byte
  --log LEVEL     off|error|warn|info|debug;  --log-file PATH  where to write it
The shim is looked up in $RGTP_SHIM, next to this program, then ../lib/.
Exit codes: COMMAND's own; 2 on bad usage; 127 if the shim or COMMAND is missing.";

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
            eprintln!("rgtp-run: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    if cmd.is_empty() || !env.iter().any(|(k, _)| *k == "RGTP_PORTS") {
        eprintln!("rgtp-run: need --ports and a COMMAND\n{USAGE}");
        return ExitCode::from(2);
    }
    let Some(shim) = find_shim() else {
        eprintln!(
            "rgtp-run: librgtp_shim.so not found (set RGTP_SHIM or install it next to rgtp-run)"
        );
        return ExitCode::from(127);
    };
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

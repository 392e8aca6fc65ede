//! Diagnostics: to RGTP_LOG_FILE, or to stderr only when RGTP_LOG asks for them
//! without a file. Never written on pass-through paths.

use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use crate::config::LogLevel;

static LEVEL: AtomicU8 = AtomicU8::new(0);
static FILE: OnceLock<Option<std::fs::File>> = OnceLock::new();

pub fn init(level: LogLevel, file: Option<&str>) {
    LEVEL.store(level as u8, Ordering::Relaxed);
    let _ = FILE.set(file.and_then(|p| {
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
        {
            Ok(f) => Some(f),
            Err(e) => {
                crate::emulation::say(&format!(
                    "rgtp-shim: cannot open RGTP_LOG_FILE {p}: {e}; logging to stderr"
                ));
                None
            }
        }
    }));
}

fn emit(level: LogLevel, msg: &str) {
    if (level as u8) > LEVEL.load(Ordering::Relaxed) || level == LogLevel::Off {
        return;
    }
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let line = format!("rgtp-shim[{pid}] {level:?}: {msg}\n");
    match FILE.get().and_then(|f| f.as_ref()) {
        Some(mut f) => {
            let _ = f.write_all(line.as_bytes());
        }
        None => {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }
}

pub fn error(m: &str) {
    emit(LogLevel::Error, m)
}
pub fn warn(m: &str) {
    emit(LogLevel::Warn, m)
}
pub fn info(m: &str) {
    emit(LogLevel::Info, m)
}
pub fn debug(m: &str) {
    emit(LogLevel::Debug, m)
}

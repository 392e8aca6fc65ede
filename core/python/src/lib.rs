//! `rgtp._rgtp`: the native half of the Python package (PyO3). The Python half
//! (`python/rgtp/`) holds the documented API, the exceptions and asyncio; this
//! module wraps the blocking API of the `rgtp` crate (`rgtp::pull`, `rgtp::Exposure`), releasing
//! the GIL for every blocking call.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use rgtp::url::{hex, parse_hex32};
use rgtp::wire::{MAX_MAX_DATAGRAM, MIN_MAX_DATAGRAM};
use rgtp::{
    pull_from, ExposeOptions, Exposure as CoreExposure, FecMode, PullOptions, PullSource,
    PullUpdate, ShareOptions, TransferError,
};

/// The typed exception for an exit code (`rgtp._errors.error_for`), as a `PyErr`.
fn rgtp_error(py: Python<'_>, code: u8, msg: String) -> PyErr {
    let made = py
        .import("rgtp._errors")
        .and_then(|m| m.getattr("error_for"))
        .and_then(|f| f.call1((code, msg)));
    match made {
        Ok(exc) => PyErr::from_value(exc),
        Err(e) => e,
    }
}

fn transfer_error(py: Python<'_>, e: TransferError) -> PyErr {
    rgtp_error(py, e.exit_code(), e.to_string())
}

fn check_datagram(m: Option<u32>) -> PyResult<Option<u32>> {
    match m {
        Some(v) if !(MIN_MAX_DATAGRAM..=MAX_MAX_DATAGRAM).contains(&(v as usize)) => {
            Err(PyValueError::new_err(format!(
                "max_datagram must be between {MIN_MAX_DATAGRAM} and {MAX_MAX_DATAGRAM}"
            )))
        }
        m => Ok(m),
    }
}

fn seconds(what: &str, s: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            PyValueError::new_err(format!("{what} must be a positive number of seconds"))
        })
}

/// A cancellation flag shared with a running pull: `cancel()` from any thread stops
/// it (it raises `rgtp.Cancelled`, its progress saved for a resume).
#[pyclass(frozen, module = "rgtp")]
struct CancelToken {
    flag: Arc<AtomicBool>,
}

#[pymethods]
impl CancelToken {
    #[new]
    fn new() -> Self {
        CancelToken {
            flag: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Stops every pull given this token.
    fn cancel(&self) {
        self.flag.store(true, Ordering::SeqCst);
    }

    /// Whether `cancel()` was called.
    #[getter]
    fn cancelled(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    fn __repr__(&self) -> String {
        format!("CancelToken(cancelled={})", self.cancelled())
    }
}

/// The dict a progress callback receives.
fn update_dict<'py>(py: Python<'py>, u: &PullUpdate) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    match u {
        PullUpdate::Waiting { elapsed } => {
            d.set_item("kind", "waiting")?;
            d.set_item("elapsed", elapsed.as_secs_f64())?;
        }
        PullUpdate::Progress {
            stored,
            total,
            missing_at_start,
            elapsed,
            srtt,
        } => {
            d.set_item("kind", "progress")?;
            d.set_item("stored", stored)?;
            d.set_item("total", total)?;
            d.set_item("missing_at_start", missing_at_start)?;
            d.set_item("elapsed", elapsed.as_secs_f64())?;
            d.set_item("srtt", srtt.as_secs_f64())?;
        }
        PullUpdate::TrustedOnFirstUse { host_port, key } => {
            d.set_item("kind", "trusted")?;
            d.set_item("host_port", host_port)?;
            d.set_item("key", hex(key))?;
        }
        PullUpdate::Damaged { chunks } => {
            d.set_item("kind", "damaged")?;
            d.set_item("chunks", chunks)?;
        }
        PullUpdate::Sharing { addr } => {
            d.set_item("kind", "sharing")?;
            d.set_item("addr", addr.to_string())?;
        }
        PullUpdate::Joined { at } => {
            d.set_item("kind", "joined")?;
            d.set_item("at", at)?;
        }
        PullUpdate::Seeding { seconds } => {
            d.set_item("kind", "seeding")?;
            d.set_item("seconds", seconds)?;
        }
    }
    Ok(d)
}

/// The native pull; `rgtp.pull` documents it.
#[pyfunction]
#[pyo3(signature = (url, path, progress=None, key=None, known_exposers=None,
    max_datagram=None, connect_timeout=10.0, idle_timeout=60.0, verify_thread=None,
    cancel=None, sources=Vec::new(), fec="auto", share=false, share_port=0, seed=0.0))]
#[allow(clippy::too_many_arguments)]
fn pull<'py>(
    py: Python<'py>,
    url: &str,
    path: PathBuf,
    progress: Option<Py<PyAny>>,
    key: Option<&str>,
    known_exposers: Option<PathBuf>,
    max_datagram: Option<u32>,
    connect_timeout: f64,
    idle_timeout: f64,
    verify_thread: Option<bool>,
    cancel: Option<Py<CancelToken>>,
    sources: Vec<String>,
    fec: &str,
    share: bool,
    share_port: u16,
    seed: f64,
) -> PyResult<Bound<'py, PyDict>> {
    let fec = FecMode::parse(fec).ok_or_else(|| {
        rgtp_error(
            py,
            2,
            format!("fec must be \"off\", \"auto\" or \"K:R\", not {fec:?}"),
        )
    })?;
    let mut opts = PullOptions {
        from: sources,
        fec,
        share: share
            .then(|| -> PyResult<ShareOptions> {
                Ok(ShareOptions {
                    port: share_port,
                    seed: Duration::try_from_secs_f64(seed).map_err(|_| {
                        PyValueError::new_err("seed must be zero or a positive number of seconds")
                    })?,
                })
            })
            .transpose()?,
        known_exposers,
        max_datagram: check_datagram(max_datagram)?.map(|m| m as u16),
        connect_timeout: seconds("connect_timeout", connect_timeout)?,
        idle_timeout: seconds("idle_timeout", idle_timeout)?,
        offload_verify: verify_thread,
        ..Default::default()
    };
    if let Some(k) = key {
        opts.key = Some(
            parse_hex32(k).ok_or_else(|| rgtp_error(py, 2, "key must be 64 hex digits".into()))?,
        );
    }
    let src = PullSource::parse(url, None).map_err(|e| transfer_error(py, e))?;
    let flag = match &cancel {
        Some(t) => t.get().flag.clone(),
        None => Arc::new(AtomicBool::new(false)),
    };
    // An exception of the callback (or a signal, e.g. Ctrl-C's KeyboardInterrupt),
    // raised once the pull has stopped.
    let raised: Mutex<Option<PyErr>> = Mutex::new(None);
    let result = py.detach(|| {
        let mut on = |u: PullUpdate| {
            // Re-take the GIL about four times a second: for the callback, and so a
            // Ctrl-C in the main thread cancels the pull.
            Python::attach(|py| {
                let r = py.check_signals().and_then(|()| match &progress {
                    Some(cb) => cb.call1(py, (update_dict(py, &u)?,)).map(drop),
                    None => Ok(()),
                });
                if let Err(e) = r {
                    let mut slot = raised.lock().unwrap_or_else(|p| p.into_inner());
                    slot.get_or_insert(e);
                    flag.store(true, Ordering::SeqCst);
                }
            })
        };
        pull_from(&src, &path, &opts, &flag, &mut on)
    });
    if let Some(e) = raised.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let r = result.map_err(|e| transfer_error(py, e))?;
    let s = &r.stats;
    let d = PyDict::new(py);
    d.set_item("exit_code", 0)?;
    d.set_item("bytes", r.bytes)?;
    d.set_item("seconds", r.seconds)?;
    d.set_item(
        "throughput",
        (r.missing_at_start as f64 / r.seconds.max(1e-9)).round(),
    )?;
    d.set_item("datagrams_received", s.datagrams_in)?;
    d.set_item("bytes_received", s.bytes_in)?;
    d.set_item("datagrams_sent", s.datagrams_out)?;
    d.set_item("requests", s.requests)?;
    d.set_item("rerequested_fragments", s.rerequested_fragments)?;
    d.set_item("repair_fragments", s.repair_fragments)?;
    d.set_item("chunks_repaired", s.chunks_repaired)?;
    d.set_item("surplus_repair_fragments", s.surplus_repair)?;
    d.set_item("duplicate_fragments", s.duplicate_fragments)?;
    d.set_item("spurious_losses", s.spurious_losses)?;
    d.set_item("bad_chunks", s.bad_chunks)?;
    d.set_item("handshakes", s.handshakes)?;
    d.set_item("resumed", r.resumed)?;
    d.set_item("live", r.live)?;
    d.set_item("live_start", r.live_start)?;
    d.set_item("missing_bytes_at_start", r.missing_at_start)?;
    d.set_item("cipher", s.cipher.map(|c| c.name()))?;
    d.set_item("output", path.into_os_string())?;
    d.set_item("sources_dropped", s.sources_dropped)?;
    let share = r.share.as_ref();
    d.set_item("share_port", share.map(|sh| sh.addr.port()))?;
    d.set_item("share_bytes_sent", share.map(|sh| sh.bytes_out))?;
    d.set_item("share_handshakes", share.map(|sh| sh.handshakes))?;
    d.set_item("share_missing_sent", share.map(|sh| sh.missing_sent))?;
    let list = PyList::empty(py);
    for src in &r.sources {
        let e = PyDict::new(py);
        e.set_item("addr", &src.addr)?;
        e.set_item("bytes", src.bytes)?;
        e.set_item("bad_chunks", src.bad_chunks)?;
        e.set_item("dropped", src.dropped.as_deref())?;
        e.set_item("answered", src.answered)?;
        list.append(e)?;
    }
    d.set_item("sources", list)?;
    Ok(d)
}

/// A file exposed on a UDP port, served by a thread until `close()`; a context
/// manager. Made by `rgtp.expose`.
#[pyclass(frozen, module = "rgtp")]
struct Exposure {
    inner: Mutex<Option<CoreExposure>>,
    /// The pull URL: `rgtp://HOST:PORT/NAME?key=...&root=...`.
    #[pyo3(get)]
    url: String,
    /// The content root, 64 hex digits (`b3sum FILE`).
    #[pyo3(get)]
    root: String,
    /// The exposer's public key, 64 hex digits (pullers pin it).
    #[pyo3(get)]
    key: String,
    /// The UDP port served.
    #[pyo3(get)]
    port: u16,
    /// The file's path.
    #[pyo3(get)]
    path: PathBuf,
    /// The file's size in bytes.
    #[pyo3(get)]
    size: u64,
}

#[pymethods]
impl Exposure {
    /// Whether it is still serving.
    #[getter]
    fn serving(&self) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Stops serving and waits for the serving thread (idempotent).
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let taken = self.inner.lock().unwrap_or_else(|p| p.into_inner()).take();
        match taken {
            Some(x) => py
                .detach(|| x.close())
                .map_err(|e| rgtp_error(py, 1, format!("the exposer's socket failed: {e}"))),
            None => Ok(()),
        }
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!(
            "<rgtp.Exposure {} ({} bytes){}>",
            self.url,
            self.size,
            if self.serving() { "" } else { " closed" }
        )
    }
}

/// The native expose; `rgtp.expose` documents it.
#[pyfunction]
#[pyo3(signature = (path, port=0, bind="127.0.0.1", key_path=None, advertise=None,
    seal_ahead=true, cache_dir=None, max_datagram=None))]
#[allow(clippy::too_many_arguments)]
fn expose(
    py: Python<'_>,
    path: PathBuf,
    port: u16,
    bind: &str,
    key_path: Option<PathBuf>,
    advertise: Option<String>,
    seal_ahead: bool,
    cache_dir: Option<PathBuf>,
    max_datagram: Option<u32>,
) -> PyResult<Exposure> {
    let ip: std::net::IpAddr = bind
        .trim_matches(|c| c == '[' || c == ']')
        .parse()
        .map_err(|_| rgtp_error(py, 2, format!("bind: not an IP address: {bind:?}")))?;
    let opts = ExposeOptions {
        bind: std::net::SocketAddr::new(ip, port),
        advertise,
        key_path,
        seal_ahead,
        cache_dir,
        max_datagram: check_datagram(max_datagram)?.map(|m| m as usize),
        ..Default::default()
    };
    let paths = [path];
    let x = py
        .detach(|| CoreExposure::start(&paths, &opts))
        .map_err(|e| transfer_error(py, e))?;
    let f = &x.files()[0];
    Ok(Exposure {
        url: f.url.to_string(),
        root: hex(&f.url.root.unwrap_or([0; 32])),
        key: hex(&x.public_key()),
        port: x.local_addr().port(),
        path: f.path.clone(),
        size: f.size,
        inner: Mutex::new(Some(x)),
    })
}

#[pymodule]
fn _rgtp(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<CancelToken>()?;
    m.add_class::<Exposure>()?;
    m.add_function(wrap_pyfunction!(pull, m)?)?;
    m.add_function(wrap_pyfunction!(expose, m)?)?;
    Ok(())
}

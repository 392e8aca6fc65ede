//! Command-line parsing (no dependencies). Every link option exists in three forms:
//! `--X` (both directions), `--X-ab` (packets read from TUN A, written to TUN B) and
//! `--X-ba`; a direction-specific form wins over the shared one regardless of order.

use crate::model::{DirConfig, GilbertElliott};

pub const USAGE: &str = "\
linkem: user-space link emulator between two TUN devices

USAGE: linkem --duration SECS [options]

  --tun-a NAME           TUN device A (default linkem-a)
  --tun-b NAME           TUN device B (default linkem-b)
  --duration SECS        mandatory run-time cap; exits by itself after it
  --stats FILE           write the counters as one JSON object here on exit
                         (also on SIGUSR1 and every --stats-interval); always to stderr on exit
  --stats-interval SECS  periodic stats snapshots (default: off)
  --seed N               RNG seed (default 1); same seed + same packets = same decisions
  --quiet                no stats on stderr

Link options (X = both directions, X-ab = A->B only, X-ba = B->A only):
  --delay-ms[-ab|-ba] MS        one-way delay (default 0)
  --rate-mbit[-ab|-ba] MBIT     bottleneck rate in Mbit/s, 0 = unlimited (default 0)
  --queue-ms[-ab|-ba] MS        drop-tail queue limit as time at the rate (default 50)
  --queue-bytes[-ab|-ba] BYTES  queue limit in bytes (overrides --queue-ms)
  --loss[-ab|-ba] PCT           independent random loss, percent (default 0)
  --ge-p[-ab|-ba] PCT           Gilbert-Elliott P(good->bad) per packet, percent
  --ge-r[-ab|-ba] PCT           Gilbert-Elliott P(bad->good) per packet, percent
  --ge-bad-loss[-ab|-ba] PCT    loss in the bad state, percent (default 100)
  --ge-good-loss[-ab|-ba] PCT   loss in the good state, percent (default 0)
  --max-pending-mb MB           hard cap on bytes held per direction (default 64)

Signals: SIGTERM/SIGINT/SIGHUP stop (stats written), SIGUSR1 writes a stats snapshot.
";

#[derive(Clone, Debug)]
pub struct Options {
    pub tun_a: String,
    pub tun_b: String,
    pub duration_s: f64,
    pub stats_path: Option<String>,
    pub stats_interval_s: Option<f64>,
    pub seed: u64,
    pub quiet: bool,
    pub max_pending_bytes: u64,
    pub ab: DirConfig,
    pub ba: DirConfig,
}

#[derive(Default, Clone, Copy)]
struct Tri {
    both: Option<f64>,
    ab: Option<f64>,
    ba: Option<f64>,
}

impl Tri {
    fn get(&self, ab: bool) -> Option<f64> {
        if ab {
            self.ab.or(self.both)
        } else {
            self.ba.or(self.both)
        }
    }
}

const DIR_KEYS: &[&str] = &[
    "delay-ms",
    "rate-mbit",
    "queue-ms",
    "queue-bytes",
    "loss",
    "ge-p",
    "ge-r",
    "ge-bad-loss",
    "ge-good-loss",
];

fn num(name: &str, v: &str) -> Result<f64, String> {
    let x: f64 = v
        .parse()
        .map_err(|_| format!("--{name}: not a number: {v:?}"))?;
    if !x.is_finite() || x < 0.0 {
        return Err(format!("--{name}: must be a finite number >= 0, got {v}"));
    }
    Ok(x)
}

fn pct(name: &str, x: f64) -> Result<f64, String> {
    if x > 100.0 {
        return Err(format!("--{name}: percent must be in 0..=100, got {x}"));
    }
    Ok(x / 100.0)
}

pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Options, String> {
    let mut it = args.into_iter();
    let mut tun_a = "linkem-a".to_string();
    let mut tun_b = "linkem-b".to_string();
    let mut duration = None;
    let mut stats_path = None;
    let mut stats_interval = None;
    let mut seed = 1u64;
    let mut quiet = false;
    let mut max_pending_mb = 64.0;
    let mut tri: std::collections::HashMap<&'static str, Tri> = Default::default();

    while let Some(arg) = it.next() {
        if arg == "-h" || arg == "--help" {
            return Err(String::new());
        }
        let Some(flag) = arg.strip_prefix("--") else {
            return Err(format!("unexpected argument {arg:?}"));
        };
        let (flag, inline) = match flag.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (flag.to_string(), None),
        };
        if flag == "quiet" {
            quiet = true;
            continue;
        }
        let mut value = || -> Result<String, String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => it.next().ok_or_else(|| format!("--{flag} needs a value")),
            }
        };
        match flag.as_str() {
            "tun-a" => tun_a = value()?,
            "tun-b" => tun_b = value()?,
            "duration" => duration = Some(num("duration", &value()?)?),
            "stats" => stats_path = Some(value()?),
            "stats-interval" => stats_interval = Some(num("stats-interval", &value()?)?),
            "seed" => {
                let v = value()?;
                seed = v
                    .parse()
                    .map_err(|_| format!("--seed: not an unsigned integer: {v:?}"))?
            }
            "max-pending-mb" => max_pending_mb = num("max-pending-mb", &value()?)?,
            other => {
                let (key, dir) = if let Some(k) = other.strip_suffix("-ab") {
                    (k, 1)
                } else if let Some(k) = other.strip_suffix("-ba") {
                    (k, 2)
                } else {
                    (other, 0)
                };
                let Some(&key) = DIR_KEYS.iter().find(|&&k| k == key) else {
                    return Err(format!("unknown option --{other} (see --help)"));
                };
                let x = num(other, &value()?)?;
                let t = tri.entry(key).or_default();
                match dir {
                    0 => t.both = Some(x),
                    1 => t.ab = Some(x),
                    _ => t.ba = Some(x),
                }
            }
        }
    }

    let duration_s = duration.ok_or("--duration SECS is mandatory (a cap on the run time)")?;
    if duration_s <= 0.0 {
        return Err("--duration must be > 0".into());
    }
    if let Some(i) = stats_interval {
        if i <= 0.0 {
            return Err("--stats-interval must be > 0".into());
        }
    }
    for n in [&tun_a, &tun_b] {
        if n.is_empty() || n.len() > 15 {
            return Err(format!("TUN name {n:?} must be 1..=15 bytes"));
        }
    }
    if tun_a == tun_b {
        return Err("--tun-a and --tun-b must differ".into());
    }

    let dir = |ab: bool| -> Result<DirConfig, String> {
        let g = |k: &str| tri.get(k).copied().unwrap_or_default().get(ab);
        let name = |k: &str| format!("{k}-{}", if ab { "ab" } else { "ba" });
        let delay_ms = g("delay-ms").unwrap_or(0.0);
        let rate_mbit = g("rate-mbit").unwrap_or(0.0);
        let rate_bps = (rate_mbit * 1e6).round() as u64;
        let queue_bytes = match g("queue-bytes") {
            Some(b) => b as u64,
            None => {
                let ms = g("queue-ms").unwrap_or(50.0);
                (rate_bps as f64 / 8.0 * ms / 1000.0) as u64
            }
        };
        let loss = pct(&name("loss"), g("loss").unwrap_or(0.0))?;
        let ge = match (g("ge-p"), g("ge-r")) {
            (None, None) => None,
            (Some(p), Some(r)) => Some(GilbertElliott {
                p_good_bad: pct(&name("ge-p"), p)?,
                p_bad_good: pct(&name("ge-r"), r)?,
                loss_bad: pct(&name("ge-bad-loss"), g("ge-bad-loss").unwrap_or(100.0))?,
                loss_good: pct(&name("ge-good-loss"), g("ge-good-loss").unwrap_or(0.0))?,
            }),
            _ => return Err("Gilbert-Elliott needs both --ge-p and --ge-r".into()),
        };
        if ge.is_none() && (g("ge-bad-loss").is_some() || g("ge-good-loss").is_some()) {
            return Err("--ge-bad-loss/--ge-good-loss need --ge-p and --ge-r".into());
        }
        Ok(DirConfig {
            delay_ns: (delay_ms * 1e6).round() as u64,
            rate_bps,
            queue_bytes,
            loss,
            ge,
        })
    };

    Ok(Options {
        tun_a,
        tun_b,
        duration_s,
        stats_path,
        stats_interval_s: stats_interval,
        seed,
        quiet,
        max_pending_bytes: (max_pending_mb * 1024.0 * 1024.0) as u64,
        ab: dir(true)?,
        ba: dir(false)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Options, String> {
        parse(s.split_whitespace().map(String::from))
    }

    #[test]
    fn duration_is_mandatory() {
        assert!(p("--delay-ms 20").unwrap_err().contains("mandatory"));
        assert!(p("--duration 0").is_err());
    }

    #[test]
    fn shared_and_directional() {
        let o = p("--duration 5 --loss-ab 10 --loss 1 --delay-ms 20 --rate-mbit 200 --queue-ms 40")
            .unwrap();
        assert_eq!(o.ab.loss, 0.10);
        assert_eq!(o.ba.loss, 0.01);
        assert_eq!(o.ab.delay_ns, 20_000_000);
        assert_eq!(o.ba.rate_bps, 200_000_000);
        assert_eq!(o.ab.queue_bytes, 1_000_000);
        assert!(o.ab.ge.is_none());
    }

    #[test]
    fn gilbert_elliott() {
        let o = p("--duration=1 --ge-p 1 --ge-r 25 --ge-bad-loss-ba 50").unwrap();
        let ab = o.ab.ge.unwrap();
        let ba = o.ba.ge.unwrap();
        assert_eq!(
            (ab.p_good_bad, ab.p_bad_good, ab.loss_bad),
            (0.01, 0.25, 1.0)
        );
        assert_eq!(ba.loss_bad, 0.5);
        assert!(p("--duration 1 --ge-p 1").is_err());
        assert!(p("--duration 1 --loss 101").is_err());
        assert!(p("--duration 1 --loss -1").is_err());
        assert!(p("--duration 1 --bogus 1").is_err());
        assert!(p("--duration 1 --tun-a x --tun-b x").is_err());
    }
}

use linkem::{config, forward::Forwarder};

fn main() {
    let opts = match config::parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) if e.is_empty() => {
            print!("{}", config::USAGE);
            return;
        }
        Err(e) => {
            eprintln!("linkem: {e}\n\n{}", config::USAGE);
            std::process::exit(2);
        }
    };
    let mut fwd = match Forwarder::new(opts) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("linkem: {e} (needs root/CAP_NET_ADMIN and /dev/net/tun)");
            std::process::exit(1);
        }
    };
    let (a, b) = fwd.tun_names();
    eprintln!(
        "linkem: ready tun_a={a} tun_b={b} pid={}",
        std::process::id()
    );
    match fwd.run() {
        Ok(reason) => {
            fwd.write_stats(&reason);
        }
        Err(e) => {
            fwd.write_stats(&format!("error: {e}"));
            eprintln!("linkem: {e}");
            std::process::exit(1);
        }
    }
}

//! `make simulate`: runs the deterministic fault simulator over many seeds
//! (`tidemark::simulator`), or one seed with its whole trace.
//!
//!   simulate --seeds N [--from S]    seeds S..S+N (S: 0)
//!   simulate --seed S                one seed, every step shown

use std::time::Instant;
use tidemark::simulator::{run_seed, trace_seed, SeedReport};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| -> Option<u64> {
        let at = args.iter().position(|a| a == name)?;
        let v = args.get(at + 1).unwrap_or_else(|| usage(&format!("{name} needs a number")));
        Some(v.parse().unwrap_or_else(|_| usage(&format!("{name} {v}: not a number"))))
    };
    for a in args.iter().filter(|a| a.starts_with("--")) {
        if !["--seeds", "--from", "--seed"].contains(&a.as_str()) {
            usage(&format!("unknown option {a}"));
        }
    }
    let (from, count) = match (value("--seed"), value("--seeds")) {
        (Some(seed), None) => (seed, 1),
        (None, Some(n)) => (value("--from").unwrap_or(0), n),
        (None, None) => (0, 1000),
        (Some(_), Some(_)) => usage("--seed and --seeds exclude each other"),
    };
    if value("--seed").is_some() {
        for line in trace_seed(from) {
            println!("{line}");
        }
    }
    let start = Instant::now();
    let mut total = SeedReport::default();
    for (done, seed) in (from..from + count).enumerate() {
        match run_seed(seed) {
            Ok(r) => total.add(&r),
            Err(v) => {
                eprintln!("{v}");
                eprintln!("replay it with: make simulate SEED={seed}");
                std::process::exit(1);
            }
        }
        if (done + 1) % 1000 == 0 {
            eprintln!("simulate: {} of {count} seeds hold ({:.0} s)", done + 1, start.elapsed().as_secs_f64());
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "simulate: seeds {from}..{} hold every invariant: {count} seeds in {secs:.1} s ({:.0} seeds/s); {} steps, \
         {} records appended, {} sent, {} checks; {} faults injected, {} process kills, {} power cuts ({} left a torn tail); {} fsyncs and {} removals failed; {} appends found the log full; {} \
         stream starts that failed were found in place; {} spares made ahead of need and {} stopped by the disk's reserve; the journal took {} records, and {} of its opens cut damage; \
         {} link sessions, {} frames the link dropped, duplicated, reordered or garbled, {} stale welcomes; {} checkpoints restored",
        from + count,
        count as f64 / secs,
        total.steps,
        total.records_appended,
        total.records_sent,
        total.checks,
        total.faults,
        total.crashes,
        total.power_cuts,
        total.torn_tails,
        total.failed_syncs,
        total.failed_removals,
        total.full_log,
        total.adopted_streams,
        total.spares_prepared,
        total.spares_refused_for_disk,
        total.journal_records,
        total.journal_cuts,
        total.sessions,
        total.link_faults,
        total.stale_welcomes,
        total.restores,
    );
}

fn usage(why: &str) -> ! {
    eprintln!("simulate: {why}\nusage: simulate --seeds N [--from S] | --seed S");
    std::process::exit(2);
}

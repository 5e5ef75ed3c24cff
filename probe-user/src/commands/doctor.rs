//! `drainwatch doctor`: what this kernel offers and what drainwatch will use, one line each,
//! with the fix where something is missing (the lines: [`crate::output::doctor`]).

use crate::{
    kernel::{backends, features::MINIMUM_KERNEL},
    output::doctor::{lines, render, usable},
};

/// Prints the report; returns the exit code (0 usable, 2 not).
pub fn run(json: bool) -> u8 {
    let features = backends::detect();
    let lines = lines(&features);
    let ok = usable(&lines);
    if json {
        let doc = serde_json::json!({
            "kernel": features.release,
            "minimum_kernel": MINIMUM_KERNEL,
            "usable": ok,
            "hooks": backends::choose(&features).ok().map(|h| h.coverage()),
            "checks": lines,
        });
        println!("{doc}");
    } else {
        println!(
            "drainwatch doctor: Linux {} ({})",
            features.release,
            std::env::consts::ARCH
        );
        for l in &lines {
            println!("{}", render(l));
        }
        if ok {
            println!("drainwatch can attach here (needs Linux {MINIMUM_KERNEL} or newer)");
        } else {
            println!("drainwatch cannot attach here: fix the MISSING lines above");
        }
    }
    if ok {
        0
    } else {
        2
    }
}

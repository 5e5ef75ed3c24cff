//! `drainwatch doctor`: what this kernel offers and what drainwatch will use, one line each,
//! with the fix where something is missing (the lines: [`crate::output::doctor`]).

use std::fmt::Write as _;

use crate::{
    kernel::{backends, features::MINIMUM_KERNEL},
    output::{
        doctor::{lines, render, usable},
        print_out,
    },
};

/// Prints the report; returns the exit code (0 usable, 2 not).
pub fn run(json: bool) -> u8 {
    let features = backends::detect();
    let lines = lines(&features);
    let ok = usable(&lines);
    let mut text = String::new();
    if json {
        let doc = serde_json::json!({
            "kernel": features.release,
            "minimum_kernel": MINIMUM_KERNEL,
            "usable": ok,
            "hooks": backends::choose(&features).ok().map(|h| h.coverage()),
            "checks": lines,
        });
        let _ = writeln!(text, "{doc}");
    } else {
        let _ = writeln!(
            text,
            "drainwatch doctor: Linux {} ({})",
            features.release,
            std::env::consts::ARCH
        );
        for l in &lines {
            let _ = writeln!(text, "{}", render(l));
        }
        if ok {
            let _ = writeln!(
                text,
                "drainwatch can attach here (needs Linux {MINIMUM_KERNEL} or newer)"
            );
        } else {
            let _ = writeln!(
                text,
                "drainwatch cannot attach here: fix the MISSING lines above"
            );
        }
    }
    // `drainwatch doctor | head -n 1`: a reader gone is no error (output/mod.rs).
    print_out(&text);
    if ok {
        0
    } else {
        2
    }
}

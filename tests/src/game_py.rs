//! Runs `game_py.py` (tests/fixtures/game_py.py), the asyncio game server of issue #22's
//! story, with the fixtures' Python (a venv of Debian's python3.11, whose USDT markers
//! `--op` reads) and asyncpg: the protocol, truth file and ledger of game_ops
//! (tests/src/game_ops.rs), whose gateway drives it.

use std::process::Command;

use crate::{db::PgServer, game_ops::GameOps, shop::python};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/game_py.py");

/// Starts `game_py.py serve` against `db` with `--workers`, `--gap-ms` and extra flags
/// (`--gap service --service-port N`, `--on-term abandon`).
pub fn start(db: Option<&PgServer>, workers: u32, gap_ms: u64, args: &[&str]) -> GameOps {
    let mut cmd = Command::new(python());
    cmd.arg(SCRIPT);
    GameOps::start_command(cmd, db, workers, gap_ms, args)
}

//! A runtime whose functions are not ELF functions of the program (a Go program's, found in
//! its `.gopclntab`; an interpreter's, known only when they run): each is one [`Runtime`] in
//! its own file and one line of mod.rs's `runtimes!` list. A process that no runtime claims has its
//! ELF functions hooked (mod.rs).

use std::num::NonZeroU32;

use aya::Ebpf;

use super::{
    found::{Found, Hooked, Refusal},
    symbols::Maps,
};
use crate::kernel::links::Links;

pub(super) trait Runtime: Send {
    /// Its name in messages: `Go`.
    fn name(&self) -> &'static str;

    /// Whether its calls running when a process is hooked go unseen (the drain's basis
    /// says so, naming the runtime).
    fn blind_at_attach(&self) -> bool;

    /// Whether process `tgid`, mapping `maps`, runs on it.
    fn claims(&mut self, maps: &Maps, tgid: u32) -> bool;

    /// Hooks the `--op` functions in `tgid` not hooked in it before; returns those newly
    /// hooked. Records them, and a process whose calls from before attach are not seen, in
    /// `found`.
    fn attach(
        &mut self,
        found: &mut Found,
        ebpf: &mut Ebpf,
        tgid: u32,
        pid: NonZeroU32,
        maps: &Maps,
    ) -> Result<Vec<Hooked>, Refusal>;

    /// How many attachments it holds.
    fn attached(&self) -> usize;

    /// Its links, to detach at close.
    fn take_links(&mut self) -> Links;
}

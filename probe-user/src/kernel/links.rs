//! Attachments drainwatch owns. Every attach in kernel/ takes its link out of aya's program
//! (`take_link`) as soon as the kernel hands it back, and keeps it here, whatever the kind
//! (tracepoint, raw tracepoint, tp_btf, fexit, uprobe): dropping an owned link detaches it,
//! so taking all of them down is one loop, with no per-kind code.

/// The owned links of one probe, or of one unit of it (kernel/uprobe.rs).
#[derive(Default)]
pub struct Links(Vec<Box<dyn Send>>);

impl Links {
    /// Keeps an owned link (an aya `*Link` from `take_link`) until [`Links::detach`].
    pub fn add<L: aya::programs::Link + Send>(&mut self, link: L) {
        self.0.push(Box::new(link));
    }

    /// Keeps an attachment drainwatch made itself (a perf event fd aya cannot open, such as
    /// a uprobe with a reference counter; a uprobe_multi link): dropping it detaches it,
    /// like an aya link.
    pub fn add_owned(&mut self, attachment: std::os::fd::OwnedFd) {
        self.0.push(Box::new(attachment));
    }

    /// Takes over another set's links (a unit's, at close).
    pub fn append(&mut self, mut other: Links) {
        self.0.append(&mut other.0);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Detaches every link; returns how many. Each tracepoint detach waits for an RCU grace
    /// period in the kernel (tens of ms); taken one after another, 30 of them held `wait`
    /// and `stop` for seconds after their verdict. Dropped together on threads, the waits
    /// overlap.
    pub fn detach(self) -> usize {
        let count = self.0.len();
        std::thread::scope(|scope| {
            for link in self.0 {
                scope.spawn(move || drop(link));
            }
        });
        count
    }
}

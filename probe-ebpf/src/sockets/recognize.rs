//! Which database a connection speaks, from the first bytes it sends or receives: each
//! protocol's own rules (probe-common/src/protocols/), asked in the order of
//! `probe_common::protocols!`.

/// `recognize`, from the protocol list.
macro_rules! recognize {
    ($($(#[$doc:meta])* $konst:ident = $num:literal => $variant:ident, $module:ident;)*) => {
        /// A database handshake in the first bytes of a connection on a non-database port: a
        /// client opening a conversation (a send), a server's greeting (a recv). With
        /// `midstream`, also a client message in the middle of a conversation. `head[..n]`
        /// copied; `moved`: the bytes the send or recv moved.
        #[inline(always)]
        pub(super) fn recognize(
            head: &[u8; 32],
            n: u8,
            send: bool,
            midstream: bool,
            moved: u64,
        ) -> Option<u8> {
            use probe_common::protocols::KernelRules;
            if send {
                $(if <probe_common::protocols::$module::Rules as KernelRules>::opens(head, n) {
                    return Some(probe_common::$konst);
                })*
                if midstream {
                    $(if <probe_common::protocols::$module::Rules as KernelRules>::midstream(
                        head, n, moved,
                    ) {
                        return Some(probe_common::$konst);
                    })*
                }
            } else {
                $(if <probe_common::protocols::$module::Rules as KernelRules>::greets(head, n) {
                    return Some(probe_common::$konst);
                })*
            }
            None
        }
    };
}
probe_common::protocols!(recognize);

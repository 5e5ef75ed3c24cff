//! Where to probe a Go function (x86-64 only): its code decoded (iced-x86), the instruction
//! after its stack-growth check (the call's "entry") and every RET (its returns).
//!
//! Why not the first instruction: a Go function whose goroutine stack is too small jumps
//! from its prologue (`CMPQ SP, 16(R14); JLS more`, or `LEAQ -n(SP), R12; CMPQ R12,
//! 16(R14); JLS more` for bigger frames) to a tail block that calls `runtime.morestack` and
//! jumps back to the entry: the call starts again, and a probe at the entry would count it
//! twice and see one return. The check's branch is recognised by that tail block's jump
//! back to the entry (src/cmd/internal/obj/x86/obj6.go, `stacksplit`).
//!
//! Why every RET: Go has no uretprobe-safe return (the kernel's uretprobe swaps the return
//! address on the stack, which Go's stack copying and tracebacks read), so each RET
//! instruction is probed instead. A function's code is decoded linearly from its entry to its
//! end (Go puts no data in its text; jump tables live in rodata).

use iced_x86::{Decoder, DecoderOptions, FlowControl, Mnemonic};

/// The probe points of one Go function, as virtual addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct GoProbes {
    /// Where a call has passed its stack check (the entry itself for a function without one).
    pub entry: u64,
    pub returns: Vec<u64>,
}

/// How many instructions from the entry the stack check may take (the largest form: load,
/// subtract, compare with wrap check, compare, branch).
const PROLOGUE: usize = 8;
/// How many instructions a stack check's tail block may take (it spills and reloads the
/// register arguments around the call: up to 9 integer and 15 float registers).
const TAIL: usize = 64;

/// The probe points of the function whose code `code` starts at `start`; `Err` says why it
/// cannot be probed safely.
pub(super) fn probes(code: &[u8], start: u64) -> Result<GoProbes, String> {
    let mut decoder = Decoder::with_ip(64, code, start, DecoderOptions::NONE);
    let mut instructions = Vec::new();
    while decoder.can_decode() {
        let instruction = decoder.decode();
        if instruction.is_invalid() {
            // Padding after the last instruction (INT3s) decodes; garbage does not: a
            // function that does not decode is not probed (a probe amid an instruction
            // would corrupt it).
            return Err(format!(
                "its code does not decode at {:#x}",
                instruction.ip()
            ));
        }
        instructions.push(instruction);
    }
    // The tail block of a stack check: from the branch's target, a call (to
    // runtime.morestack) and then, as the first jump or return, a jump back to the entry.
    let is_tail = |target: u64| {
        let Some(at) = instructions.iter().position(|i| i.ip() == target) else {
            return false;
        };
        let mut called = false;
        for i in instructions[at..].iter().take(TAIL) {
            match i.flow_control() {
                FlowControl::Call => called = true,
                FlowControl::UnconditionalBranch => {
                    return called && i.near_branch_target() == start;
                }
                FlowControl::Next => {}
                _ => return false,
            }
        }
        false
    };
    let check = instructions
        .iter()
        .take(PROLOGUE)
        .enumerate()
        .filter(|(_, i)| {
            i.flow_control() == FlowControl::ConditionalBranch && is_tail(i.near_branch_target())
        })
        .map(|(n, _)| n)
        .next_back();
    let entry = match check {
        Some(n) => instructions
            .get(n + 1)
            .map(|i| i.ip())
            .ok_or_else(|| "it ends at its stack check".to_string())?,
        // No stack check (a NOSPLIT function): nothing starts the call again. A jump back to
        // the entry from elsewhere would be a check not recognised: refused, never guessed.
        None if instructions.iter().any(|i| {
            i.flow_control() == FlowControl::UnconditionalBranch && i.near_branch_target() == start
        }) =>
        {
            return Err("its stack check was not recognised".into());
        }
        None => start,
    };
    let returns: Vec<u64> = instructions
        .iter()
        .filter(|i| i.mnemonic() == Mnemonic::Ret)
        .map(|i| i.ip())
        .collect();
    if returns.is_empty() {
        return Err("it has no RET (it never returns, or only through a tail jump)".into());
    }
    Ok(GoProbes { entry, returns })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_entry_is_after_the_stack_check_and_every_ret_is_found() {
        // A Go function's shape: stack check, two returns, the morestack tail, padding.
        let start = 0x1000u64;
        let mut code = vec![0x49, 0x3b, 0x66, 0x10]; // 0x1000 cmp rsp, [r14+0x10]
        code.extend([0x76, 0x0d]); // 0x1004 jbe more (0x1013)
        code.extend([0x55]); // 0x1006 push rbp
        code.extend([0x48, 0x89, 0xe5]); // 0x1007 mov rbp, rsp
        code.extend([0x48, 0x85, 0xc0]); // 0x100a test rax, rax
        code.extend([0x74, 0x02]); // 0x100d je early (0x1011)
        code.extend([0x5d, 0xc3]); // 0x100f pop rbp; 0x1010 ret
        code.extend([0x5d, 0xc3]); // 0x1011 early: pop rbp; 0x1012 ret
        code.extend([0xe8, 0x00, 0x00, 0x00, 0x00]); // 0x1013 more: call
        code.extend([0xeb, 0xe6]); // 0x1018 jmp entry (0x1000)
        code.extend([0xcc, 0xcc, 0xcc]);
        let found = probes(&code, start).expect("probed");
        assert_eq!(found.entry, 0x1006);
        assert_eq!(found.returns, vec![0x1010, 0x1012]);
    }

    #[test]
    fn a_function_without_a_stack_check_is_probed_at_its_entry() {
        // MOVQ AX, BX; RET; INT3
        let found = probes(&[0x48, 0x89, 0xc3, 0xc3, 0xcc], 0x2000).expect("probed");
        assert_eq!(found.entry, 0x2000);
        assert_eq!(found.returns, vec![0x2003]);
        // No RET: refused, never guessed.
        assert!(probes(&[0xeb, 0xfe], 0x3000).is_err());
    }

    #[test]
    fn a_real_go_method_has_its_check_passed_and_its_rets_found() {
        use super::super::gopclntab::{code_at, go_functions, tests::go_binaries};
        for binary in [&go_binaries().0, &go_binaries().1] {
            let data = std::fs::read(binary).expect("read the Go binary");
            let funcs = go_functions(&data).expect("its table");
            let purchase = funcs
                .iter()
                .find(|f| f.name == "main.(*Game).Purchase")
                .expect("Purchase");
            let (code, _) = code_at(&data, purchase.entry, purchase.end).expect("its code");
            let found = probes(code, purchase.entry).expect("probed");
            // The prologue is CMPQ + JBE at least (a 4 KiB frame: LEAQ, CMPQ, JBE).
            assert!(found.entry >= purchase.entry + 6, "{found:x?}");
            assert!(found.entry < purchase.entry + 32, "{found:x?}");
            // Two returns in the source (the early one and the last), each a RET, unless
            // the compiler merged them: at least one, each inside the function.
            assert!(!found.returns.is_empty());
            assert!(found
                .returns
                .iter()
                .all(|r| *r > found.entry && *r < purchase.end));
            for ret in &found.returns {
                assert_eq!(
                    code[(ret - purchase.entry) as usize],
                    0xc3,
                    "a RET at {ret:#x}"
                );
            }
            // The whole program: every function with a stack check has it recognised (a
            // refusal is only for code that never returns or is not Go's).
            let mut refused = Vec::new();
            for func in &funcs {
                let Some((code, _)) = code_at(&data, func.entry, func.end) else {
                    continue;
                };
                if let Err(why) = probes(code, func.entry) {
                    if why.contains("stack check") || why.contains("decode") {
                        refused.push(format!("{}: {why}", func.name));
                    }
                }
            }
            assert!(refused.len() * 100 <= funcs.len(), "{refused:#?}");
        }
    }
}

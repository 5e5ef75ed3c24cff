//! MongoDB's kernel rules (protocols/mod.rs): recognised by its port only, and not read, so
//! nothing of its messages leaves the kernel (the defaults of [`KernelRules`]).

use super::KernelRules;

pub struct Rules;

impl KernelRules for Rules {}

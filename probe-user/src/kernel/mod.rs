pub mod btf;
pub mod features;
pub mod probe;
pub mod tracefs;

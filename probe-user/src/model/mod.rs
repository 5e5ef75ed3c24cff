pub mod conns;
pub mod protocol;
pub mod report;
pub mod state;

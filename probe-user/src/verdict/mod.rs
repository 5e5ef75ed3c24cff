pub mod drain;
pub mod outcome;
pub mod policy;

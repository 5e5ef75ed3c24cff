pub mod audit;
pub mod check;
pub mod doctor;
pub mod drain;
pub mod serve;
pub mod watch;

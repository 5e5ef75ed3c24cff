pub mod junit;
pub mod metrics;
pub mod publish;
pub mod summary;

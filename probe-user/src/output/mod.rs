pub mod junit;
pub mod metrics;
pub mod summary;

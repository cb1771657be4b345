//! What portico tells its operators: the access log, request ids, trace
//! context and Prometheus metrics.

pub mod access_log;
pub mod metrics;
pub mod process;
pub mod request_id;
pub mod trace;

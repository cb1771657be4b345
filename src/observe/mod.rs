//! What portico tells its operators: the access log, request ids and
//! Prometheus metrics.

pub mod access_log;
pub mod metrics;
pub mod request_id;

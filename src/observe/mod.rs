//! What portico tells its operators: the access log and request ids.

pub mod access_log;
pub mod request_id;

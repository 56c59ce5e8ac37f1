//! Routes of the web server's `dashboard` area (filled in by its own change).

use actix_web::web;

/// Registers this area's routes.
pub fn routes(_cfg: &mut web::ServiceConfig) {}

//! Who may use the management API (4006), and how they prove it: roles,
//! the user and token store, TOTP second factors, sessions and the login
//! throttle. The HTTP side is `api::v1`; this module knows nothing of HTTP.

mod error;
pub mod role;
pub mod sessions;
pub mod throttle;
pub mod totp;
pub mod users;

pub use error::AccessError;

pub use role::Role;

//! The appliance's endpoints. So far: the diagnostics bundle on 4005
//! (`diag`), the bundle itself (`bundle`), which `tidemark diag` also writes
//! locally, and the protected agent's local control socket (`local`). The
//! management API (4006) and checkpoint coordination (4009) will live here
//! too.

pub mod bundle;
pub mod diag;
pub mod local;

//! The appliance's HTTPS endpoints. So far: the diagnostics bundle on 4005
//! (`diag`), and the bundle itself (`bundle`), which `tidemark diag` also
//! writes locally. The management API (4006) and checkpoint coordination
//! (4009) will live here too.

pub mod bundle;
pub mod diag;

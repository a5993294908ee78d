//! First boot of the appliance: turning what the hypervisor hands over
//! (the OVF environment on the CD-ROM) into the agent's configuration.

pub mod config_iso;
mod error;
pub mod ovf_config;
pub mod ovf_env;

pub use error::ApplianceError;

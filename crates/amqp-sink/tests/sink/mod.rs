//! The modules of the integration test binary, one per guarantee area.

mod credentials;
mod faults;
mod nacks;
mod ordering;
mod returns;
pub mod support;
mod topology;

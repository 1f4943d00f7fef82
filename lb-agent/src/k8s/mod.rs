//! Kubernetes as the source of the wanted state, and Kubernetes as where users look:
//! Service status, conditions and Events, and the pods' `progress` labels.

pub mod desired;
pub mod held;
pub mod objects;
pub mod problem;
pub mod report;
pub mod watch;

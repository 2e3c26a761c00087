//! Everything pagerelay says to RabbitMQ: the topology it declares, the headers it reads and
//! writes, the confirmed publisher, the coalesced acknowledgements of a consumer channel, and the
//! connection session the supervisor rebuilds after a loss.
//!
//! It does not decide what happens to a job (see `pipeline::outcome`); it only carries out
//! "publish this, confirmed" and "consume these queues".

pub mod acks;
pub mod bundle;
pub mod headers;
pub mod publisher;
pub mod session;
pub mod topology;

pub use acks::Acks;
pub use publisher::{PublishError, Publisher};
pub use session::{Session, SessionError};
pub use topology::{Topology, TopologyError};

//! The kernel side as userspace sees it: the embedded XDP object, loading it with pinned maps,
//! attaching it to interfaces, and typed access to every map.

pub mod attachment;
pub mod bpffs;
pub mod clock;
pub mod compat;
pub mod legacy;
pub mod loader;
pub mod maps;
pub mod object;
pub mod port_owners;
pub mod settings;
pub mod simulate;
pub mod slot_writes;
pub mod turn_maps;
pub mod wireguard_maps;

pub use loader::{Dataplane, LoadOptions};
pub use maps::RelayMaps;

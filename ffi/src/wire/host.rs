//! host.*: the host's abilities.

pub(crate) use lockbox_engine::VmCheck;

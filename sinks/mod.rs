//! Snapshot sinks, one file each. Each registers itself with `inventory::submit!`.

mod file;
mod http;
mod mqtt;
mod stdout;
mod tcp;
#[cfg(feature = "test-plugins")]
mod testing;
#[cfg(feature = "test-plugins")]
mod testing_settings;

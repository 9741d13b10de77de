//! The library log. Off by default; `log.set_level` turns it on and names
//! where it goes (a file, or the host's stderr only when asked). The library
//! never writes to the host's stdout/stderr on its own.
use crate::error::ApiError;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    Off = 0,
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
}

impl Level {
    pub fn parse(s: &str) -> Result<Level, ApiError> {
        Ok(match s {
            "off" => Level::Off,
            "error" => Level::Error,
            "warn" => Level::Warn,
            "info" => Level::Info,
            "debug" => Level::Debug,
            other => {
                return Err(ApiError::invalid_argument(format!(
                    "unknown log level {other:?} (want off, error, warn, info or debug)"
                )))
            }
        })
    }
    fn as_str(self) -> &'static str {
        match self {
            Level::Off => "off",
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

pub enum Sink {
    File(File),
    Stderr,
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Off as u8);
static SINK: Mutex<Option<Sink>> = Mutex::new(None);

/// Sets the level and where records go. With no sink, records are dropped.
pub fn configure(level: Level, file: Option<&str>, stderr: bool) -> Result<(), ApiError> {
    let sink = match (file, stderr) {
        (Some(_), true) => {
            return Err(ApiError::invalid_argument(
                "log: give either file or stderr, not both",
            ))
        }
        (Some(path), false) => Some(Sink::File(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| ApiError::invalid_argument(format!("log file {path}: {e}")))?,
        )),
        (None, true) => Some(Sink::Stderr),
        (None, false) => None,
    };
    let mut g = SINK.lock().unwrap_or_else(|p| p.into_inner());
    *g = sink;
    LEVEL.store(level as u8, Ordering::Relaxed);
    Ok(())
}

pub fn enabled(level: Level) -> bool {
    level != Level::Off && level as u8 <= LEVEL.load(Ordering::Relaxed)
}

/// Writes one record if `level` is enabled. Never fails and never panics.
pub fn write(level: Level, args: fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let line = format!(
        "{}.{:03} {} lockbox: {}\n",
        ts.as_secs(),
        ts.subsec_millis(),
        level.as_str(),
        args
    );
    // try_lock: a panic while logging must not deadlock the panic hook.
    if let Ok(mut g) = SINK.try_lock() {
        match g.as_mut() {
            Some(Sink::File(f)) => {
                let _ = f.write_all(line.as_bytes());
            }
            Some(Sink::Stderr) => {
                let _ = std::io::stderr().write_all(line.as_bytes());
            }
            None => {}
        }
    }
}

/// `lb_log!(Level::Info, "started {}", name)`: formats only when enabled.
#[macro_export]
macro_rules! lb_log {
    ($lvl:expr, $($arg:tt)*) => {
        if $crate::log::enabled($lvl) {
            $crate::log::write($lvl, format_args!($($arg)*))
        }
    };
}
